package io.citystream.flink;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.flink.formats.avro.AvroToRowDataConverters;
import org.apache.flink.formats.avro.typeutils.AvroSchemaConverter;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.catalog.DataTypeFactory;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.inference.TypeInference;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.RowType;

/**
 * {@code AVRO_DECODE(value BYTES, 'ROW<...>')}: raw Avro bytes to {@code ROW<reason, error, record>}.
 *
 * <p>Why not the {@code avro} format: it fails the whole job on one undecodable record. Here a
 * bad record becomes a row whose {@code reason} is 'undecodable', 'schema_mismatch' or
 * 'invalid_value' (a NaN/Inf double anywhere in the record) and whose {@code record} is null,
 * so SQL can route it to the dead-letter topic. The record type is the same column list the
 * Flink {@code avro} format would use (jobs/sql.py derives it from avro/*.avsc), and decoding
 * reuses flink-avro's converters, so both paths agree byte for byte.
 */
public class AvroDecode extends ScalarFunction {

    private transient Map<String, Decoder> decoders;

    private static final class Decoder {
        final RowType rowType;
        final GenericDatumReader<GenericRecord> reader;
        final AvroToRowDataConverters.AvroToRowDataConverter converter;
        BinaryDecoder reuse;

        Decoder(RowType rowType) {
            this.rowType = rowType;
            Schema schema = AvroSchemaConverter.convertToSchema(rowType, true);
            this.reader = new GenericDatumReader<>(schema);
            this.converter = AvroToRowDataConverters.createRowConverter(rowType, true);
        }
    }

    public RowData eval(byte[] value, String recordType) {
        if (value == null) {
            return failure("undecodable", "no value (tombstone)");
        }
        Decoder d = decoder(recordType);
        RowData record;
        try {
            d.reuse = DecoderFactory.get().binaryDecoder(value, d.reuse);
            GenericRecord generic = d.reader.read(null, d.reuse);
            if (!d.reuse.isEnd()) {
                return failure("schema_mismatch", "trailing bytes after a complete record");
            }
            record = (RowData) d.converter.convert(generic);
        } catch (Exception | StackOverflowError e) {
            String msg = e.getClass().getSimpleName() + ": " + e.getMessage();
            return failure("undecodable", msg.length() > 300 ? msg.substring(0, 300) : msg);
        }
        String bad = nonFinite(d.rowType, record, "");
        if (bad != null) {
            return failure("invalid_value", bad + " is not a finite number");
        }
        return GenericRowData.of(null, null, record);
    }

    /** Dotted name of the first NaN/Inf double in {@code row}, or null. */
    private static String nonFinite(RowType type, RowData row, String prefix) {
        List<RowType.RowField> fields = type.getFields();
        for (int i = 0; i < fields.size(); i++) {
            if (row.isNullAt(i)) {
                continue;
            }
            LogicalType t = fields.get(i).getType();
            if (t.getTypeRoot() == LogicalTypeRoot.DOUBLE) {
                double v = row.getDouble(i);
                if (Double.isNaN(v) || Double.isInfinite(v)) {
                    return prefix + fields.get(i).getName();
                }
            } else if (t.getTypeRoot() == LogicalTypeRoot.ROW) {
                String inner = nonFinite((RowType) t, row.getRow(i, ((RowType) t).getFieldCount()),
                        prefix + fields.get(i).getName() + ".");
                if (inner != null) {
                    return inner;
                }
            }
        }
        return null;
    }

    private static RowData failure(String reason, String error) {
        return GenericRowData.of(StringData.fromString(reason), StringData.fromString(error), null);
    }

    private Decoder decoder(String recordType) {
        if (decoders == null) {
            decoders = new HashMap<>();
        }
        Decoder d = decoders.get(recordType);
        if (d == null) {
            d = new Decoder((RowType) parse(recordType).copy(false));
            decoders.put(recordType, d);
        }
        return d;
    }

    private static LogicalType parse(String recordType) {
        return org.apache.flink.table.types.logical.utils.LogicalTypeParser.parse(
                recordType, AvroDecode.class.getClassLoader());
    }

    @Override
    public TypeInference getTypeInference(DataTypeFactory typeFactory) {
        return TypeInference.newBuilder()
                .typedArguments(DataTypes.BYTES(), DataTypes.STRING())
                .outputTypeStrategy(ctx -> {
                    String recordType = ctx.getArgumentValue(1, String.class)
                            .orElseThrow(() -> new IllegalArgumentException(
                                    "AVRO_DECODE: the record type must be a string literal"));
                    DataType record = ctx.getDataTypeFactory().createDataType(recordType);
                    return Optional.of(DataTypes.ROW(
                                    DataTypes.FIELD("reason", DataTypes.STRING()),
                                    DataTypes.FIELD("error", DataTypes.STRING()),
                                    DataTypes.FIELD("record", record.nullable()))
                            .bridgedTo(RowData.class));
                })
                .build();
    }
}
