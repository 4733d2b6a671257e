// Command clickhouse_go_http talks to a ClickHouse HTTP endpoint exactly the way
// Grafana's ClickHouse plugin does: clickhouse-go v2, HTTP protocol, LZ4
// compression (ClickHouse block framing with compress=1/decompress=1) and
// client_protocol_version set, so the server must re-frame Native output.
//
// Usage: clickhouse_go_http HOST:PORT   (or CITYSTREAM_STORE_ADDR)
// Credentials: CITYSTREAM_STORE_USER / CITYSTREAM_STORE_PASSWORD.
//
// It creates a table, inserts a batch, reads it back and prints one line per
// row ("row ..."), then "ok". Any failure exits non-zero with the error.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run() error {
	addr := env("CITYSTREAM_STORE_ADDR", "")
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if addr == "" {
		return fmt.Errorf("give HOST:PORT as the first argument or in CITYSTREAM_STORE_ADDR")
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:     []string{addr},
		Protocol: clickhouse.HTTP,
		Auth: clickhouse.Auth{
			Database: "default",
			Username: env("CITYSTREAM_STORE_USER", "default"),
			Password: env("CITYSTREAM_STORE_PASSWORD", ""),
		},
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		Settings:    clickhouse.Settings{"max_execution_time": 60},
		DialTimeout: 10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer conn.Close()
	ctx := context.Background()
	if err := conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	version, err := conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("server version: %w", err)
	}
	fmt.Printf("server %s revision %d\n", version.Version, version.Revision)

	if err := conn.Exec(ctx, "DROP TABLE IF EXISTS go_http_probe"); err != nil {
		return fmt.Errorf("drop: %w", err)
	}
	err = conn.Exec(ctx, `CREATE TABLE go_http_probe (
		id UInt32,
		sensor LowCardinality(String),
		ts DateTime64(3, 'UTC'),
		value Float64,
		note Nullable(String),
		tags Array(String)
	) ENGINE = MergeTree ORDER BY id`)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}

	batch, err := conn.PrepareBatch(ctx, "INSERT INTO go_http_probe")
	if err != nil {
		return fmt.Errorf("prepare batch: %w", err)
	}
	base := time.UnixMilli(1_700_000_000_000).UTC()
	for i := 0; i < 5; i++ {
		var note *string
		if i%2 == 0 {
			s := fmt.Sprintf("note-%d", i)
			note = &s
		}
		tags := make([]string, i%3)
		for j := range tags {
			tags[j] = fmt.Sprintf("t%d", j)
		}
		ts := base.Add(time.Duration(i) * time.Second)
		if err := batch.Append(uint32(i), fmt.Sprintf("s%d", i%2), ts, float64(i)*1.5, note, tags); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("send batch: %w", err)
	}

	queryCtx := clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"min_id": "1"}))
	rows, err := conn.Query(queryCtx,
		"SELECT id, sensor, ts, value, note, tags FROM go_http_probe WHERE id >= {min_id:UInt32} ORDER BY id")
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id     uint32
			sensor string
			ts     time.Time
			value  float64
			note   *string
			tags   []string
		)
		if err := rows.Scan(&id, &sensor, &ts, &value, &note, &tags); err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		noteText := "NULL"
		if note != nil {
			noteText = *note
		}
		fmt.Printf("row id=%d sensor=%s ts=%d value=%.1f note=%s tags=%v\n",
			id, sensor, ts.UnixMilli(), value, noteText, tags)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("rows: %w", err)
	}

	var count uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM go_http_probe").Scan(&count); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	fmt.Printf("count %d\n", count)

	err = conn.Exec(ctx, "SELECT nosuch_column FROM go_http_probe")
	if err == nil {
		return fmt.Errorf("a bad query did not fail")
	}
	fmt.Printf("bad query rejected: %v\n", firstLine(err.Error()))
	return nil
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
