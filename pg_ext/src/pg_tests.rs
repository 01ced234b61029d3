//! `#[pg_test]`s: behaviour inside a real backend (`cargo pgrx test pg17 -p
//! sluice-pg`). Batches are built with `sluice_wire::encode`, as the edge does.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Value};

    type Counts = (i64, i64, i64, bool);

    /// Columns of the test table `readings` at the edge.
    fn reading_columns() -> Vec<Column> {
        vec![
            Column::new("id", ColumnType::Integer),
            Column::new("state", ColumnType::Text),
            Column::new("temp", ColumnType::Real),
            Column::new("raw", ColumnType::Blob),
            Column::new("seen_at", ColumnType::Text),
        ]
    }

    /// A batch of `rows` as `(version, values)`; `base_seq` is one below the
    /// smallest version.
    fn make_batch(
        device: &str,
        table: &str,
        columns: Vec<Column>,
        rows: Vec<(i64, Vec<Value>)>,
    ) -> Vec<u8> {
        let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let base_seq = versions.iter().copied().min().unwrap_or(1) - 1;
        let last_seq = versions.iter().copied().max().unwrap_or(base_seq);
        let mut by_column: Vec<Vec<Value>> = vec![Vec::new(); columns.len()];
        for (_, values) in rows {
            for (c, v) in values.into_iter().enumerate() {
                by_column[c].push(v);
            }
        }
        let header = BatchHeader {
            pulled: None,
            device_id: device.into(),
            stream_id: 0x1234_5678_9abc,
            table: table.into(),
            base_seq,
            last_seq,
            row_count: 0,
            sent_at_ms: 1_700_000_000_000,
            columns,
            fingerprint: 0,
            digest: None,
            origin: sluice_wire::Origin::default(),
            resend: 0,
            changes: None,
        };
        encode(&header, &versions, &by_column, EncodeOptions::default()).expect("encodes")
    }

    fn reading(id: i64, state: &str) -> Vec<Value> {
        vec![
            Value::Integer(id),
            Value::Text(state.into()),
            Value::Real(0.1 + id as f64),
            Value::Blob(vec![0xde, 0xad, id as u8]),
            Value::Text("2024-05-01 12:00:00+00".into()),
        ]
    }

    fn setup_readings(policy: &str) {
        Spi::run(
            "CREATE TABLE public.readings (
                 id bigint PRIMARY KEY, state text, temp double precision,
                 raw bytea, seen_at timestamptz, note text DEFAULT 'cloud')",
        )
        .unwrap();
        Spi::run_with_args(
            "SELECT sluice.register_table('readings', 'public.readings', ARRAY['id'], $1)",
            &[policy.into()],
        )
        .unwrap();
        // Catches the ERROR of an ingest (rolling back its subtransaction) and
        // reports its SQLSTATE and message, so a test can look at the data after.
        Spi::run(
            "CREATE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM sluice.ingest(b);
                 RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 RETURN SQLSTATE || ': ' || SQLERRM;
             END $$",
        )
        .unwrap();
    }

    fn ingest(batch: &[u8]) -> Counts {
        Spi::connect_mut(|c| {
            let row = c
                .update(
                    "SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)",
                    None,
                    &[batch.into()],
                )?
                .first();
            Ok::<_, spi::Error>((
                row.get::<i64>(1)?.unwrap(),
                row.get::<i64>(2)?.unwrap(),
                row.get::<i64>(3)?.unwrap(),
                row.get::<bool>(4)?.unwrap(),
            ))
        })
        .unwrap()
    }

    fn try_ingest(batch: &[u8]) -> String {
        Spi::get_one_with_args::<String>("SELECT public.try_ingest($1)", &[batch.into()])
            .unwrap()
            .unwrap()
    }

    fn text(query: &str) -> String {
        Spi::get_one::<String>(query)
            .unwrap()
            .unwrap_or_else(|| "NULL".into())
    }

    fn count(query: &str) -> i64 {
        Spi::get_one::<i64>(query).unwrap().unwrap()
    }

    /// Every row of `readings` as text, ordered, for comparisons.
    fn readings() -> String {
        text(
            "SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s|%s|%s', id, state, temp, raw,
                    seen_at AT TIME ZONE 'UTC', sluice_device, sluice_version), ';' ORDER BY id), '')
             FROM public.readings",
        )
    }

    #[pg_test]
    fn version_names_the_crate() {
        assert_eq!(crate::version(), "v0.2.0");
        assert_eq!(text("SELECT sluice.version()"), "v0.2.0");
    }

    /// The prefix is reserved: a misspelt setting is an error, not a
    /// placeholder that silently does nothing.
    #[pg_test(error = "invalid configuration parameter name \"sluice.no_such_setting\"")]
    fn settings_prefix_is_reserved() {
        Spi::run("SET sluice.no_such_setting = 1").unwrap();
    }

    #[pg_test]
    fn settings_are_defined_without_preloading() {
        Spi::run("SET LOCAL sluice.retention_chunk_rows = 7").unwrap();
        assert_eq!(count("SELECT sluice.retention_chunk_rows()"), 7);
        assert_eq!(
            text("SELECT current_setting('sluice.retention_interval')"),
            "0"
        );
        // Not preloaded here: defined all the same, so that a DBA can write
        // it before adding sluice to shared_preload_libraries.
        assert_eq!(
            text("SELECT current_setting('sluice.retention_database')"),
            "postgres"
        );
    }

    #[pg_test]
    fn register_adds_bookkeeping_columns() {
        setup_readings("last_writer_wins");
        assert_eq!(
            text(
                "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                 FROM pg_attribute WHERE attrelid = 'public.readings'::regclass AND attname LIKE 'sluice%'"
            ),
            "sluice_device text, sluice_version bigint"
        );
        assert_eq!(
            text("SELECT format('%s %s %s', target, key_columns, policy) FROM sluice.tables"),
            "readings {id} last_writer_wins"
        );
        // Registering again is allowed and changes the policy.
        Spi::run(
            "SELECT sluice.register_table('readings', 'readings', ARRAY['id'], 'insert_only')",
        )
        .unwrap();
        assert_eq!(text("SELECT policy FROM sluice.tables"), "insert_only");
    }

    #[pg_test(
        error = "sluice.register_table: unknown policy 'newest'; expected one of 'last_writer_wins', 'first_writer_wins', 'insert_only'"
    )]
    fn register_refuses_an_unknown_policy() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
        Spi::run("SELECT sluice.register_table('t', 't', ARRAY['id'], 'newest')").unwrap();
    }

    #[pg_test(error = "sluice.register_table: key column 'nope' does not exist in public.t")]
    fn register_refuses_a_missing_key_column() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
        Spi::run("SELECT sluice.register_table('t', 't', ARRAY['nope'])").unwrap();
    }

    #[pg_test]
    fn register_requires_a_unique_index_and_says_how() {
        Spi::run("CREATE TABLE t (a int, \"B\" text, c int)").unwrap();
        Spi::run("CREATE INDEX ON t (a, \"B\")").unwrap();
        Spi::run("CREATE UNIQUE INDEX ON t (a) WHERE c > 0").unwrap();
        Spi::run(
            "CREATE FUNCTION try_register() RETURNS text LANGUAGE plpgsql AS $$
             DECLARE st text; msg text; hint text;
             BEGIN
                 PERFORM sluice.register_table('t', 't', ARRAY['B', 'a']);
                 RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
                 RETURN st || ' | ' || msg || ' | ' || hint;
             END $$",
        )
        .unwrap();
        assert_eq!(
            text("SELECT try_register()"),
            "42P17 | sluice.register_table: public.t has no unique index or constraint on exactly \
             the key columns (B, a); ingest needs one to recognise rows it has seen | \
             CREATE UNIQUE INDEX ON \"public\".\"t\" (\"B\", \"a\");"
        );
        // A unique index on the same columns in another order is enough.
        Spi::run("CREATE UNIQUE INDEX ON t (a, \"B\")").unwrap();
        assert_eq!(text("SELECT try_register()"), "ok");
    }

    #[pg_test]
    fn ingest_commits_durably_even_when_the_session_does_not() {
        setup_readings("last_writer_wins");
        Spi::run("SET LOCAL synchronous_commit = off").unwrap();
        let b = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(1, reading(1, "IDLE"))],
        );
        assert_eq!(ingest(&b).0, 1);
        assert_eq!(text("SELECT current_setting('synchronous_commit')"), "on");
        // A stronger setting is kept.
        Spi::run("SET LOCAL synchronous_commit = remote_apply").unwrap();
        let b = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(2, reading(2, "BUSY"))],
        );
        assert_eq!(ingest(&b).0, 1);
        assert_eq!(
            text("SELECT current_setting('synchronous_commit')"),
            "remote_apply"
        );
    }

    #[pg_test]
    fn ingest_inserts_records_and_replay_changes_nothing() {
        setup_readings("last_writer_wins");
        let b = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![
                (1, reading(1, "IDLE")),
                (2, reading(2, "BUSY")),
                (3, reading(3, "O'Hara \"q\"")),
            ],
        );
        assert_eq!(ingest(&b), (3, 0, 0, false));
        assert_eq!(
            readings(),
            "1|IDLE|1.1|\\xdead01|2024-05-01 12:00:00|dev-a|1;\
             2|BUSY|2.1|\\xdead02|2024-05-01 12:00:00|dev-a|2;\
             3|O'Hara \"q\"|3.1|\\xdead03|2024-05-01 12:00:00|dev-a|3"
        );
        assert_eq!(
            text(
                "SELECT format('%s %s %s %s %s %s %s %s', device_id, stream_id, edge_table, base_seq,
                        last_seq, row_count, inserted, sent_at AT TIME ZONE 'UTC') FROM sluice.batches"
            ),
            format!("dev-a {} readings 0 3 3 3 2023-11-14 22:13:20", 0x1234_5678_9abc_i64)
        );
        assert_eq!(
            text("SELECT format('%s %s %s', device_id, batches, rows) FROM sluice.devices"),
            "dev-a 1 3"
        );
        assert!(count("SELECT clock_skew_ms FROM sluice.devices") > 0);

        // A replay: reported, and the data is not touched (a cloud-side edit survives).
        Spi::run("UPDATE public.readings SET state = 'EDITED' WHERE id = 1").unwrap();
        let before = readings();
        assert_eq!(ingest(&b), (0, 0, 3, true));
        assert_eq!(readings(), before);
        assert_eq!(count("SELECT count(*) FROM sluice.batches"), 1);
        assert_eq!(count("SELECT batches FROM sluice.devices"), 1);
    }

    /// A send time no clock gives, the extremes of i64 included, is stored
    /// as NULL and the batch applied (`abs()` of i64::MIN overflowed).
    #[pg_test]
    fn a_mad_clock_is_stored_as_null() {
        setup_readings("last_writer_wins");
        for (version, sent_at_ms) in [(1, i64::MIN), (2, i64::MAX)] {
            let b = make_batch(
                "dev-a",
                "readings",
                reading_columns(),
                vec![(version, reading(version, "IDLE"))],
            );
            let mut batch = sluice_wire::decode(&b).unwrap();
            batch.header.sent_at_ms = sent_at_ms;
            let b = encode(
                &batch.header,
                &batch.versions,
                &batch.columns,
                EncodeOptions::default(),
            )
            .unwrap();
            assert_eq!(ingest(&b), (1, 0, 0, false), "sent at {sent_at_ms}");
        }
        assert_eq!(
            count("SELECT count(*) FROM sluice.batches WHERE sent_at IS NULL"),
            2
        );
        assert_eq!(
            text("SELECT coalesce(clock_skew_ms::text, 'NULL') FROM sluice.devices"),
            "NULL"
        );
    }

    #[pg_test]
    fn damaged_or_unmappable_batches_apply_nothing() {
        setup_readings("last_writer_wins");
        let good = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(1, reading(1, "IDLE"))],
        );

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let r = try_ingest(&flipped);
        assert!(
            r.starts_with("XX001: sluice.ingest: corrupt sluice batch: checksum mismatch"),
            "{r}"
        );

        let r = try_ingest(&good[..good.len() - 5]);
        assert!(r.starts_with("XX001: sluice.ingest: "), "{r}");
        let r = try_ingest(b"hello");
        assert!(
            r.starts_with("XX001: sluice.ingest: not a sluice batch"),
            "{r}"
        );

        let unknown_table = make_batch(
            "dev-a",
            "elsewhere",
            reading_columns(),
            vec![(1, reading(1, "IDLE"))],
        );
        assert_eq!(
            try_ingest(&unknown_table),
            "42P01: sluice.ingest: edge table 'elsewhere' is not registered; call \
             sluice.register_table('elsewhere', '<target table>', ARRAY['<key column>', ...])"
        );

        let mut cols = reading_columns();
        cols.push(Column::new("screenshot_path", ColumnType::Text));
        let mut row = reading(1, "IDLE");
        row.push(Value::Text("/tmp/x.jpg".into()));
        let unknown_column = make_batch("dev-a", "readings", cols, vec![(1, row)]);
        let r = try_ingest(&unknown_column);
        assert!(
            r.starts_with("42703: sluice.ingest: batch dev-a/readings/")
                && r.contains(
                    "column 'screenshot_path' does not exist in target table public.readings"
                ),
            "{r}"
        );

        let no_key = make_batch(
            "dev-a",
            "readings",
            vec![Column::new("state", ColumnType::Text)],
            vec![(1, vec![Value::Text("IDLE".into())])],
        );
        let r = try_ingest(&no_key);
        assert!(
            r.contains("key column 'id' of target table public.readings is not in the batch"),
            "{r}"
        );

        let null_key = make_batch(
            "dev-a",
            "readings",
            vec![Column::new("id", ColumnType::Integer)],
            vec![(1, vec![Value::Integer(7)]), (2, vec![Value::Null])],
        );
        let r = try_ingest(&null_key);
        assert!(
            r.starts_with("23502: ") && r.contains("row 2: key column 'id' is NULL"),
            "{r}"
        );

        // A value PostgreSQL cannot read as the column's type: its own ERROR.
        let bad_value = make_batch(
            "dev-a",
            "readings",
            vec![
                Column::new("id", ColumnType::Integer),
                Column::new("seen_at", ColumnType::Text),
            ],
            vec![(
                1,
                vec![Value::Integer(8), Value::Text("yesterday-ish".into())],
            )],
        );
        let r = try_ingest(&bad_value);
        assert!(r.starts_with("22007: "), "{r}");

        assert_eq!(count("SELECT count(*) FROM public.readings"), 0);
        assert_eq!(count("SELECT count(*) FROM sluice.batches"), 0);
        assert_eq!(count("SELECT count(*) FROM sluice.devices"), 0);

        // The good batch still applies afterwards.
        assert_eq!(try_ingest(&good), "ok");
        assert_eq!(count("SELECT count(*) FROM public.readings"), 1);
    }

    fn two_devices(policy: &str, a_first: bool) -> String {
        setup_readings(policy);
        // dev-a writes row 1 at version 5, dev-b at version 3; both write row 2 at version 4.
        let a = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(4, reading(2, "A")), (5, reading(1, "A"))],
        );
        let b = make_batch(
            "dev-b",
            "readings",
            reading_columns(),
            vec![(3, reading(1, "B")), (4, reading(2, "B"))],
        );
        let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
        let c1 = ingest(first);
        let c2 = ingest(second);
        format!(
            "{c1:?} {c2:?} {}",
            text("SELECT string_agg(format('%s=%s@%s/%s', id, state, sluice_version, sluice_device), ' ' ORDER BY id) FROM public.readings")
        )
    }

    #[pg_test]
    fn last_writer_wins_in_both_orders() {
        // Row 1: version 5 (dev-a) beats 3. Row 2: a tie on version 4, broken by device: dev-b.
        assert_eq!(
            two_devices("last_writer_wins", true),
            "(2, 0, 0, false) (0, 1, 1, false) 1=A@5/dev-a 2=B@4/dev-b"
        );
    }

    #[pg_test]
    fn last_writer_wins_in_both_orders_reversed() {
        assert_eq!(
            two_devices("last_writer_wins", false),
            "(2, 0, 0, false) (0, 1, 1, false) 1=A@5/dev-a 2=B@4/dev-b"
        );
    }

    #[pg_test]
    fn first_writer_wins_keeps_the_lowest_version() {
        assert_eq!(
            two_devices("first_writer_wins", true),
            "(2, 0, 0, false) (0, 1, 1, false) 1=B@3/dev-b 2=A@4/dev-a"
        );
    }

    #[pg_test]
    fn first_writer_wins_keeps_the_lowest_version_reversed() {
        assert_eq!(
            two_devices("first_writer_wins", false),
            "(2, 0, 0, false) (0, 1, 1, false) 1=B@3/dev-b 2=A@4/dev-a"
        );
    }

    #[pg_test]
    fn insert_only_never_changes_a_row() {
        assert_eq!(
            two_devices("insert_only", false),
            "(2, 0, 0, false) (0, 0, 2, false) 1=B@3/dev-b 2=B@4/dev-b"
        );
    }

    #[pg_test]
    fn duplicate_keys_in_one_batch_reduce_to_the_policy_winner() {
        setup_readings("last_writer_wins");
        let b = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![
                (2, reading(1, "old")),
                (3, reading(2, "x")),
                (4, reading(1, "new")),
            ],
        );
        assert_eq!(ingest(&b), (2, 0, 1, false));
        assert_eq!(
            text("SELECT string_agg(format('%s=%s@%s', id, state, sluice_version), ' ' ORDER BY id) FROM public.readings"),
            "1=new@4 2=x@3"
        );
        // A re-cut batch (new identity, same versions) changes nothing: all skipped.
        let recut = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(3, reading(2, "x")), (4, reading(1, "new"))],
        );
        assert_eq!(ingest(&recut), (0, 0, 2, false));
    }

    /// The default tables' shape: key (tenant, device, id), native columns.
    fn setup_states() {
        Spi::run(
            "CREATE TABLE public.states (
                 loc text NOT NULL, sluice_device text NOT NULL, id bigint NOT NULL,
                 at timestamptz, x double precision, n integer, s text,
                 PRIMARY KEY (loc, sluice_device, id))",
        )
        .unwrap();
        Spi::run(
            "SELECT sluice.register_table('states', 'public.states',
                 ARRAY['loc', 'sluice_device', 'id'], tenant_column => 'loc')",
        )
        .unwrap();
    }

    fn state(id: i64, at: &str, x: Value) -> (i64, Vec<Value>) {
        (
            id,
            vec![
                Value::Text("L1".into()),
                Value::Integer(id),
                Value::Text(at.into()),
                x,
                Value::Integer(id * 10),
                Value::Text(format!("s{id}")),
            ],
        )
    }

    fn state_batch(device: &str, rows: Vec<(i64, Vec<Value>)>) -> Vec<u8> {
        let cols = vec![
            Column::new("loc", ColumnType::Text),
            Column::new("id", ColumnType::Integer),
            Column::new("at", ColumnType::Text),
            Column::new("x", ColumnType::Real),
            Column::new("n", ColumnType::Integer),
            Column::new("s", ColumnType::Text),
        ];
        make_batch(device, "states", cols, rows)
    }

    fn try_ingest_states(batch: &[u8]) -> String {
        Spi::get_one_with_args::<String>("SELECT public.try_ingest_states($1)", &[batch.into()])
            .unwrap()
            .unwrap()
    }

    fn states() -> String {
        text(
            "SELECT string_agg(format('%s/%s/%s %s %s %s %s v%s', loc, sluice_device, id,
                    to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), x, n, s, sluice_version),
                    '; ' ORDER BY sluice_device, id)
             FROM public.states",
        )
    }

    #[pg_test]
    fn fast_path_and_upsert_path_agree() {
        setup_states();
        // New keys of one tenant and device: the plain INSERT.
        let b1 = state_batch(
            "st-a",
            vec![
                state(1, "2024-05-01T12:00:00.040Z", Value::Real(1.5)),
                state(2, "2024-05-01 12:00:01+00", Value::Integer(2)),
                // Not UTC, not native: read by PostgreSQL as text, as before.
                state(3, "2024-05-01T14:00:02.5+02", Value::Real(-0.125)),
            ],
        );
        assert_eq!(ingest(&b1), (3, 0, 0, false));
        // Overlapping keys: the probe finds id 3, so the upsert.
        let b2 = state_batch(
            "st-a",
            vec![
                state(4, "2024-05-01T12:00:03Z", Value::Real(3.25)),
                (5, state(5, "2024-05-01T12:00:04Z", Value::Null).1),
            ],
        );
        assert_eq!(ingest(&b2), (2, 0, 0, false));
        let mut row3 = state(3, "2024-05-01T12:00:09Z", Value::Real(9.0));
        row3.0 = 6;
        let b3 = state_batch(
            "st-a",
            vec![row3, state(7, "2024-05-01T12:00:07Z", Value::Real(7.0))],
        );
        assert_eq!(ingest(&b3), (1, 1, 0, false));
        // Duplicate ids in one batch: reduced to the policy's winner.
        let mut dup = state(8, "2024-05-01T12:00:08Z", Value::Real(8.0));
        dup.0 = 9;
        dup.1[5] = Value::Text("s8-newer".into());
        let b4 = state_batch(
            "st-a",
            vec![state(8, "2024-05-01T12:00:08Z", Value::Real(8.0)), dup],
        );
        assert_eq!(ingest(&b4), (1, 0, 1, false));
        // Another device, same ids: its own keys, the plain INSERT again.
        let b5 = state_batch(
            "st-b",
            vec![state(1, "2024-05-01T12:00:00Z", Value::Real(0.0))],
        );
        assert_eq!(ingest(&b5), (1, 0, 0, false));
        assert_eq!(
            states(),
            "L1/st-a/1 2024-05-01 12:00:00.040000 1.5 10 s1 v1; \
             L1/st-a/2 2024-05-01 12:00:01.000000 2 20 s2 v2; \
             L1/st-a/3 2024-05-01 12:00:09.000000 9 30 s3 v6; \
             L1/st-a/4 2024-05-01 12:00:03.000000 3.25 40 s4 v4; \
             L1/st-a/5 2024-05-01 12:00:04.000000  50 s5 v5; \
             L1/st-a/7 2024-05-01 12:00:07.000000 7 70 s7 v7; \
             L1/st-a/8 2024-05-01 12:00:08.000000 8 80 s8-newer v9; \
             L1/st-b/1 2024-05-01 12:00:00.000000 0 10 s1 v1"
        );
        // Errors still name the column: an integer too large for integer,
        // a NULL key, on the native path too.
        let big = state_batch(
            "st-a",
            vec![(
                20,
                vec![
                    Value::Text("L1".into()),
                    Value::Integer(20),
                    Value::Text("2024-05-01T12:00:00Z".into()),
                    Value::Real(1.0),
                    Value::Integer(1 << 40),
                    Value::Null,
                ],
            )],
        );
        Spi::run(
            "CREATE FUNCTION public.try_ingest_states(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
        let r = try_ingest_states(&big);
        assert!(r.starts_with("22003: "), "{r}");
        let null_key = state_batch(
            "st-a",
            vec![(
                21,
                vec![
                    Value::Text("L1".into()),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                ],
            )],
        );
        let r = try_ingest_states(&null_key);
        assert!(
            r.starts_with("23502: ") && r.contains("key column 'id' is NULL"),
            "{r}"
        );
        assert_eq!(count("SELECT count(*) FROM public.states"), 8);

        // A constant key converted on the way (an epoch into timestamptz).
        Spi::run(
            "CREATE TABLE public.ticks (at timestamptz, id bigint, PRIMARY KEY (at, id));
             SELECT sluice.register_table('ticks', 'public.ticks', ARRAY['at', 'id'])",
        )
        .unwrap();
        let ticks = make_batch(
            "st-a",
            "ticks",
            vec![
                Column::new("at", ColumnType::Integer),
                Column::new("id", ColumnType::Integer),
            ],
            vec![
                (1, vec![Value::Integer(86_400), Value::Integer(1)]),
                (2, vec![Value::Integer(86_400), Value::Integer(2)]),
            ],
        );
        assert_eq!(ingest(&ticks), (2, 0, 0, false));
        assert_eq!(
            text("SELECT string_agg(format('%s/%s', at AT TIME ZONE 'UTC', id), ' ' ORDER BY id) FROM public.ticks"),
            "1970-01-02 00:00:00/1 1970-01-02 00:00:00/2"
        );
    }

    /// 10 days of rows, one every 10 minutes, for two locations.
    fn setup_events(partitioned: bool) {
        if partitioned {
            Spi::run(
                "CREATE TABLE public.events (at timestamptz NOT NULL, loc text, v int)
                     PARTITION BY RANGE (at);
                 DO $$ BEGIN
                   FOR d IN 0..11 LOOP
                     EXECUTE format('CREATE TABLE public.events_%s PARTITION OF public.events
                                     FOR VALUES FROM (%L) TO (%L)', d,
                                    date_trunc('day', now()) - (d + 1) * interval '1 day',
                                    date_trunc('day', now()) - d * interval '1 day');
                   END LOOP;
                 END $$;
                 CREATE TABLE public.events_future PARTITION OF public.events
                     FOR VALUES FROM (date_trunc('day', now())) TO (MAXVALUE);",
            )
            .unwrap();
        } else {
            Spi::run("CREATE TABLE public.events (at timestamptz NOT NULL, loc text, v int)")
                .unwrap();
        }
        Spi::run(
            "INSERT INTO public.events
             SELECT now() - interval '5 minutes' - g * interval '10 minutes', CASE WHEN g % 2 = 0 THEN 'L1' ELSE 'L2' END, g % 7
             FROM generate_series(0, 6 * 24 * 10) g",
        )
        .unwrap();
    }

    #[pg_test]
    fn retention_deletes_expired_rows_in_chunks() {
        setup_events(false);
        let total = count("SELECT count(*) FROM public.events");
        let expired =
            count("SELECT count(*) FROM public.events WHERE at < now() - interval '3 days'");
        Spi::run("SELECT sluice.set_retention('public.events', 'at', '3 days')").unwrap();
        Spi::run("SET LOCAL sluice.retention_chunk_rows = 50").unwrap();
        assert_eq!(count("SELECT sluice.retention_chunk_rows()"), 50);
        Spi::run("CALL sluice.run_retention(in_chunks => false)").unwrap();
        assert_eq!(count("SELECT count(*) FROM public.events"), total - expired);
        assert_eq!(
            count("SELECT count(*) FROM public.events WHERE at < now() - interval '3 days'"),
            0
        );
        assert_eq!(
            count("SELECT last_deleted FROM sluice.retention WHERE target = 'public.events'::regclass"),
            expired
        );
        // Nothing left to do: a second run deletes nothing.
        Spi::run("CALL sluice.run_retention('public.events', false)").unwrap();
        assert_eq!(count("SELECT last_deleted FROM sluice.retention"), 0);
        assert_eq!(
            text("SELECT sluice.drop_retention('public.events')::text"),
            "true"
        );
        assert_eq!(count("SELECT count(*) FROM sluice.retention"), 0);
    }

    #[pg_test]
    fn retention_rolls_up_before_deleting() {
        setup_events(false);
        Spi::run(
            "CREATE TABLE public.events_hourly (at timestamptz, loc text, \"rows\" bigint,
                 v_avg numeric, v_max int)",
        )
        .unwrap();
        let total = count("SELECT count(*) FROM public.events");
        let sum_v = count("SELECT sum(v) FROM public.events");
        Spi::run(
            "SELECT sluice.set_retention('public.events', 'at', '3 days', 'public.events_hourly',
                 'hour', ARRAY['loc'], '{\"rows\": \"count(*)\", \"v_avg\": \"avg(v)\", \"v_max\": \"MAX( v )\"}')",
        )
        .unwrap();
        Spi::run("CALL sluice.run_retention(in_chunks => false)").unwrap();
        let kept = count("SELECT count(*) FROM public.events");
        let rolled = count("SELECT sum(\"rows\")::bigint FROM public.events_hourly");
        // Every row is either kept or in the summary, never both, never neither.
        assert_eq!(kept + rolled, total);
        assert!(rolled > 0 && kept > 0);
        assert_eq!(
            count(
                "SELECT (SELECT sum(v) FROM public.events)
                      + (SELECT sum(v_avg * \"rows\") FROM public.events_hourly)::bigint"
            ),
            sum_v
        );
        // Whole hours, per location, all before the watermark; rows kept are after it.
        assert_eq!(
            count(
                "SELECT count(*) FROM public.events_hourly h, sluice.retention r
                 WHERE h.at <> date_trunc('hour', h.at) OR h.at >= r.rolled_up_to
                    OR h.loc NOT IN ('L1', 'L2') OR h.v_max > 6"
            ),
            0
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM public.events e, sluice.retention r WHERE e.at < r.rolled_up_to"
            ),
            0
        );
        // A second run rolls up nothing twice.
        Spi::run("CALL sluice.run_retention(in_chunks => false)").unwrap();
        assert_eq!(
            count("SELECT sum(\"rows\")::bigint FROM public.events_hourly")
                + count("SELECT count(*) FROM public.events"),
            total
        );
    }

    #[pg_test]
    fn retention_drops_expired_partitions() {
        setup_events(true);
        let total = count("SELECT count(*) FROM public.events");
        let expired =
            count("SELECT count(*) FROM public.events WHERE at < now() - interval '3 days'");
        let partitions =
            count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass");
        Spi::run("SELECT sluice.set_retention('public.events', 'at', '3 days')").unwrap();
        Spi::run("CALL sluice.run_retention(in_chunks => false)").unwrap();
        assert_eq!(count("SELECT count(*) FROM public.events"), total - expired);
        // Days 3..11 ago end before the cutoff: dropped; the day that holds
        // the cutoff had its expired rows deleted.
        let dropped = count("SELECT last_dropped FROM sluice.retention");
        assert!(dropped >= 8, "{dropped}");
        assert_eq!(
            count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass"),
            partitions - dropped
        );
        assert!(count("SELECT last_deleted FROM sluice.retention") > 0);
    }

    #[pg_test]
    fn retention_names_are_validated() {
        setup_events(false);
        Spi::run("CREATE TABLE public.events_hourly (at timestamptz, loc text, n bigint)").unwrap();
        Spi::run(
            "CREATE FUNCTION public.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
        let try_sql = |q: &str| {
            Spi::get_one_with_args::<String>("SELECT public.try_sql($1)", &[q.into()])
                .unwrap()
                .unwrap()
        };
        let r = try_sql("SELECT sluice.set_retention('public.events', 'at\"; DROP TABLE public.events; --', '1 day')");
        assert!(
            r.starts_with("42703: ") && r.contains("does not exist in public.events"),
            "{r}"
        );
        let r = try_sql("SELECT sluice.set_retention('public.events', 'loc', '1 day')");
        assert!(
            r.starts_with("42804: ") && r.contains("must be timestamptz"),
            "{r}"
        );
        let r = try_sql("SELECT sluice.set_retention('public.events', 'at', '-1 day')");
        assert!(r.starts_with("22023: "), "{r}");
        let r = try_sql(
            "SELECT sluice.set_retention('public.events', 'at', '1 day', 'public.events_hourly', 'hour',
                 ARRAY['loc'], '{\"n\": \"count(*); DROP TABLE public.events\"}')",
        );
        assert!(r.starts_with("22023: "), "{r}");
        let r = try_sql(
            "SELECT sluice.set_retention('public.events', 'at', '1 day', 'public.events_hourly', 'hour',
                 ARRAY['loc'], '{\"n\": \"sum(v) FROM pg_authid --)\"}')",
        );
        assert!(r.starts_with("42703: "), "{r}");
        let r = try_sql(
            "SELECT sluice.set_retention('public.events', 'at', '1 day', 'public.events_hourly', 'hour',
                 ARRAY['loc\"x'], '{\"n\": \"count(*)\"}')",
        );
        assert!(
            r.starts_with("42703: ") && r.contains("group column"),
            "{r}"
        );
        let r = try_sql(
            "SELECT sluice.set_retention('public.events', 'at', '1 day', 'public.events_hourly', 'fortnight')",
        );
        assert!(r.starts_with("22023: "), "{r}");
        assert_eq!(count("SELECT count(*) FROM sluice.retention"), 0);
        assert!(count("SELECT count(*) FROM public.events") > 0);
    }

    #[pg_test]
    fn unusual_names_and_types_map() {
        Spi::run(
            "CREATE SCHEMA \"My Schema\";
             CREATE TABLE \"My Schema\".\"Odd \"\"T\"\"\" (
                 \"Key\" text, \"n\"\"q\" numeric(10,2), flag boolean, tags text[], v varchar(3),
                 UNIQUE (\"Key\"))",
        )
        .unwrap();
        Spi::run(
            "SELECT sluice.register_table('odd', '\"My Schema\".\"Odd \"\"T\"\"\"', ARRAY['Key'], 'last_writer_wins')",
        )
        .unwrap();
        let cols = vec![
            Column::new("Key", ColumnType::Text),
            Column::new("n\"q", ColumnType::Real),
            Column::new("flag", ColumnType::Integer),
            Column::new("tags", ColumnType::Text),
            Column::new("v", ColumnType::Text),
            // Sent by an edge table tracked as mutable; the batch's version is used.
            Column::new("sluice_version", ColumnType::Integer),
        ];
        let b = make_batch(
            "dev-a",
            "odd",
            cols.clone(),
            vec![(
                9,
                vec![
                    Value::Text("k1".into()),
                    Value::Real(12.345),
                    Value::Integer(1),
                    Value::Text("{a,b}".into()),
                    Value::Text("abc".into()),
                    Value::Integer(9),
                ],
            )],
        );
        assert_eq!(ingest(&b), (1, 0, 0, false));
        assert_eq!(
            text("SELECT format('%s %s %s %s %s %s', \"Key\", \"n\"\"q\", flag, tags, v, sluice_version) FROM \"My Schema\".\"Odd \"\"T\"\"\""),
            "k1 12.35 t {a,b} abc 9"
        );
        // The column's modifier is checked on assignment, not silently truncated.
        let too_long = make_batch(
            "dev-a",
            "odd",
            vec![
                Column::new("Key", ColumnType::Text),
                Column::new("v", ColumnType::Text),
            ],
            vec![(
                10,
                vec![Value::Text("k2".into()), Value::Text("abcd".into())],
            )],
        );
        Spi::run(
            "CREATE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        )
        .unwrap();
        assert_eq!(try_ingest(&too_long), "22001");
    }

    // ---- Tenancy ----------------------------------------------------------

    /// Runs `q` (which may use `$1`, the batch) as `role`, catching an ERROR:
    /// `ok` or `SQLSTATE: message`.
    fn try_as(role: &str, q: &str, batch: Option<&[u8]>) -> String {
        if !role.is_empty() {
            Spi::run(&format!("SET ROLE {role}")).unwrap();
        }
        let r = Spi::get_one_with_args::<String>(
            "SELECT public.try_sql($1, $2)",
            &[q.into(), batch.map(|b| b.to_vec()).into()],
        );
        Spi::run("RESET ROLE").unwrap();
        r.unwrap().unwrap()
    }

    fn site_batch(device: &str, rows: &[(i64, &str, i64, &str)]) -> Vec<u8> {
        make_batch(
            device,
            "sites",
            vec![
                Column::new("location_id", ColumnType::Text),
                Column::new("id", ColumnType::Integer),
                Column::new("state", ColumnType::Text),
            ],
            rows.iter()
                .map(|&(v, loc, id, st)| {
                    (
                        v,
                        vec![
                            Value::Text(loc.into()),
                            Value::Integer(id),
                            Value::Text(st.into()),
                        ],
                    )
                })
                .collect(),
        )
    }

    fn setup_tenants() {
        Spi::run(
            "CREATE TABLE public.sites (location_id text, id bigint, state text,
                                        PRIMARY KEY (location_id, id));
             SELECT sluice.register_table('sites', 'public.sites', ARRAY['location_id', 'id'],
                                          'last_writer_wins', 'location_id');
             CREATE ROLE dev_a; CREATE ROLE dev_b; CREATE ROLE reader_a; CREATE ROLE outsider;
             SELECT sluice.grant_device('dev_a', 'A');
             SELECT sluice.grant_device('dev_b', 'B', 'box-b');
             CREATE FUNCTION public.try_sql(q text, b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE q USING b;
                 RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 RETURN SQLSTATE || ': ' || SQLERRM;
             END $$;",
        )
        .unwrap();
    }

    fn sites() -> String {
        text(
            "SELECT coalesce(string_agg(format('%s/%s/%s/%s', location_id, id, state, sluice_device),
                    ';' ORDER BY location_id, id), '') FROM public.sites",
        )
    }

    #[pg_test]
    fn device_roles_ingest_only_their_own_tenant() {
        setup_tenants();
        let ingest_q = "SELECT * FROM sluice.ingest($1)";
        let a = site_batch("box-a", &[(1, "A", 1, "IDLE"), (2, "A", 2, "BUSY")]);
        assert_eq!(try_as("dev_a", ingest_q, Some(&a)), "ok");
        let b = site_batch("box-b", &[(1, "B", 1, "IDLE")]);
        assert_eq!(try_as("dev_b", ingest_q, Some(&b)), "ok");
        assert_eq!(sites(), "A/1/IDLE/box-a;A/2/BUSY/box-a;B/1/IDLE/box-b");

        // A batch carrying another location's row is refused whole.
        let mixed = site_batch("box-a", &[(3, "A", 1, "CLEANING"), (4, "B", 1, "STOLEN")]);
        assert_eq!(
            try_as("dev_a", ingest_q, Some(&mixed)),
            "42501: sluice.ingest: batch box-a/sites/0000123456789abc (2, 4], row 2: tenant column \
             'location_id' is 'B', but role \"dev_a\" may only write tenant 'A'; nothing of the \
             batch was applied"
        );
        let no_tenant = make_batch(
            "box-a",
            "sites",
            vec![
                Column::new("location_id", ColumnType::Text),
                Column::new("id", ColumnType::Integer),
            ],
            vec![(5, vec![Value::Null, Value::Integer(9)])],
        );
        assert!(try_as("dev_a", ingest_q, Some(&no_tenant))
            .starts_with("42501: sluice.ingest: batch box-a/sites/0000123456789abc (4, 5], row 1: tenant column 'location_id' is NULL"));
        // dev_b is bound to device box-b.
        let forged = site_batch("box-c", &[(1, "B", 7, "IDLE")]);
        assert_eq!(
            try_as("dev_b", ingest_q, Some(&forged)),
            "42501: sluice.ingest: batch box-c/sites/0000123456789abc (0, 1]: role \"dev_b\" may \
             send batches of device 'box-b' only, not 'box-c'"
        );
        assert_eq!(sites(), "A/1/IDLE/box-a;A/2/BUSY/box-a;B/1/IDLE/box-b");
        assert_eq!(count("SELECT count(*) FROM sluice.batches"), 2);

        // A device role can do nothing else.
        for q in [
            "SELECT * FROM public.sites",
            "INSERT INTO public.sites VALUES ('A', 99, 'x')",
            "SELECT * FROM sluice.batches",
            "UPDATE sluice.device_roles SET tenant = 'B'",
            "SELECT sluice.grant_device('dev_a', 'B')",
            "SELECT sluice.register_table('sites', 'public.sites', ARRAY['location_id', 'id'])",
        ] {
            assert!(
                try_as("dev_a", q, None).starts_with("42501: permission denied"),
                "{q}"
            );
        }
        // A role without a grant cannot call ingest; one with EXECUTE but no
        // device grant needs the table privileges.
        assert_eq!(
            try_as("outsider", ingest_q, Some(&a)),
            "42501: permission denied for schema sluice"
        );
        Spi::run("GRANT USAGE ON SCHEMA sluice TO outsider; GRANT EXECUTE ON FUNCTION sluice.ingest(bytea) TO outsider").unwrap();
        let a2 = site_batch("box-a", &[(9, "A", 3, "IDLE")]);
        assert_eq!(
            try_as("outsider", ingest_q, Some(&a2)),
            "42501: sluice.ingest: batch box-a/sites/0000123456789abc (8, 9]: role \"outsider\" is \
             not a device role (sluice.grant_device) and may not INSERT and UPDATE public.sites"
        );
        Spi::run("GRANT INSERT, UPDATE ON public.sites TO outsider").unwrap();
        assert_eq!(try_as("outsider", ingest_q, Some(&a2)), "ok");
        // A revoked device role cannot ingest any more.
        Spi::run("SELECT sluice.revoke_device('dev_a')").unwrap();
        let a3 = site_batch("box-a", &[(10, "A", 4, "IDLE")]);
        // revoke_device takes back USAGE on the schema too (what grant_device gave).
        assert!(try_as("dev_a", ingest_q, Some(&a3))
            .starts_with("42501: permission denied for schema sluice"));
    }

    #[pg_test]
    fn device_roles_need_a_tenant_column() {
        setup_tenants();
        Spi::run(
            "CREATE TABLE public.plain (id bigint PRIMARY KEY, state text);
             SELECT sluice.register_table('plain', 'public.plain', ARRAY['id'])",
        )
        .unwrap();
        let b = make_batch(
            "box-a",
            "plain",
            vec![Column::new("id", ColumnType::Integer)],
            vec![(1, vec![Value::Integer(1)])],
        );
        assert!(try_as("dev_a", "SELECT * FROM sluice.ingest($1)", Some(&b)).starts_with(
            "42501: sluice.ingest: batch box-a/plain/0000123456789abc (0, 1]: public.plain was \
             registered without a tenant column, so device role \"dev_a\" may not write to it"
        ));
        // The tenant column must be part of the key.
        assert_eq!(
            try_as(
                "",
                "SELECT sluice.register_table('plain', 'public.plain', ARRAY['id'], 'last_writer_wins', 'state')",
                None
            ),
            "22023: sluice.register_table: tenant column 'state' must be one of the key columns, \
             so that rows of different tenants never share a key"
        );
    }

    #[pg_test]
    fn readers_see_their_tenant_with_rls() {
        setup_tenants();
        let ingest_q = "SELECT * FROM sluice.ingest($1)";
        let a = site_batch("box-a", &[(1, "A", 1, "IDLE"), (2, "A", 2, "BUSY")]);
        let b = site_batch("box-b", &[(1, "B", 1, "IDLE")]);
        assert_eq!(try_as("dev_a", ingest_q, Some(&a)), "ok");
        assert_eq!(try_as("dev_b", ingest_q, Some(&b)), "ok");
        Spi::run(
            "GRANT SELECT ON public.sites TO reader_a;
             SELECT sluice.grant_reader('reader_a', 'A');
             SELECT sluice.enable_tenant_rls('public.sites');
             CREATE TABLE public.seen (who text, n bigint);
             GRANT INSERT ON public.seen TO reader_a",
        )
        .unwrap();
        assert_eq!(
            try_as(
                "reader_a",
                "INSERT INTO public.seen SELECT 'a', count(*) FROM public.sites",
                None
            ),
            "ok"
        );
        assert_eq!(count("SELECT n FROM public.seen WHERE who = 'a'"), 2);
        // Ingest is not affected by the policy (a second device batch still upserts).
        let a2 = site_batch("box-a", &[(3, "A", 1, "CLEANING")]);
        assert_eq!(try_as("dev_a", ingest_q, Some(&a2)), "ok");
        assert_eq!(sites(), "A/1/CLEANING/box-a;A/2/BUSY/box-a;B/1/IDLE/box-b");
        // A second tenant for the reader.
        Spi::run("SELECT sluice.grant_reader('reader_a', 'B')").unwrap();
        assert_eq!(
            try_as(
                "reader_a",
                "INSERT INTO public.seen SELECT 'ab', count(*) FROM public.sites",
                None
            ),
            "ok"
        );
        assert_eq!(count("SELECT n FROM public.seen WHERE who = 'ab'"), 3);
    }

    #[pg_test]
    fn names_are_validated_not_pasted() {
        setup_tenants();
        let evil = r#"location_id" IS NOT NULL OR true; DROP TABLE public.sites; --"#;
        for (q, code) in [
            (
                format!(
                    "SELECT sluice.enable_tenant_rls('public.sites', {})",
                    pgrx::spi::quote_literal(evil)
                ),
                "42703",
            ),
            (
                "SELECT sluice.enable_tenant_rls('public.sites; DROP TABLE public.sites')".into(),
                "42602",
            ),
            (
                "SELECT sluice.grant_device('dev_a; DROP TABLE public.sites', 'A')".into(),
                "42602",
            ),
            (
                format!(
                    "SELECT sluice.register_table('sites', 'public.sites', ARRAY[{}])",
                    pgrx::spi::quote_literal(evil)
                ),
                "42703",
            ),
        ] {
            let r = try_as("", &q, None);
            assert!(r.starts_with(code), "{q}: {r}");
        }
        // A role whose name needs quoting works.
        Spi::run(r#"CREATE ROLE "Dev ""Q"" x""#).unwrap();
        Spi::run(r#"SELECT sluice.grant_device('"Dev ""Q"" x"', 'A')"#).unwrap();
        assert_eq!(
            text("SELECT role || '=' || tenant FROM sluice.device_roles WHERE tenant = 'A' AND role <> 'dev_a'"),
            "Dev \"Q\" x=A"
        );
        assert_eq!(count("SELECT count(*) FROM public.sites"), 0);
    }

    // ---- Vectors, epoch times, search -------------------------------------

    fn f32_blob(v: &[f32]) -> Value {
        Value::Blob(v.iter().flat_map(|f| f.to_le_bytes()).collect())
    }

    /// Key frames with a description and a 4-dimensional "topic" embedding
    /// (cleaning, waiting guests, staff, kitchen).
    const FRAMES: [(&str, [f32; 4]); 6] = [
        (
            "a waiter cleaning table 4 after guests left",
            [0.9, 0.1, 0.4, 0.0],
        ),
        (
            "two customers waiting at the entrance for a table",
            [0.0, 0.95, 0.1, 0.0],
        ),
        (
            "staff wiping the counter near the bar",
            [0.8, 0.0, 0.5, 0.1],
        ),
        (
            "the chef plating dishes in the kitchen",
            [0.0, 0.0, 0.3, 0.95],
        ),
        (
            "a family of four seated at table 7, waiter taking the order",
            [0.0, 0.3, 0.9, 0.0],
        ),
        (
            "empty dining room, chairs stacked on the tables",
            [0.3, 0.0, 0.0, 0.0],
        ),
    ];

    fn frame_columns() -> Vec<Column> {
        vec![
            Column::new("location_id", ColumnType::Text),
            Column::new("id", ColumnType::Integer),
            Column::new("captured_at", ColumnType::Integer),
            Column::new("description", ColumnType::Text),
            Column::new("embedding", ColumnType::Blob),
        ]
    }

    fn setup_frames() {
        Spi::run(
            "CREATE TABLE public.frames (location_id text, id bigint, captured_at timestamptz,
                                         description text, embedding bytea, image bytea,
                                         PRIMARY KEY (location_id, id));
             INSERT INTO public.frames VALUES ('A', 0, '2024-05-01 11:00+00', 'before sluice',
                 '\\x0000803f00000000000000000000803f', '\\xff');
             SELECT sluice.register_table('frames', 'public.frames', ARRAY['location_id', 'id'],
                                          'last_writer_wins', 'location_id');
             SELECT sluice.enable_vectors('public.frames', 'embedding', 4);
             SELECT sluice.enable_search('public.frames', 'description');",
        )
        .unwrap();
        let rows = FRAMES
            .iter()
            .enumerate()
            .map(|(i, (d, v))| {
                let id = i as i64 + 1;
                (
                    id,
                    vec![
                        Value::Text("A".into()),
                        Value::Integer(id),
                        Value::Integer(1_714_564_800 + 60 * id),
                        Value::Text((*d).into()),
                        f32_blob(v),
                    ],
                )
            })
            .collect();
        assert_eq!(
            ingest(&make_batch("box-a", "frames", frame_columns(), rows)).0,
            6
        );
    }

    #[pg_test]
    fn blobs_become_vectors_and_numbers_times() {
        setup_frames();
        // The bytea column was converted in place, with an HNSW index.
        assert_eq!(
            text("SELECT embedding::text FROM public.frames WHERE id = 0"),
            "[1,0,0,1]"
        );
        assert_eq!(
            text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.frames'::regclass AND attname = 'embedding'"),
            "vector(4)"
        );
        assert_eq!(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'frames_embedding_hnsw'"),
            "CREATE INDEX frames_embedding_hnsw ON public.frames USING hnsw (embedding vector_cosine_ops)"
        );
        assert_eq!(
            text("SELECT format('%s|%s', embedding, captured_at AT TIME ZONE 'UTC') FROM public.frames WHERE id = 1"),
            "[0.9,0.1,0.4,0]|2024-05-01 12:01:00"
        );
        // A text vector is accepted; a blob of the wrong size names the column.
        Spi::run(
            "CREATE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
        let row = |v: i64, e: Value| {
            (
                v,
                vec![
                    Value::Text("A".into()),
                    Value::Integer(v),
                    Value::Real(1_714_564_800.5),
                    Value::Text("x".into()),
                    e,
                ],
            )
        };
        let text_vec = make_batch(
            "box-a",
            "frames",
            frame_columns(),
            vec![row(20, Value::Text("[1,2,3,4]".into()))],
        );
        assert_eq!(try_ingest(&text_vec), "ok");
        assert_eq!(
            text("SELECT format('%s|%s', embedding, captured_at AT TIME ZONE 'UTC') FROM public.frames WHERE id = 20"),
            "[1,2,3,4]|2024-05-01 12:00:00.5"
        );
        let short = make_batch(
            "box-a",
            "frames",
            frame_columns(),
            vec![row(21, Value::Null), row(22, f32_blob(&[1.0, 2.0]))],
        );
        assert_eq!(
            try_ingest(&short),
            "22000: sluice.ingest: batch box-a/frames/0000123456789abc (20, 22], row 2, column \
             'embedding' of public.frames: the blob is not a vector for this column: expected 4 \
             dimensions, got 2 (8 bytes)"
        );
        assert_eq!(count("SELECT count(*) FROM public.frames WHERE id > 20"), 0);
    }

    #[pg_test]
    fn search_nearest_and_hybrid_find_the_right_frame() {
        setup_frames();
        let ids = |q: &str| {
            text(&format!(
                "SELECT string_agg(row_data->>'id', ',' ORDER BY ord) FROM {q} WITH ORDINALITY AS r(row_data, a, b, ord)"
            ))
        };
        // By words (websearch syntax), ranked, with highlights.
        assert_eq!(
            ids("sluice.search('public.frames', 'waiter table', 5)"),
            "1,5"
        );
        assert_eq!(
            ids("sluice.search('public.frames', 'table -waiter', 5)"),
            "2,6"
        );
        assert_eq!(
            ids("sluice.search('public.frames', '\"cleaning table\"', 5)"),
            "1"
        );
        assert_eq!(
            text("SELECT snippet FROM sluice.search('public.frames', 'cleaning', 1)"),
            "waiter <b>cleaning</b> table 4 after guests left"
        );
        // Large and internal columns are left out of row_data.
        assert_eq!(
            text("SELECT string_agg(k, ',' ORDER BY k) FROM sluice.search('public.frames', 'chef', 1), jsonb_object_keys(row_data) k"),
            "captured_at,description,id,location_id,sluice_device,sluice_version"
        );
        // By meaning: nearest to "somebody tidying up".
        assert_eq!(
            text("SELECT string_agg(format('%s:%s', row_data->>'id', round(distance::numeric, 3)), ',') FROM sluice.nearest('public.frames', '[1,0,0.3,0]', 3)"),
            "1:0.013,3:0.041,6:0.042"
        );
        // By both: "table" ranks 1, 2, 5, 6; the vector (waiting guests) 2, 5, 1: 2 wins.
        assert_eq!(
            text("SELECT string_agg(format('%s:%s/%s', row_data->>'id', text_rank, vector_rank), ',')
                  FROM sluice.hybrid_search('public.frames', 'table', '[0,1,0.1,0]', 3)"),
            "2:2/1,1:1/3,5:3/2"
        );
        // Only text weight: the text ranking alone.
        assert_eq!(
            text("SELECT string_agg(row_data->>'id', ',') FROM sluice.hybrid_search('public.frames', 'table', '[0,1,0.1,0]', 3, 1, 0)"),
            "1,2,5"
        );
    }

    #[pg_test]
    fn search_and_vector_names_are_validated() {
        setup_frames();
        Spi::run(
            "CREATE FUNCTION public.try_sql(q text, b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q USING b; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;",
        )
        .unwrap();
        let evil = pgrx::spi::quote_literal(r#"description, '')); DROP TABLE public.frames; --"#);
        for (q, code) in [
            (format!("SELECT sluice.enable_search('public.frames', {evil})"), "42703"),
            // Not an injection: a new column with exactly that name.
            (format!("SELECT sluice.enable_vectors('public.frames', {evil}, 4)"), "ok"),
            ("SELECT sluice.enable_vectors('public.frames', 'embedding', 4, 'dot; DROP')".into(), "22023"),
            ("SELECT sluice.enable_search('public.frames', 'description', 'english; DROP')".into(), "42602"),
            ("SELECT * FROM sluice.search('public.frames; DROP TABLE x', 'a', 1)".into(), "42602"),
            ("SELECT * FROM sluice.search('public.frames', 'x'')); DROP TABLE public.frames; --', 1)".into(), "ok"),
            ("SELECT * FROM sluice.nearest('pg_class', '[1,2]', 1)".into(), "55000"),
        ] {
            let r = try_as("", &q, None);
            assert!(r.starts_with(code), "{q}: {r}");
        }
        assert_eq!(count("SELECT count(*) FROM public.frames"), 7);
    }

    // ---- Sketch merge ------------------------------------------------------

    #[pg_test]
    fn merged_sketches_match_exact_percentiles() {
        use sluice_wire::Sketch;
        // 24 five-minute windows of processing times, skewed, with a slow hour.
        Spi::run("CREATE TABLE public.win (w int, sketch bytea, raw float8[])").unwrap();
        let mut all = Vec::new();
        for w in 0..24 {
            let mut s = Sketch::new();
            let mut raw = Vec::new();
            for i in 0..100 {
                let x = 5.0 + ((i * 37 + w * 11) % 100) as f64 * if w >= 12 { 3.0 } else { 1.0 };
                s.add(x);
                raw.push(x);
            }
            all.extend(raw.iter().copied());
            Spi::run_with_args(
                "INSERT INTO public.win VALUES ($1, $2, $3)",
                &[w.into(), s.encode().into(), raw.into()],
            )
            .unwrap();
        }
        all.sort_by(f64::total_cmp);
        for p in [0.5, 0.95, 0.99] {
            let exact = all[(p * (all.len() - 1) as f64).floor() as usize];
            let got = Spi::get_one_with_args::<f64>(
                "SELECT sluice.sketch_quantile(sluice.sketch_merge(sketch), $1) FROM public.win",
                &[p.into()],
            )
            .unwrap()
            .unwrap();
            assert!(
                (got - exact).abs() <= 0.0101 * exact,
                "p{p}: {got} vs {exact}"
            );
            // The same through PostgreSQL's own exact percentile over the raw rows.
            let pg = Spi::get_one_with_args::<f64>(
                "SELECT percentile_disc($1) WITHIN GROUP (ORDER BY x) FROM public.win, unnest(raw) x",
                &[p.into()],
            )
            .unwrap()
            .unwrap();
            assert!((got - pg).abs() <= 0.0101 * pg, "p{p}: {got} vs {pg}");
        }
        assert_eq!(
            count("SELECT sluice.sketch_count(sluice.sketch_merge(sketch)) FROM public.win"),
            2400
        );
        // Per half day (GROUP BY), NULLs skipped, garbage refused.
        assert_eq!(
            count("SELECT count(*) FROM (SELECT w / 12, sluice.sketch_merge(sketch) FROM public.win GROUP BY 1) g"),
            2
        );
        Spi::run("INSERT INTO public.win VALUES (99, NULL, NULL)").unwrap();
        assert_eq!(
            count("SELECT sluice.sketch_count(sluice.sketch_merge(sketch)) FROM public.win"),
            2400
        );
        Spi::run(
            "CREATE FUNCTION public.try_q(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        )
        .unwrap();
        assert_eq!(text("SELECT public.try_q('SELECT sluice.sketch_merge(x) FROM (VALUES (''\\x00''::bytea)) v(x)')"), "22P03");
        assert_eq!(text("SELECT public.try_q('SELECT sluice.sketch_quantile(sluice.sketch_merge(sketch), 1.5) FROM public.win')"), "22023");
    }

    // ---- Issue 12: restored and copied edge databases, streams, zones ----

    /// A batch as [`make_batch`] makes it, of another stream and origin.
    fn batch_of(
        device: &str,
        table: &str,
        stream: u64,
        origin: sluice_wire::Origin,
        columns: Vec<Column>,
        rows: Vec<(i64, Vec<Value>)>,
        base_seq: Option<i64>,
    ) -> Vec<u8> {
        let b = make_batch(device, table, columns, rows);
        let mut batch = sluice_wire::decode(&b).unwrap();
        batch.header.stream_id = stream;
        batch.header.origin = origin;
        if let Some(base) = base_seq {
            batch.header.base_seq = base;
        }
        encode(
            &batch.header,
            &batch.versions,
            &batch.columns,
            EncodeOptions::default(),
        )
        .unwrap()
    }

    fn digest_of(batch: &[u8]) -> u64 {
        sluice_wire::decode_header(batch).unwrap().digest.unwrap()
    }

    fn ledger_batches() -> i64 {
        count("SELECT count(*) FROM sluice.batches")
    }

    #[pg_test]
    fn a_replay_with_the_same_digest_is_a_replay() {
        setup_readings("last_writer_wins");
        let rows = || vec![(1, reading(1, "IDLE")), (2, reading(2, "BUSY"))];
        let b = make_batch("dev-a", "readings", reading_columns(), rows());
        assert_eq!(ingest(&b), (2, 0, 0, false));
        assert_eq!(
            count("SELECT digest FROM sluice.batches"),
            digest_of(&b) as i64
        );
        // Cut again later (another send time, so another checksum): the same
        // rows, the same digest, a replay.
        let mut again = sluice_wire::decode(&b).unwrap();
        again.header.sent_at_ms += 60_000;
        let again = encode(
            &again.header,
            &again.versions,
            &again.columns,
            EncodeOptions::default(),
        )
        .unwrap();
        assert_ne!(again, b);
        assert_eq!(ingest(&again), (0, 0, 2, true));
        assert_eq!(ledger_batches(), 1);
    }

    #[pg_test]
    fn a_known_identity_with_other_content_is_a_fork() {
        setup_readings("last_writer_wins");
        let b = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(1, reading(1, "IDLE")), (2, reading(2, "BUSY"))],
        );
        assert_eq!(ingest(&b), (2, 0, 0, false));
        let before = readings();
        // A restored box cut the same range again, with rows written since
        // the backup: same identity, other content.
        let restored = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![
                (1, reading(1, "IDLE")),
                (2, reading(2, "NEW AFTER RESTORE")),
            ],
        );
        let r = try_ingest(&restored);
        assert!(
            r.starts_with(&format!(
                "55000: sluice.ingest: batch dev-a/readings/{:016x} (0, 2]: the ledger holds this batch identity with other content",
                0x1234_5678_9abc_u64
            )),
            "{r}"
        );
        assert!(
            r.contains("device 'dev-a', stream 0000123456789abc, table 'readings'")
                && r.contains(
                    "restored from a backup or copied, and must continue under a new epoch"
                ),
            "{r}"
        );
        assert_eq!(readings(), before);
        assert_eq!(ledger_batches(), 1);
        assert_eq!(count("SELECT batches FROM sluice.devices"), 1);
        // The hint says what happens next.
        Spi::run(
            "CREATE FUNCTION public.hint_of(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE h text;
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN h;
             END $$",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT public.hint_of($1)",
                &[restored.as_slice().into()]
            )
            .unwrap()
            .unwrap(),
            "the agent does this by itself (sluice_new_epoch); see docs/agent.md"
        );
        // A ledger row without a digest (sluice 0.1, format version 1) is
        // taken for a replay, as before.
        Spi::run("UPDATE sluice.batches SET digest = NULL").unwrap();
        assert_eq!(ingest(&restored), (0, 0, 2, true));
        assert_eq!(readings(), before);
    }

    #[pg_test]
    fn a_skipped_row_of_this_device_with_other_content_is_a_fork() {
        setup_readings("last_writer_wins");
        let first = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![
                (1, reading(1, "IDLE")),
                (2, reading(2, "BUSY")),
                (3, reading(3, "IDLE")),
            ],
        );
        assert_eq!(ingest(&first), (3, 0, 0, false));
        let before = readings();
        // The same rows cut again with other boundaries (a lost
        // acknowledgement): skipped, no error.
        let recut = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(2, reading(2, "BUSY")), (3, reading(3, "IDLE"))],
        );
        assert_eq!(ingest(&recut), (0, 0, 2, false));
        // Another device's row at a lower version: the policy keeps the
        // cloud's, no error.
        let other = make_batch(
            "dev-b",
            "readings",
            reading_columns(),
            vec![(1, reading(3, "FROM B"))],
        );
        assert_eq!(ingest(&other), (0, 0, 1, false));
        assert_eq!(readings(), before);
        // A restored box: versions 2..4, row 2 rewritten since the backup,
        // under new boundaries. Nothing of it is applied, row 4 neither.
        let restored = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![
                (2, reading(2, "NEW AFTER RESTORE")),
                (3, reading(3, "IDLE")),
                (4, reading(4, "IDLE")),
            ],
        );
        let r = try_ingest(&restored);
        assert!(
            r.starts_with("55000: sluice.ingest: batch dev-a/readings/0000123456789abc (1, 4]: the row of version 2 has a key that public.readings already holds from this device at a version at least 2, with other content"),
            "{r}"
        );
        assert_eq!(readings(), before);
        assert_eq!(ledger_batches(), 3);
        assert_eq!(count("SELECT sum(batches)::bigint FROM sluice.devices"), 3);
    }

    #[pg_test]
    fn a_new_epochs_rows_from_before_its_fork_are_left_to_the_policy() {
        setup_readings("last_writer_wins");
        // What the box sent before the restore was found (the lost future):
        // row 2 updated to version 5.
        let lost_future = make_batch(
            "dev-a",
            "readings",
            reading_columns(),
            vec![(1, reading(1, "IDLE")), (5, reading(2, "LOST FUTURE"))],
        );
        assert_eq!(ingest(&lost_future), (2, 0, 0, false));
        // The restored box in its new epoch: row 2 at version 3 existed when
        // the epoch began (fork_seq 4) and was not changed since; row 1 was
        // changed since the restore point (a fresh version). Row 2 is left
        // to the policy (the cloud's newer version stays), no 55000.
        let origin = sluice_wire::Origin {
            machine: 0,
            zone: String::new(),
            fork: Some(sluice_wire::Fork {
                parent_stream: 0x0000_1234_5678_9abc,
                fork_seq: 4,
            }),
        };
        let epoch = batch_of(
            "dev-a",
            "readings",
            0x77,
            origin.clone(),
            reading_columns(),
            vec![
                (3, reading(2, "BEFORE THE BACKUP")),
                (1_800_000_000_000_000, reading(1, "AFTER THE RESTORE")),
            ],
            Some(2),
        );
        assert_eq!(ingest(&epoch), (0, 1, 1, false));
        assert_eq!(
            text("SELECT string_agg(id || '=' || state, ',' ORDER BY id) FROM public.readings"),
            "1=AFTER THE RESTORE,2=LOST FUTURE"
        );
        // A row after the fork with a reused version and other content is
        // still a fork.
        let again = batch_of(
            "dev-a",
            "readings",
            0x77,
            origin,
            reading_columns(),
            vec![(1_800_000_000_000_000, reading(1, "OTHER"))],
            Some(1_799_999_999_999_999),
        );
        assert!(
            try_ingest(&again).starts_with("55000"),
            "{}",
            try_ingest(&again)
        );
    }

    /// An append-only table of the default schema's shape since 0.2: the
    /// stream in the key.
    fn setup_counts() {
        Spi::run(
            "CREATE TABLE public.counts (
                 loc text NOT NULL, sluice_device text NOT NULL, sluice_stream bigint NOT NULL,
                 id bigint NOT NULL, people integer, at timestamptz,
                 PRIMARY KEY (loc, sluice_device, sluice_stream, id));
             SELECT sluice.register_table('counts', 'public.counts',
                 ARRAY['loc', 'sluice_device', 'sluice_stream', 'id'], tenant_column => 'loc')",
        )
        .unwrap();
        Spi::run(
            "CREATE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
    }

    fn counts_batch(
        stream: u64,
        fork: Option<(u64, i64)>,
        rows: &[(i64, i64)],
        base_seq: Option<i64>,
    ) -> Vec<u8> {
        let origin = sluice_wire::Origin {
            machine: 0xfeed,
            zone: String::new(),
            fork: fork.map(|(parent_stream, fork_seq)| sluice_wire::Fork {
                parent_stream,
                fork_seq,
            }),
        };
        batch_of(
            "box-1",
            "counts",
            stream,
            origin,
            vec![
                Column::new("loc", ColumnType::Text),
                Column::new("id", ColumnType::Integer),
                Column::new("people", ColumnType::Integer),
            ],
            rows.iter()
                .map(|&(id, people)| {
                    (
                        id,
                        vec![
                            Value::Text("L1".into()),
                            Value::Integer(id),
                            Value::Integer(people),
                        ],
                    )
                })
                .collect(),
            base_seq,
        )
    }

    fn counts() -> String {
        text(
            "SELECT coalesce(string_agg(format('%s:%s=%s', sluice_stream, id, people), ' '
                    ORDER BY sluice_stream, id), '') FROM public.counts",
        )
    }

    #[pg_test]
    fn the_stream_is_in_the_key_and_a_restore_is_a_fork() {
        setup_counts();
        const S1: u64 = 11;
        const S2: u64 = 22;
        // The fast path (probe + plain INSERT) with the stream in the key.
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(1, 10), (2, 20), (3, 30)], None)),
            (3, 0, 0, false)
        );
        // A clone under another stream: its own rows, the plain INSERT again.
        assert_eq!(
            ingest(&counts_batch(S2, None, &[(1, 99), (2, 98)], None)),
            (2, 0, 0, false)
        );
        assert_eq!(counts(), "11:1=10 11:2=20 11:3=30 22:1=99 22:2=98");
        // The same rows of S1 cut again: skipped, no error.
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(2, 20), (3, 30)], Some(1))),
            (0, 0, 2, false)
        );
        // S1 restored from a backup taken after row 1: rows 2 and 3 again,
        // with other content, under new boundaries.
        let r = try_ingest(&counts_batch(
            S1,
            None,
            &[(2, 21), (3, 31), (4, 41)],
            Some(1),
        ));
        assert!(
            r.starts_with("55000: sluice.ingest: batch box-1/counts/000000000000000b (1, 4]: the row of version 2"),
            "{r}"
        );
        assert_eq!(counts(), "11:1=10 11:2=20 11:3=30 22:1=99 22:2=98");
    }

    #[pg_test]
    fn a_fork_batch_skips_what_its_ancestors_sent() {
        setup_counts();
        const S1: u64 = 11;
        const S3: u64 = 33;
        const S4: u64 = 44;
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(1, 10), (2, 20), (3, 30)], None)),
            (3, 0, 0, false)
        );
        // A new epoch after the restore: rows up to 3 existed when it began.
        // 1 and 2 are the parent's rows, 3 was rewritten after the restore,
        // 4 and 5 are new.
        assert_eq!(
            ingest(&counts_batch(
                S3,
                Some((S1, 3)),
                &[(1, 10), (2, 20), (3, 31), (4, 40), (5, 50)],
                None
            )),
            (3, 0, 2, false)
        );
        assert_eq!(counts(), "11:1=10 11:2=20 11:3=30 33:3=31 33:4=40 33:5=50");
        // Another epoch: its parent is S3, whose parent is S1 (recorded in
        // sluice.streams by S3's fork batch). 1, 2 come from the grandparent,
        // 3..5 from the parent, 6 is new; 7 is above fork_seq and inserted
        // even though S3 has no row 7 either.
        assert_eq!(
            ingest(&counts_batch(
                S4,
                Some((S3, 6)),
                &[
                    (1, 10),
                    (2, 20),
                    (3, 31),
                    (4, 40),
                    (5, 50),
                    (6, 60),
                    (7, 70)
                ],
                None
            )),
            (2, 0, 5, false)
        );
        assert_eq!(
            counts(),
            "11:1=10 11:2=20 11:3=30 33:3=31 33:4=40 33:5=50 44:6=60 44:7=70"
        );
        // A row above fork_seq with the parent's content is the new
        // epoch's own row: inserted.
        assert_eq!(
            ingest(&counts_batch(S4, Some((S3, 4)), &[(5, 50)], None)),
            (1, 0, 0, false)
        );
        // The streams of the device, with their parents and counts.
        assert_eq!(
            text(
                "SELECT string_agg(format('%s<%s m%s b%s r%s %s', stream_id, coalesce(parent_stream::text, '-'),
                        machine, batches, rows, live), ' ' ORDER BY stream_id)
                 FROM sluice.device_streams('box-1')"
            ),
            format!(
                "11<- m{m} b1 r3 t 33<11 m{m} b1 r5 t 44<33 m{m} b2 r8 t",
                m = 0xfeed
            )
        );
        assert_eq!(
            count("SELECT count(*) FROM sluice.streams WHERE first_seen <= last_seen"),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM sluice.device_streams('nobody')"),
            0
        );
    }

    #[pg_test]
    fn sibling_epochs_of_one_parent_send_a_pending_row_once() {
        setup_counts();
        const S1: u64 = 11;
        const S5: u64 = 55;
        const S6: u64 = 66;
        const S8: u64 = 88;
        const S9: u64 = 99;
        // S1 sent rows 1..3; its backup was taken with rows 3..5 pending
        // (row 3 was then sent by the lost future).
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(1, 10), (2, 20), (3, 30)], None)),
            (3, 0, 0, false)
        );
        // The backup restored once: a new epoch S5 forked from S1 at 5.
        assert_eq!(
            ingest(&counts_batch(
                S5,
                Some((S1, 5)),
                &[(3, 30), (4, 40), (5, 50), (6, 60)],
                None
            )),
            (3, 0, 1, false)
        );
        // The same backup restored again: S6, a sibling of S5. Row 3 is
        // the parent's, row 4 the sibling's (same version, same content):
        // one copy in the cloud. Row 5 has other content than the
        // sibling's row 5: another row, kept apart under S6 (no 55000: a
        // row up to the fork is left to the policy). Rows 6 and 7 are
        // above the fork: S6's own, inserted even where S5 has the same.
        assert_eq!(
            ingest(&counts_batch(
                S6,
                Some((S1, 5)),
                &[(3, 30), (4, 40), (5, 55), (6, 60), (7, 70)],
                None
            )),
            (3, 0, 2, false)
        );
        assert_eq!(
            counts(),
            "11:1=10 11:2=20 11:3=30 55:4=40 55:5=50 55:6=60 66:5=55 66:6=60 66:7=70"
        );
        // A third restore of the same backup: every row up to the fork is
        // in the cloud under one of its siblings.
        assert_eq!(
            ingest(&counts_batch(
                S8,
                Some((S1, 5)),
                &[(4, 40), (5, 55), (6, 61)],
                None
            )),
            (1, 0, 2, false)
        );
        // A restore of S6 (forked at 7): row 4 came to S6 from S1 and was
        // sent by S6's sibling S5, the new epoch's aunt; row 7 is its
        // parent's; row 8 is new.
        assert_eq!(
            ingest(&counts_batch(
                S9,
                Some((S6, 7)),
                &[(4, 40), (7, 70), (8, 80)],
                None
            )),
            (1, 0, 2, false)
        );
        assert_eq!(
            counts(),
            "11:1=10 11:2=20 11:3=30 55:4=40 55:5=50 55:6=60 66:5=55 66:6=60 66:7=70 \
             88:6=61 99:8=80"
        );
        // Another database under the same device id, never forked from S1:
        // its rows are its own, whatever their content.
        assert_eq!(
            ingest(&counts_batch(22, Some((21, 5)), &[(3, 30), (4, 40)], None)),
            (2, 0, 0, false)
        );
    }

    #[pg_test]
    fn a_copy_of_a_young_epoch_skips_the_originals_rows_not_the_other_way() {
        // Found by the fault trials (seed 20261751): a box restored from a
        // backup (a new epoch, its batches carrying the fork) was cloned
        // before it had sent its rows up to the fork; the clone sent them
        // first under its own stream, and the original's fork batches then
        // skipped them as rows of its lineage: the original's rows were in
        // the cloud only under the clone's stream (its verify: missing).
        setup_counts();
        const S1: u64 = 11;
        const S5: u64 = 55;
        const S7: u64 = 77;
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(1, 10), (2, 20), (3, 30)], None)),
            (3, 0, 0, false)
        );
        // S5: S1's backup restored (row 1 was pending in it), forked at 6;
        // it sends up to 3.
        assert_eq!(
            ingest(&counts_batch(
                S5,
                Some((S1, 6)),
                &[(1, 10), (2, 22), (3, 33)],
                None
            )),
            (2, 0, 1, false)
        );
        // S7: a clone of S5's database, forked from S5 at 8. Row 3 its
        // original sent (an acknowledgement the copy did not get); rows 4
        // to 6 were pending in S5 when it was copied; 7 and 8 are its own.
        assert_eq!(
            ingest(&counts_batch(
                S7,
                Some((S5, 8)),
                &[(3, 33), (4, 40), (5, 50), (6, 60), (7, 70), (8, 80)],
                Some(2)
            )),
            (5, 0, 1, false)
        );
        // S5 sends its rows 4 to 6: its own, under its stream, though its
        // copy sent the same first (the copy's are the copy's, as when the
        // original sends first and the copy's batch skips nothing of them).
        assert_eq!(
            ingest(&counts_batch(
                S5,
                Some((S1, 6)),
                &[(4, 40), (5, 50), (6, 60)],
                Some(3)
            )),
            (3, 0, 0, false)
        );
        assert_eq!(
            counts(),
            "11:1=10 11:2=20 11:3=30 55:2=22 55:3=33 55:4=40 55:5=50 55:6=60 \
             77:4=40 77:5=50 77:6=60 77:7=70 77:8=80"
        );
        // A second restore of S1's backup still leaves out what any other
        // epoch of the backup sent, its sibling's copy included.
        assert_eq!(
            ingest(&counts_batch(
                66,
                Some((S1, 6)),
                &[(1, 10), (4, 40), (6, 61)],
                None
            )),
            (1, 0, 2, false)
        );
    }

    #[pg_test]
    fn device_streams_follow_the_tenancy_rule() {
        setup_counts();
        Spi::run(
            "CREATE ROLE box_one; CREATE ROLE box_any; CREATE ROLE nosy;
             SELECT sluice.grant_device('box_one', 'L1', 'box-1');
             SELECT sluice.grant_device('box_any', 'L1');
             GRANT USAGE ON SCHEMA sluice TO nosy;
             CREATE FUNCTION public.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE n bigint;
             BEGIN EXECUTE q INTO n; RETURN 'ok ' || n;
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;",
        )
        .unwrap();
        assert_eq!(
            ingest(&counts_batch(11, None, &[(1, 10)], None)),
            (1, 0, 0, false)
        );
        let as_role = |role: &str, device: &str| {
            Spi::run(&format!("SET ROLE {role}")).unwrap();
            let r = Spi::get_one_with_args::<String>(
                "SELECT public.try_sql(format('SELECT count(*) FROM sluice.device_streams(%L)', $1::text))",
                &[device.into()],
            )
            .unwrap()
            .unwrap();
            Spi::run("RESET ROLE").unwrap();
            r
        };
        assert_eq!(as_role("box_one", "box-1"), "ok 1");
        assert_eq!(
            as_role("box_one", "box-2"),
            "42501: sluice.device_streams: role \"box_one\" may read the streams of device 'box-1' only, not those of 'box-2'"
        );
        assert!(as_role("box_any", "box-1").starts_with("42501: "));
        assert!(as_role("nosy", "box-1").starts_with("42501: "));
        // The owner reads any device's.
        assert_eq!(
            count("SELECT count(*) FROM sluice.device_streams('box-1')"),
            1
        );
        // The ledger's high water of a stream, by the same rule.
        assert_eq!(
            ingest(&counts_batch(11, None, &[(2, 20), (3, 30)], None)),
            (2, 0, 0, false)
        );
        assert_eq!(
            text(
                "SELECT string_agg(edge_table || '=' || last_seq, ' ')
                 FROM sluice.stream_high_water('box-1', 11)"
            ),
            "counts=3"
        );
        assert_eq!(
            count("SELECT count(*) FROM sluice.stream_high_water('box-1', 99)"),
            0
        );
        let high_water_as = |role: &str, device: &str| {
            Spi::run(&format!("SET ROLE {role}")).unwrap();
            let r = Spi::get_one_with_args::<String>(
                "SELECT public.try_sql(format('SELECT max(last_seq) FROM sluice.stream_high_water(%L, 11)', $1::text))",
                &[device.into()],
            )
            .unwrap()
            .unwrap();
            Spi::run("RESET ROLE").unwrap();
            r
        };
        assert_eq!(high_water_as("box_one", "box-1"), "ok 3");
        assert_eq!(
            high_water_as("box_one", "box-2"),
            "42501: sluice.stream_high_water: role \"box_one\" may read the streams of device 'box-1' only, not those of 'box-2'"
        );
        assert!(high_water_as("nosy", "box-1").starts_with("42501: "));
    }

    #[pg_test(
        error = "sluice.register_table: public.t.sluice_stream has type integer; sluice needs bigint"
    )]
    fn register_refuses_a_stream_column_of_another_type() {
        Spi::run("CREATE TABLE t (id int, sluice_stream int, PRIMARY KEY (id, sluice_stream))")
            .unwrap();
        Spi::run("SELECT sluice.register_table('t', 't', ARRAY['id', 'sluice_stream'])").unwrap();
    }

    fn setup_times() {
        Spi::run(
            "CREATE TABLE public.times (id bigint PRIMARY KEY, at timestamptz, wall timestamp);
             SELECT sluice.register_table('times', 'public.times', ARRAY['id']);
             CREATE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
    }

    fn times_batch(zone: &str, stream: u64, rows: &[(i64, &str)]) -> Vec<u8> {
        batch_of(
            "box-1",
            "times",
            stream,
            sluice_wire::Origin {
                machine: 0,
                zone: zone.into(),
                fork: None,
            },
            vec![
                Column::new("id", ColumnType::Integer),
                Column::new("at", ColumnType::Text),
                Column::new("wall", ColumnType::Text),
            ],
            rows.iter()
                .map(|&(id, t)| {
                    (
                        id,
                        vec![
                            Value::Integer(id),
                            Value::Text(t.into()),
                            Value::Text(t.into()),
                        ],
                    )
                })
                .collect(),
            None,
        )
    }

    fn times() -> String {
        text(
            "SELECT string_agg(format('%s %s %s', id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                    to_char(wall, 'HH24:MI:SS')), '; ' ORDER BY id) FROM public.times",
        )
    }

    #[pg_test]
    fn zoneless_text_is_read_in_the_batch_zone() {
        setup_times();
        Spi::run("SET TimeZone = 'Asia/Shanghai'").unwrap();
        // A batch without a zone (UTC): the cloud's TimeZone does not matter.
        assert_eq!(
            ingest(&times_batch("", 1, &[(1, "2025-12-13 14:35:00")])),
            (1, 0, 0, false)
        );
        assert_eq!(
            ingest(&times_batch("UTC", 2, &[(2, "2025-12-13 14:35:00")])),
            (1, 0, 0, false)
        );
        // The device's zone: 8 hours earlier in UTC; a time with its own
        // zone beside it is not moved.
        assert_eq!(
            ingest(&times_batch(
                "Asia/Shanghai",
                3,
                &[(3, "2025-12-13 14:35:00"), (4, "2025-12-13T14:35:00Z")]
            )),
            (2, 0, 0, false)
        );
        // An ISO offset means east of Greenwich.
        assert_eq!(
            ingest(&times_batch("+05:30", 4, &[(5, "2025-12-13 14:35:00")])),
            (1, 0, 0, false)
        );
        assert_eq!(
            times(),
            "1 2025-12-13 14:35:00 14:35:00; 2 2025-12-13 14:35:00 14:35:00; \
             3 2025-12-13 06:35:00 14:35:00; 4 2025-12-13 14:35:00 14:35:00; \
             5 2025-12-13 09:05:00 14:35:00"
        );
        // The caller's TimeZone is put back.
        assert_eq!(text("SELECT current_setting('TimeZone')"), "Asia/Shanghai");
        // A zone the server does not know: 22023, nothing applied, the
        // caller's zone still in place.
        let r = try_ingest(&times_batch(
            "Mars/Olympus_Mons",
            5,
            &[(6, "2025-12-13 14:35:00")],
        ));
        assert!(
            r.starts_with("22023: sluice.ingest: batch box-1/times/0000000000000005 (5, 6]: zone 'Mars/Olympus_Mons' cannot be used: this server does not know it"),
            "{r}"
        );
        let r = try_ingest(&times_batch("+5", 6, &[(6, "2025-12-13 14:35:00")]));
        assert!(r.starts_with("22023: ") && r.contains("zone '+5'"), "{r}");
        assert_eq!(count("SELECT count(*) FROM public.times"), 5);
        assert_eq!(text("SELECT current_setting('TimeZone')"), "Asia/Shanghai");
        Spi::run("RESET TimeZone").unwrap();
    }

    #[pg_test]
    fn unix_time_in_text_is_seconds() {
        setup_times();
        Spi::run("SET TimeZone = 'Asia/Shanghai'").unwrap();
        assert_eq!(
            ingest(&times_batch(
                "Asia/Shanghai",
                1,
                &[(1, "1765636500"), (2, "1765636500.25")]
            )),
            (2, 0, 0, false)
        );
        assert_eq!(
            text(
                "SELECT string_agg(format('%s %s %s', id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
                        to_char(wall, 'HH24:MI:SS.MS')), '; ' ORDER BY id) FROM public.times"
            ),
            "1 2025-12-13 14:35:00.000 14:35:00.000; 2 2025-12-13 14:35:00.250 14:35:00.250"
        );
        Spi::run("RESET TimeZone").unwrap();
    }

    #[pg_test]
    fn a_value_that_is_not_a_time_names_its_row_and_column() {
        setup_times();
        let b = times_batch("", 1, &[(1, "2025-12-13 14:35:00"), (2, "yesterday-ish")]);
        let r = try_ingest(&b);
        assert_eq!(
            r,
            "22007: sluice.ingest: batch box-1/times/0000000000000001 (0, 2], row 2, column 'at' of public.times: \
             invalid input syntax for type timestamp with time zone: \"yesterday-ish\""
        );
        let b = times_batch("", 2, &[(1, "2025-13-45 10:00:00")]);
        let r = try_ingest(&b);
        assert_eq!(
            r,
            "22008: sluice.ingest: batch box-1/times/0000000000000002 (0, 1], row 1, column 'at' of public.times: \
             date/time field value out of range: \"2025-13-45 10:00:00\""
        );
        assert_eq!(count("SELECT count(*) FROM public.times"), 0);
        // The backend goes on: a good batch applies.
        assert_eq!(
            ingest(&times_batch("", 3, &[(1, "2025-12-13 14:35:00")])),
            (1, 0, 0, false)
        );
    }

    // -----------------------------------------------------------------
    // Deletes and key changes (issue 12, case 3)

    fn camera_columns() -> Vec<Column> {
        vec![
            Column::new("location_id", ColumnType::Text),
            Column::new("camera_id", ColumnType::Text),
            Column::new("name", ColumnType::Text),
        ]
    }

    /// A batch of cameras: `(version, deleted, location, camera, name)`.
    fn camera_batch(device: &str, rows: &[(i64, bool, &str, &str, Option<&str>)]) -> Vec<u8> {
        let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let deleted: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let base_seq = versions.iter().copied().min().unwrap_or(1) - 1;
        let last_seq = versions.iter().copied().max().unwrap_or(base_seq);
        let columns = vec![
            rows.iter().map(|r| Value::Text(r.2.into())).collect(),
            rows.iter().map(|r| Value::Text(r.3.into())).collect(),
            rows.iter()
                .map(|r| r.4.map_or(Value::Null, |n| Value::Text(n.into())))
                .collect(),
        ];
        let header = BatchHeader {
            pulled: None,
            device_id: device.into(),
            stream_id: 0x1234_5678_9abc,
            table: "cameras".into(),
            base_seq,
            last_seq,
            row_count: 0,
            sent_at_ms: 1_700_000_000_000,
            columns: camera_columns(),
            fingerprint: 0,
            digest: None,
            origin: sluice_wire::Origin::default(),
            resend: 0,
            changes: None,
        };
        sluice_wire::encode_with_deletes(
            &header,
            &versions,
            &deleted,
            &columns,
            EncodeOptions::default(),
        )
        .expect("encodes")
    }

    fn setup_cameras(on_delete: &str) {
        Spi::run(
            "CREATE TABLE public.cameras (location_id text, camera_id text, name text,
                 sluice_deleted_at timestamptz, PRIMARY KEY (location_id, camera_id))",
        )
        .unwrap();
        Spi::run_with_args(
            "SELECT sluice.register_table('cameras', 'public.cameras',
                 ARRAY['location_id', 'camera_id'], on_delete => $1)",
            &[on_delete.into()],
        )
        .unwrap();
    }

    fn cameras() -> String {
        text(
            "SELECT coalesce(string_agg(location_id || '/' || camera_id || '=' || coalesce(name, '-')
                 || '@' || sluice_version || CASE WHEN sluice_deleted_at IS NULL THEN '' ELSE ' deleted' END,
                 ', ' ORDER BY location_id, camera_id), '') FROM public.cameras",
        )
    }

    #[pg_test]
    fn a_tombstone_deletes_the_cloud_row_once() {
        setup_cameras("delete");
        ingest(&camera_batch(
            "box-1",
            &[
                (1, false, "loc-1", "cam-1", Some("door")),
                (2, false, "loc-1", "cam-2", Some("till")),
            ],
        ));
        let del = camera_batch("box-1", &[(3, true, "loc-1", "cam-1", None)]);
        assert_eq!(ingest(&del), (0, 1, 0, false));
        assert_eq!(cameras(), "loc-1/cam-2=till@2");
        // Re-sent: a replay.
        assert_eq!(ingest(&del), (0, 0, 1, true));
        assert_eq!(
            text("SELECT key::text || ' ' || version || ' ' || device_id FROM sluice.tombstones"),
            "{loc-1,cam-1} 3 box-1"
        );
    }

    #[pg_test]
    fn a_key_change_moves_the_row_and_an_older_write_does_not_bring_it_back() {
        setup_cameras("delete");
        ingest(&camera_batch(
            "box-1",
            &[(1, false, "loc-1", "cam-1", Some("door"))],
        ));
        // Moved to another location: a delete of the old key and the row
        // under the new one, in one batch.
        ingest(&camera_batch(
            "box-1",
            &[
                (2, false, "loc-2", "cam-1", Some("door")),
                (3, true, "loc-1", "cam-1", None),
            ],
        ));
        assert_eq!(cameras(), "loc-2/cam-1=door@2");
        // An older write of the deleted key (another device, or a batch
        // drained newest first) arrives later: it stays deleted.
        assert_eq!(
            ingest(&camera_batch(
                "box-0",
                &[(2, false, "loc-1", "cam-1", Some("old"))]
            )),
            (0, 0, 1, false)
        );
        assert_eq!(cameras(), "loc-2/cam-1=door@2");
        // A newer write of that key brings it back.
        assert_eq!(
            ingest(&camera_batch(
                "box-1",
                &[(9, false, "loc-1", "cam-1", Some("again"))]
            )),
            (1, 0, 0, false)
        );
        assert_eq!(cameras(), "loc-1/cam-1=again@9, loc-2/cam-1=door@2");
    }

    #[pg_test]
    fn a_delete_older_than_the_cloud_row_does_not_win() {
        setup_cameras("delete");
        ingest(&camera_batch(
            "box-2",
            &[(10, false, "loc-1", "cam-1", Some("newer"))],
        ));
        assert_eq!(
            ingest(&camera_batch("box-1", &[(5, true, "loc-1", "cam-1", None)])),
            (0, 0, 1, false)
        );
        assert_eq!(cameras(), "loc-1/cam-1=newer@10");
        // Insert and delete of a key in one batch: the delete is newer.
        assert_eq!(
            ingest(&camera_batch(
                "box-1",
                &[
                    (11, false, "loc-1", "cam-7", Some("brief")),
                    (12, true, "loc-1", "cam-7", None)
                ]
            )),
            (0, 0, 2, false)
        );
        assert_eq!(cameras(), "loc-1/cam-1=newer@10");
    }

    #[pg_test]
    fn mark_keeps_the_row_with_deleted_at_and_a_newer_write_clears_it() {
        setup_cameras("mark");
        ingest(&camera_batch(
            "box-1",
            &[(1, false, "loc-1", "cam-1", Some("door"))],
        ));
        assert_eq!(
            ingest(&camera_batch("box-1", &[(2, true, "loc-1", "cam-1", None)])),
            (0, 1, 0, false)
        );
        assert_eq!(cameras(), "loc-1/cam-1=door@2 deleted");
        // An older write does not clear it; a newer one does.
        ingest(&camera_batch(
            "box-0",
            &[(1, false, "loc-1", "cam-1", Some("old"))],
        ));
        assert_eq!(cameras(), "loc-1/cam-1=door@2 deleted");
        ingest(&camera_batch(
            "box-1",
            &[(3, false, "loc-1", "cam-1", Some("back"))],
        ));
        assert_eq!(cameras(), "loc-1/cam-1=back@3");
    }

    #[pg_test]
    fn ignore_keeps_every_row() {
        setup_cameras("ignore");
        ingest(&camera_batch(
            "box-1",
            &[(1, false, "loc-1", "cam-1", Some("door"))],
        ));
        assert_eq!(
            ingest(&camera_batch("box-1", &[(2, true, "loc-1", "cam-1", None)])),
            (0, 0, 1, false)
        );
        assert_eq!(cameras(), "loc-1/cam-1=door@1");
        assert_eq!(text("SELECT count(*)::text FROM sluice.tombstones"), "0");
    }

    #[pg_test(
        error = "sluice.register_table: on_delete 'mark' needs a column sluice_deleted_at timestamptz in public.plain"
    )]
    fn mark_needs_the_deleted_at_column() {
        Spi::run("CREATE TABLE public.plain (id bigint PRIMARY KEY)").unwrap();
        Spi::run("SELECT sluice.register_table('plain', 'public.plain', ARRAY['id'], on_delete => 'mark')")
            .unwrap();
    }

    #[pg_test(
        error = "sluice.register_table: unknown on_delete 'drop'; expected one of 'delete', 'mark', 'ignore'"
    )]
    fn unknown_on_delete_is_refused() {
        Spi::run("CREATE TABLE public.plain (id bigint PRIMARY KEY)").unwrap();
        Spi::run("SELECT sluice.register_table('plain', 'public.plain', ARRAY['id'], on_delete => 'drop')")
            .unwrap();
    }

    // -----------------------------------------------------------------
    // Re-sends (issue 12, case 8)

    /// `batch` as the `n`-th re-send request of its table sends it: the
    /// same rows and range, `resend = n` (and another send time, as a
    /// batch cut later has).
    fn as_resend(batch: &[u8], n: u32) -> Vec<u8> {
        let mut b = sluice_wire::decode(batch).unwrap();
        b.header.resend = n;
        b.header.sent_at_ms += 3_600_000;
        encode(&b.header, &b.versions, &b.columns, EncodeOptions::default()).unwrap()
    }

    /// A mutable table `public.<name>` registered with `policy`, which the
    /// edge sent rows 1 and 2 of (versions 1 and 2, device dev-a) before it
    /// had the column `level`; then `level` is added in the cloud, where the
    /// rows have it NULL.
    fn setup_gear(name: &str, policy: &str) {
        Spi::run(&format!(
            "CREATE TABLE public.{name} (id bigint PRIMARY KEY, label text);
             SELECT sluice.register_table('{name}', 'public.{name}', ARRAY['id'], '{policy}');
             CREATE OR REPLACE FUNCTION public.try_ingest(b bytea) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN PERFORM sluice.ingest(b); RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$"
        ))
        .unwrap();
        let before = make_batch(
            "dev-a",
            name,
            vec![
                Column::new("id", ColumnType::Integer),
                Column::new("label", ColumnType::Text),
            ],
            vec![
                (1, vec![Value::Integer(1), Value::Text("drill".into())]),
                (2, vec![Value::Integer(2), Value::Text("saw".into())]),
            ],
        );
        assert_eq!(ingest(&before), (2, 0, 0, false));
        Spi::run(&format!(
            "ALTER TABLE public.{name} ADD COLUMN level integer"
        ))
        .unwrap();
    }

    /// Rows of the table of [`setup_gear`] after the edge's `ALTER TABLE
    /// ... ADD COLUMN level integer DEFAULT 7`: `(version, id, label,
    /// level)`.
    fn gear_batch(name: &str, rows: &[(i64, i64, &str, i64)]) -> Vec<u8> {
        make_batch(
            "dev-a",
            name,
            vec![
                Column::new("id", ColumnType::Integer),
                Column::new("label", ColumnType::Text),
                Column::new("level", ColumnType::Integer),
            ],
            rows.iter()
                .map(|&(v, id, label, level)| {
                    (
                        v,
                        vec![
                            Value::Integer(id),
                            Value::Text(label.into()),
                            Value::Integer(level),
                        ],
                    )
                })
                .collect(),
        )
    }

    fn gear(name: &str) -> String {
        text(&format!(
            "SELECT string_agg(format('%s=%s/%s@%s', id, label, coalesce(level::text, 'NULL'), sluice_version),
                    ' ' ORDER BY id) FROM public.{name}"
        ))
    }

    #[pg_test]
    fn a_resend_after_an_edge_default_column_fills_the_cloud_rows() {
        for policy in ["last_writer_wins", "first_writer_wins"] {
            let name = format!("gear_{policy}");
            setup_gear(&name, policy);
            assert_eq!(gear(&name), "1=drill/NULL@1 2=saw/NULL@2");
            let rows = gear_batch(&name, &[(1, 1, "drill", 7), (2, 2, "saw", 7)]);
            // Sent ordinarily, the same range is the known identity with
            // other content, and the same rows under other boundaries
            // collide with equal (version, device) pairs and other content:
            // both a fork (55000), nothing applied.
            let r = try_ingest(&rows);
            assert!(
                r.starts_with("55000") && r.contains("with other content (digest"),
                "{r}"
            );
            let recut = gear_batch(&name, &[(2, 2, "saw", 7)]);
            let r = try_ingest(&recut);
            assert!(
                r.starts_with("55000") && r.contains("the row of version 2"),
                "{r}"
            );
            assert_eq!(gear(&name), "1=drill/NULL@1 2=saw/NULL@2");
            // As a re-send, the rows replace the cloud's: updated.
            let resent = as_resend(&rows, 1);
            assert_eq!(ingest(&resent), (0, 2, 0, false), "{policy}");
            assert_eq!(gear(&name), "1=drill/7@1 2=saw/7@2", "{policy}");
            assert_eq!(
                count(&format!(
                    "SELECT updated FROM sluice.batches WHERE edge_table = '{name}' AND resend = 1"
                )),
                2
            );
            // A replay of the re-send (its batch cut again after a lost
            // acknowledgement) is a replay; the same identity with other
            // content is a fork, as for any batch.
            assert_eq!(ingest(&as_resend(&rows, 1)), (0, 0, 2, true));
            let other = as_resend(
                &gear_batch(&name, &[(1, 1, "drill", 8), (2, 2, "saw", 8)]),
                1,
            );
            let r = try_ingest(&other);
            assert!(r.starts_with("55000") && r.contains("re-send 1"), "{r}");
            // A second request of the same rows: nothing differs, nothing
            // changes twice.
            assert_eq!(ingest(&as_resend(&rows, 2)), (0, 0, 2, false));
            assert_eq!(gear(&name), "1=drill/7@1 2=saw/7@2");
            assert_eq!(
                count(&format!(
                    "SELECT count(*) FROM sluice.batches WHERE edge_table = '{name}'"
                )),
                3
            );
        }
        // The device's statistics: 2 ordinary batches and 4 re-sends applied
        // (the replay and the refused batches are not counted), of 2 rows each.
        assert_eq!(
            text("SELECT format('%s batches, %s rows', batches, rows) FROM sluice.devices WHERE device_id = 'dev-a'"),
            "6 batches, 12 rows"
        );
    }

    #[pg_test]
    fn a_resend_never_changes_a_row_under_insert_only() {
        setup_gear("gear_io", "insert_only");
        let rows = gear_batch("gear_io", &[(1, 1, "drill", 7), (2, 2, "saw", 7)]);
        assert_eq!(ingest(&as_resend(&rows, 1)), (0, 0, 2, false));
        assert_eq!(gear("gear_io"), "1=drill/NULL@1 2=saw/NULL@2");
        // A new row in the range is inserted, as by any batch.
        let more = as_resend(&gear_batch("gear_io", &[(3, 3, "plane", 7)]), 2);
        assert_eq!(ingest(&more), (1, 0, 0, false));
        assert_eq!(gear("gear_io"), "1=drill/NULL@1 2=saw/NULL@2 3=plane/7@3");
    }

    #[pg_test]
    fn a_resent_row_older_than_the_clouds_does_not_win() {
        setup_gear("gear_new", "last_writer_wins");
        // Row 1 was updated since (version 5), in the cloud, by this device
        // and by another.
        let newer = gear_batch("gear_new", &[(5, 1, "drill v2", 1)]);
        assert_eq!(ingest(&newer), (0, 1, 0, false));
        let other = make_batch(
            "dev-b",
            "gear_new",
            vec![
                Column::new("id", ColumnType::Integer),
                Column::new("label", ColumnType::Text),
            ],
            vec![(9, vec![Value::Integer(2), Value::Text("saw of b".into())])],
        );
        assert_eq!(ingest(&other), (0, 1, 0, false));
        let before = gear("gear_new");
        assert_eq!(before, "1=drill v2/1@5 2=saw of b/NULL@9");
        // A re-send of the old versions: the policy keeps the newer rows, and
        // no fork is found in the rows it skipped.
        let resent = as_resend(
            &gear_batch("gear_new", &[(1, 1, "drill", 7), (2, 2, "saw", 7)]),
            1,
        );
        assert_eq!(ingest(&resent), (0, 0, 2, false));
        assert_eq!(gear("gear_new"), before);
    }

    #[pg_test]
    fn a_resend_updates_append_only_rows_in_place_under_their_stream() {
        setup_counts();
        const S1: u64 = 11;
        assert_eq!(
            ingest(&counts_batch(S1, None, &[(1, 10), (2, 20)], None)),
            (2, 0, 0, false)
        );
        // The same rows with other content (fixed at the edge since): no
        // second row, the stream's rows are updated in place.
        let resent = as_resend(&counts_batch(S1, None, &[(1, 11), (2, 20)], None), 1);
        assert_eq!(ingest(&resent), (0, 1, 1, false));
        assert_eq!(counts(), "11:1=11 11:2=20");
        assert_eq!(count("SELECT count(*) FROM public.counts"), 2);
    }

    #[pg_test]
    fn a_resend_cannot_touch_another_tenants_row() {
        setup_tenants();
        let ingest_q = "SELECT * FROM sluice.ingest($1)";
        let a = site_batch("box-a", &[(1, "A", 1, "IDLE")]);
        assert_eq!(try_as("dev_a", ingest_q, Some(&a)), "ok");
        let b = site_batch("box-b", &[(1, "B", 1, "IDLE")]);
        assert_eq!(try_as("dev_b", ingest_q, Some(&b)), "ok");
        // A re-send carrying tenant B's row (its pair is (1, box-b): a batch
        // of box-b would be needed to meet it) is refused whole, as an
        // ordinary batch.
        let mixed = as_resend(
            &site_batch("box-a", &[(1, "A", 1, "FIXED"), (1, "B", 1, "STOLEN")]),
            1,
        );
        let r = try_as("dev_a", ingest_q, Some(&mixed));
        assert!(
            r.starts_with("42501: sluice.ingest: batch box-a/sites/0000123456789abc (0, 1] re-send 1, row 2: tenant column 'location_id' is 'B', but role \"dev_a\" may only write tenant 'A'"),
            "{r}"
        );
        // Nor can a role bound to a device re-send another device's rows.
        let forged = as_resend(&site_batch("box-a", &[(1, "B", 1, "STOLEN")]), 1);
        assert!(
            try_as("dev_b", ingest_q, Some(&forged))
                .starts_with("42501: sluice.ingest: batch box-a/sites/0000123456789abc (0, 1] re-send 1: role \"dev_b\" may send batches of device 'box-b' only"),
            "{}",
            try_as("dev_b", ingest_q, Some(&forged))
        );
        assert_eq!(sites(), "A/1/IDLE/box-a;B/1/IDLE/box-b");
        // The tenant's own re-send applies.
        let own = as_resend(&site_batch("box-a", &[(1, "A", 1, "FIXED")]), 1);
        assert_eq!(try_as("dev_a", ingest_q, Some(&own)), "ok");
        assert_eq!(sites(), "A/1/FIXED/box-a;B/1/IDLE/box-b");
        assert_eq!(count("SELECT count(*) FROM sluice.batches"), 3);
    }

    #[pg_test]
    fn the_high_water_leaves_resends_out_and_odd_numbers_are_refused() {
        setup_gear("gear_hw", "last_writer_wins");
        let later = gear_batch(
            "gear_hw",
            &[(3, 3, "plane", 7), (4, 4, "file", 7), (5, 5, "rasp", 7)],
        );
        assert_eq!(ingest(&later), (3, 0, 0, false));
        // A re-send request's batch that a row limit cut at row 4: its
        // range (3, 4] starts above the last ordinary batch's base (2).
        let high = as_resend(&gear_batch("gear_hw", &[(4, 4, "file", 8)]), 1);
        assert_eq!(ingest(&high), (0, 1, 0, false));
        assert_eq!(
            text("SELECT string_agg(edge_table || '=' || last_seq, ',') FROM sluice.stream_high_water('dev-a', 20015998343868)"),
            "gear_hw=5"
        );
        // A re-send number the ledger's integer cannot hold is refused, not
        // wrapped into another identity.
        let odd = as_resend(&later, u32::MAX);
        let r = try_ingest(&odd);
        assert_eq!(
            r,
            format!(
                "22003: sluice.ingest: batch dev-a/gear_hw/{:016x} (2, 5] re-send 4294967295: the batch's re-send number 4294967295 is out of range (at most 2147483647)",
                0x1234_5678_9abc_u64
            )
        );
        assert_eq!(ledger_batches(), 3);
    }
}
