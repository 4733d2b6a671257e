package io.citystream.flink;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * {@code CHANNEL_RANGE_ERROR(channels, 'name', value DOUBLE)}: why {@code value} is outside the
 * physical range the sensor registry declares for channel {@code name}, or NULL when it is not.
 *
 * <p>Why a function: the ranges are data (each sensor's {@code channels} in the registry,
 * avro/citystream.Sensor.avsc), joined to every reading, and SQL has no way to look up one
 * element of an ARRAY of ROWs by name. NULL when the value is NULL, the channel is not
 * declared (a field the registry does not list is not checked) or a bound is NULL
 * (unbounded on that side). The message names the channel, the value and the range, so the
 * dead letter says what was wrong without decoding the record.
 */
public class ChannelRange extends ScalarFunction {

    public String eval(
            @DataTypeHint("ARRAY<ROW<`name` STRING, `unit` STRING, `type` STRING, `min` DOUBLE, `max` DOUBLE>>")
                    Row[] channels,
            String name,
            Double value) {
        if (channels == null || name == null || value == null) {
            return null;
        }
        for (Row channel : channels) {
            if (channel == null || !name.equals(channel.getField(0))) {
                continue;
            }
            Double lo = (Double) channel.getField(3);
            Double hi = (Double) channel.getField(4);
            if ((lo != null && value < lo) || (hi != null && value > hi)) {
                Object unit = channel.getField(1);
                return name + " " + number(value) + (unit == null || "".equals(unit) ? "" : " " + unit)
                        + " outside the registered range [" + (lo == null ? "-inf" : number(lo)) + ", "
                        + (hi == null ? "inf" : number(hi)) + "]";
            }
            return null;
        }
        return null;
    }

    private static String number(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return Double.toString(v);
    }
}
