package io.citystream.flink;

import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.ArgumentTrait;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ProcessTableFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;

/**
 * {@code EMISSIONS(input => TABLE windows PARTITION BY key_id)}: a window changelog as an
 * append-only stream of emissions.
 *
 * <p>Why: windows with allowed lateness re-fire as updates (-U old, +U new). Results are
 * published as an append-only topic in which each emission carries its revision, and
 * ClickHouse keeps the highest revision per window (ReplacingMergeTree). Writing the
 * changelog to an upsert topic instead would turn every -U into a tombstone. This function
 * keeps inserts and update-afters and drops the rest; it holds no state.
 */
@DataTypeHint("ROW<window_start TIMESTAMP(3), window_end TIMESTAMP(3), late BIGINT, duplicates BIGINT, "
        + "revision INT, metrics ARRAY<ROW<metric STRING, samples BIGINT, `mean` DOUBLE, `min` DOUBLE, "
        + "`max` DOUBLE>>>")
public class Emissions extends ProcessTableFunction<Row> {
    public void eval(
            @ArgumentHint(value = {ArgumentTrait.SET_SEMANTIC_TABLE, ArgumentTrait.SUPPORT_UPDATES}, name = "input")
                    Row input) {
        RowKind kind = input.getKind();
        if (kind != RowKind.INSERT && kind != RowKind.UPDATE_AFTER) {
            return;
        }
        collect(Row.of(
                input.getField("window_start"),
                input.getField("window_end"),
                input.getField("late"),
                input.getField("duplicates"),
                input.getField("revision"),
                input.getField("metrics")));
    }
}
