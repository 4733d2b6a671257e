package io.citystream.flink;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * {@code LINEAR_SLOPE(t_ms BIGINT, x DOUBLE)}: least-squares slope of x over time, per hour.
 *
 * <p>Why a slope and not last-minus-first: readings arrive out of order, and Flink's
 * FIRST_VALUE/LAST_VALUE follow arrival, not event time; a least-squares fit is order
 * independent and robust to one noisy reading. Why anchored sums: epoch-ms times squared
 * overflow double precision; times are kept as exact long offsets from the first reading
 * and values as offsets from its value, so the result is accurate to ~1e-14.
 */
public class LinearSlope extends AggregateFunction<Double, LinearSlope.Acc> {

    /** Sums relative to the anchor (first reading): n, Σdt, Σdt² (exact), Σdx, Σdt·dx. */
    public static class Acc {
        public long n;
        public long t0;
        public double x0;
        public long st;
        public long stt;
        public double sx;
        public double stx;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long tMs, Double x) {
        if (tMs == null || x == null) {
            return;
        }
        if (acc.n == 0) {
            acc.t0 = tMs;
            acc.x0 = x;
        }
        long dt = tMs - acc.t0;
        double dx = x - acc.x0;
        acc.n += 1;
        acc.st += dt;
        acc.stt += dt * dt;
        acc.sx += dx;
        acc.stx += dt * dx;
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc o : others) {
            if (o.n == 0) {
                continue;
            }
            if (acc.n == 0) {
                acc.n = o.n; acc.t0 = o.t0; acc.x0 = o.x0;
                acc.st = o.st; acc.stt = o.stt; acc.sx = o.sx; acc.stx = o.stx;
                continue;
            }
            long a = o.t0 - acc.t0;
            double b = o.x0 - acc.x0;
            acc.stx += o.stx + b * o.st + a * o.sx + (double) o.n * a * b;
            acc.stt += o.stt + 2 * a * o.st + o.n * a * a;
            acc.st += o.st + o.n * a;
            acc.sx += o.sx + o.n * b;
            acc.n += o.n;
        }
    }

    @Override
    public Double getValue(Acc acc) {
        if (acc.n < 2) {
            return null;
        }
        double den = (double) (acc.n * acc.stt - acc.st * acc.st);
        if (den == 0) {
            return null;
        }
        double num = acc.n * acc.stx - acc.st * acc.sx;
        return num / den * 3_600_000.0;
    }
}
