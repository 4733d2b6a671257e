package io.citystream.flink;

import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code COUNT_AT_LEAST(values ARRAY<BIGINT>, threshold BIGINT)}: how many values are >= threshold.
 *
 * <p>Why: a window's revision is the number of its readings that arrived after the watermark
 * had passed the window's end. A legacy group window cannot refer to its own end inside an
 * aggregate, so the jobs collect the watermark-at-arrival of the (rare) late readings with
 * ARRAY_AGG and count here, against the window end, in the projection after the window.
 */
public class CountAtLeast extends ScalarFunction {
    public int eval(Long[] values, Long threshold) {
        if (values == null || threshold == null) {
            return 0;
        }
        int n = 0;
        for (Long v : values) {
            if (v != null && v >= threshold) {
                n++;
            }
        }
        return n;
    }
}
