package io.citystream.flink;

import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;

import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code ENVELOPE_TIME(value BYTES, min_ms BIGINT, max_future_ms BIGINT)}: a reading's event
 * time read straight from its Avro bytes, or NULL when undecodable or implausible.
 *
 * <p>Why: the watermark is computed in the source from this column, before the full decode in
 * the next operator; reading only the envelope prefix (every citystream reading starts with
 * its Envelope: sensor_id, site_id, zone_id, domain, then event_time) keeps that cheap. NULL
 * for event times before {@code min_ms} or more than {@code max_future_ms} ahead of the wall
 * clock, so a corrupt or far-future timestamp can never advance the watermark.
 */
public class EnvelopeTime extends ScalarFunction {
    private transient BinaryDecoder reuse;

    public @DataTypeHint("TIMESTAMP(3)") LocalDateTime eval(byte[] value, Long minMs, Long maxFutureMs) {
        if (value == null) {
            return null;
        }
        long ms;
        try {
            reuse = DecoderFactory.get().binaryDecoder(value, reuse);
            for (int i = 0; i < 4; i++) {
                reuse.skipString();
            }
            ms = reuse.readLong();
        } catch (Exception e) {
            return null;
        }
        if (minMs != null && ms < minMs) {
            return null;
        }
        if (maxFutureMs != null && ms > System.currentTimeMillis() + maxFutureMs) {
            return null;
        }
        return LocalDateTime.ofInstant(Instant.ofEpochMilli(ms), ZoneOffset.UTC);
    }
}
