package io.citystream.flink;

import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;

import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.ArgumentTrait;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.functions.ProcessTableFunction;
import org.apache.flink.types.Row;

/**
 * {@code SENSOR_SILENCE(input => TABLE readings PARTITION BY sensor_id, on_time => DESCRIPTOR(ts),
 * silence_ms => 300000)}: a sensor-health event when a sensor stops reporting, and when it
 * comes back.
 *
 * <p>Why a timer: a silent sensor produces no rows, so no window or aggregate can notice it;
 * only an event-time timer per sensor can. Why coarse: the timer is moved at most once per
 * minute of event time per sensor (deadline = next minute + silence), so the per-reading cost
 * is one state read. A sensor is 'silent' when the watermark passes that deadline without a
 * newer reading, and 'ok' again at its next reading. Timers fired by the end-of-input
 * watermark of a bounded run are ignored: the end of a backfill is not a silence.
 */
@DataTypeHint("ROW<site_id STRING, zone_id STRING, `domain` STRING, status STRING, since TIMESTAMP(3), details STRING>")
public class SensorSilence extends ProcessTableFunction<Row> {

    private static final long BUCKET_MS = 60_000L;

    /** Per-sensor memory. */
    public static class Seen {
        public Long lastMs;
        public Long deadline;
        public Long silenceMs;
        public Boolean silent;
        public String site;
        public String zone;
        public String domain;
    }

    public void eval(
            Context ctx,
            @StateHint Seen seen,
            @ArgumentHint(value = {ArgumentTrait.SET_SEMANTIC_TABLE, ArgumentTrait.REQUIRE_ON_TIME}, name = "input")
                    Row input,
            @ArgumentHint(name = "silence_ms") Long silenceMs) {
        TimeContext<Long> time = ctx.timeContext(Long.class);
        Long t = time.time();
        if (t == null) {
            return;
        }
        if (seen.site == null) {
            seen.site = (String) input.getField("site_id");
            seen.zone = (String) input.getField("zone_id");
            seen.domain = (String) input.getField("domain");
            seen.silenceMs = silenceMs;
        }
        if (Boolean.TRUE.equals(seen.silent)) {
            seen.silent = false;
            collect(Row.of(seen.site, seen.zone, seen.domain, "ok", toTime(t), "readings resumed"));
        }
        if (seen.lastMs == null || t > seen.lastMs) {
            seen.lastMs = t;
        }
        long deadline = (seen.lastMs / BUCKET_MS + 1) * BUCKET_MS + seen.silenceMs;
        if (seen.deadline == null || deadline > seen.deadline) {
            seen.deadline = deadline;
            time.registerOnTime("silence", deadline);
        }
    }

    public void onTimer(OnTimerContext ctx, Seen seen) {
        Long wm = ctx.timeContext(Long.class).currentWatermark();
        if (wm != null && wm == Long.MAX_VALUE) {
            return;
        }
        if (Boolean.TRUE.equals(seen.silent) || seen.lastMs == null) {
            return;
        }
        seen.silent = true;
        collect(Row.of(seen.site, seen.zone, seen.domain, "silent", toTime(seen.lastMs),
                "no reading for " + (seen.silenceMs / 1000) + " s of event time after the last one"));
    }

    private static LocalDateTime toTime(long ms) {
        return LocalDateTime.ofInstant(Instant.ofEpochMilli(ms), ZoneOffset.UTC);
    }
}
