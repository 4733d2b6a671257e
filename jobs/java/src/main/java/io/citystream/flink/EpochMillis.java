package io.citystream.flink;

import java.time.LocalDateTime;
import java.time.ZoneOffset;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code EPOCH_MS(ts TIMESTAMP(3))}: UTC milliseconds since the epoch.
 *
 * <p>Why: Flink SQL has no millisecond conversion for TIMESTAMP (only seconds via
 * TIMESTAMP_LTZ), and window ends, watermarks and lateness are compared in exact ms.
 */
public class EpochMillis extends ScalarFunction {
    public Long eval(@DataTypeHint("TIMESTAMP(3)") LocalDateTime ts) {
        return ts == null ? null : ts.toInstant(ZoneOffset.UTC).toEpochMilli();
    }
}
