//! `#[pg_test]`s of the cloud-to-edge direction inside one backend:
//! `sluice.publish`'s checks, the change entries its capture trigger
//! writes, the ownership rule of `sluice.ingest` for a published target, and
//! what a pull inside the writing transaction serves (nothing: its own
//! position is not below its snapshot's bound). The pulls of committed
//! transactions, scope, snapshots, purge and the out-of-order commit need
//! sessions of their own: `tests/e2e/pull.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use sluice_wire::{
        encode, BatchHeader, Changes, Column, ColumnType, EncodeOptions, Pulled, Value,
    };

    fn setup() {
        Spi::run(
            "CREATE TABLE public.configs (
                 location_id text NOT NULL, camera_id text NOT NULL, settings jsonb,
                 device text, status text, applied_at timestamptz, note text UNIQUE,
                 PRIMARY KEY (location_id, camera_id));
             CREATE FUNCTION public.try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        )
        .unwrap();
    }

    fn try_sql(q: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT public.try_sql($1)", &[q.into()])
            .unwrap()
            .unwrap()
    }

    fn text(q: &str) -> String {
        Spi::get_one::<String>(q)
            .unwrap()
            .unwrap_or_else(|| "NULL".into())
    }

    #[pg_test]
    fn publish_refuses_what_it_cannot_serve_and_names_it() {
        setup();
        let cases = [
            ("SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id', 'nope'])",
             "42703: sluice.publish: column \"nope\" does not exist in public.configs"),
            ("SELECT sluice.publish('public.configs', key_columns => ARRAY['location_id'])",
             "42P10: sluice.publish: (\"location_id\") is not a unique key of public.configs: no unique index covers exactly these columns"),
            ("SELECT sluice.publish('public.configs', key_columns => ARRAY['note'])",
             "22023: sluice.publish: key column \"note\" may be NULL; a published key must be NOT NULL"),
            ("SELECT sluice.publish('public.configs', tenant_column => 'site')",
             "42703: sluice.publish: tenant column \"site\" does not exist in public.configs"),
            ("SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id'], device_column => 'device')",
             "22023: sluice.publish: device column \"device\" is not among the published columns"),
            ("SELECT sluice.publish('public.configs', columns => ARRAY['camera_id', 'settings'])",
             "22023: sluice.publish: key column \"location_id\" is not among the published columns"),
            ("SELECT sluice.publish('public.configs', columns => ARRAY[]::text[])",
             "22023: sluice.publish: columns is empty; name the published columns or pass NULL for all of them"),
            ("SELECT sluice.publish(NULL)", "22004: sluice.publish: target must not be NULL"),
        ];
        for (q, want) in cases {
            assert_eq!(try_sql(q), want, "{q}");
        }
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM sluice.publications").unwrap(),
            Some(0)
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.configs'::regclass"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn hostile_identifiers_are_quoted() {
        Spi::run(
            r#"CREATE TABLE public."we""ird; x" ("k'ey" text PRIMARY KEY, "v$sluice$" int, "ten""ant" text);"#,
        )
        .unwrap();
        Spi::run(
            r#"SELECT sluice.publish('public."we""ird; x"', edge_table => 'it''s $sluice$ \', tenant_column => 'ten"ant')"#,
        )
        .unwrap();
        Spi::run(r#"INSERT INTO public."we""ird; x" VALUES ('a''b', 1, 'lyon')"#).unwrap();
        assert_eq!(
            text("SELECT edge_table || '|' || tenant || '|' || key::text FROM sluice.changes"),
            r#"it's $sluice$ \|lyon|{a'b}"#
        );
        assert_eq!(
            text("SELECT sluice.unpublish('it''s $sluice$ \\')::text"),
            "true"
        );
        assert_eq!(
            Spi::get_one::<i64>(
                r#"SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public."we""ird; x"'::regclass"#
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn the_trigger_writes_one_entry_per_row_image_in_scope() {
        setup();
        Spi::run(
            "SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id', 'settings', 'device'],
                 tenant_column => 'location_id', device_column => 'device');
             INSERT INTO public.configs (location_id, camera_id, device) VALUES ('lyon', 'c1', NULL), ('lyon', 'c2', 'b2');
             UPDATE public.configs SET status = 'applied';
             UPDATE public.configs SET settings = '{}' WHERE camera_id = 'c1';
             UPDATE public.configs SET location_id = 'paris' WHERE camera_id = 'c2';
             UPDATE public.configs SET camera_id = 'c9' WHERE camera_id = 'c1';
             DELETE FROM public.configs WHERE camera_id = 'c9';",
        )
        .unwrap();
        assert_eq!(
            text("SELECT string_agg(coalesce(tenant, '-') || '/' || coalesce(device, '*') || ':' || array_to_string(key, '.'), ' ' ORDER BY ctid) FROM sluice.changes"),
            // insert c1, c2; the edge-owned update: nothing; settings of
            // c1; c2 to paris (and its old scope); the key change (new and
            // old key); the delete.
            "lyon/*:lyon.c1 lyon/b2:lyon.c2 lyon/*:lyon.c1 paris/b2:paris.c2 lyon/b2:lyon.c2 lyon/*:lyon.c9 lyon/*:lyon.c1 lyon/*:lyon.c9"
        );
        // One position per transaction: the test's own.
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(DISTINCT position) FROM sluice.changes").unwrap(),
            Some(1)
        );
        assert_eq!(
            try_sql("TRUNCATE public.configs")
                .split(':')
                .next()
                .unwrap(),
            "0A000"
        );
    }

    #[pg_test]
    fn a_pull_never_serves_its_own_transactions_changes() {
        setup();
        Spi::run(
            "SELECT sluice.publish('public.configs', tenant_column => 'location_id');
             INSERT INTO public.configs (location_id, camera_id) VALUES ('lyon', 'c1');",
        )
        .unwrap();
        let stream = Spi::get_one::<i64>("SELECT stream_id FROM sluice.publications")
            .unwrap()
            .unwrap();
        let own = Spi::get_one::<i64>("SELECT pg_current_xact_id()::text::bigint")
            .unwrap()
            .unwrap();
        // A snapshot: the row is visible to this transaction, but its
        // checkpoint stays below the transaction's own position.
        let (cp, rows) = Spi::get_two_with_args::<i64, i32>(
            "SELECT checkpoint, rows FROM sluice.pull('configs', 'box-1', 0, 0, 10, NULL, 'lyon')",
            &[],
        )
        .unwrap();
        assert!(cp.unwrap() < own);
        assert_eq!(rows, Some(1));
        // Incremental from there: nothing, the checkpoint does not move.
        let (batch, cp2) = Spi::get_two_with_args::<Vec<u8>, i64>(
            "SELECT batch, checkpoint FROM sluice.pull('configs', 'box-1', $1, $2, 10, NULL, 'lyon')",
            &[cp.into(), stream.into()],
        )
        .unwrap();
        assert!(batch.is_none());
        assert_eq!(cp2, cp);
        assert_eq!(
            text("SELECT checkpoint || '/' || snapshots FROM sluice.subscriptions WHERE device_id = 'box-1'"),
            format!("{}/1", cp.unwrap())
        );
    }

    fn config_batch(flags_changes: bool, rows: &[(i64, &str, &str, &str)]) -> Vec<u8> {
        config_batch_pulled(flags_changes, None, rows)
    }

    fn config_batch_pulled(
        flags_changes: bool,
        pulled: Option<Pulled>,
        rows: &[(i64, &str, &str, &str)],
    ) -> Vec<u8> {
        let columns = vec![
            Column::new("location_id", ColumnType::Text),
            Column::new("camera_id", ColumnType::Text),
            Column::new("settings", ColumnType::Text),
            Column::new("status", ColumnType::Text),
        ];
        let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let mut by_col = vec![Vec::new(); 4];
        for &(_, cam, settings, status) in rows {
            by_col[0].push(Value::Text("lyon".into()));
            by_col[1].push(Value::Text(cam.into()));
            by_col[2].push(Value::Text(settings.into()));
            by_col[3].push(Value::Text(status.into()));
        }
        let header = BatchHeader {
            pulled,
            device_id: "box-1".into(),
            stream_id: 77,
            table: "configs".into(),
            base_seq: versions.iter().min().unwrap() - 1,
            last_seq: *versions.iter().max().unwrap(),
            row_count: 0,
            sent_at_ms: 1_700_000_000_000,
            columns,
            fingerprint: 0,
            digest: None,
            origin: sluice_wire::Origin::default(),
            resend: 0,
            changes: flags_changes.then_some(Changes {
                snapshot_page: 0,
                last_page: true,
            }),
        };
        encode(&header, &versions, &by_col, EncodeOptions::default()).unwrap()
    }

    #[pg_test]
    fn ingest_never_overwrites_the_clouds_columns_of_a_published_table() {
        setup();
        Spi::run(
            "SELECT sluice.register_table('configs', 'public.configs', ARRAY['location_id', 'camera_id']);
             SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id', 'settings'],
                 tenant_column => 'location_id');
             INSERT INTO public.configs (location_id, camera_id, settings, status)
                 VALUES ('lyon', 'c1', '{\"fps\": 12}', 'pending');",
        )
        .unwrap();
        let entries = Spi::get_one::<i64>("SELECT count(*) FROM sluice.changes").unwrap();
        // The edge reports its status, with its (older) copy of settings.
        let b = config_batch(
            false,
            &[
                (1, "c1", "{\"fps\": 10}", "success"),
                (2, "c2", "{\"new\": 1}", "pending"),
            ],
        );
        Spi::run_with_args("SELECT sluice.ingest($1)", &[b.into()]).unwrap();
        assert_eq!(
            text("SELECT string_agg(camera_id || ' ' || settings::text || ' ' || status, ', ' ORDER BY camera_id) FROM public.configs"),
            "c1 {\"fps\": 12} success, c2 {\"new\": 1} pending",
            "the cloud's settings kept, the edge's status taken; a new row with every column"
        );
        // The status update captured nothing; the new row is a change.
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM sluice.changes").unwrap(),
            entries.map(|n| n + 1)
        );
        // A batch of cloud changes is never ingested.
        let down = config_batch(true, &[(3, "c1", "{}", "x")]);
        let e = Spi::get_one_with_args::<String>(
            "SELECT public.try_sql(format('SELECT sluice.ingest(%L::bytea)', $1::text))",
            &[down.into()],
        )
        .unwrap()
        .unwrap();
        assert!(
            e.starts_with("22P03: sluice.ingest: batch box-1/configs/"),
            "{e}"
        );
        assert!(
            e.contains("a batch of cloud changes (flag bit 4) cannot be ingested"),
            "{e}"
        );
    }

    /// The cloud deletes a configuration while the box holds a status of it
    /// that it has not sent: the box's status report must not insert the
    /// row again (the delete wins; the box removes the row when it pulls the
    /// tombstone). A row the box wrote after it had applied the delete is
    /// new, and inserted; so is a row of a box that does not say what it
    /// pulled (a table that is not subscribed), as before.
    #[pg_test]
    fn a_status_report_of_a_row_the_cloud_deleted_unseen_does_not_bring_it_back() {
        setup();
        Spi::run(
            "SELECT sluice.register_table('configs', 'public.configs', ARRAY['location_id', 'camera_id']);
             SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id', 'settings'],
                 tenant_column => 'location_id');
             INSERT INTO public.configs (location_id, camera_id, settings, status) VALUES
                 ('lyon', 'c1', '{}', 'pending'), ('lyon', 'c2', '{}', 'pending'),
                 ('lyon', 'c3', '{}', 'pending'), ('lyon', 'c4', '{}', 'pending');
             DELETE FROM public.configs WHERE camera_id IN ('c1', 'c2', 'c4');",
        )
        .unwrap();
        // Every change of this test has the position of its one transaction.
        let position = Spi::get_one::<i64>("SELECT max(position) FROM sluice.changes")
            .unwrap()
            .unwrap();
        let stream = Spi::get_one::<i64>("SELECT stream_id FROM sluice.publications")
            .unwrap()
            .unwrap() as u64;
        let ingest =
            |b: Vec<u8>| Spi::run_with_args("SELECT sluice.ingest($1)", &[b.into()]).unwrap();
        let rows = || {
            text("SELECT string_agg(camera_id || ' ' || status, ', ' ORDER BY camera_id) FROM public.configs")
        };
        // Cut before the box had pulled the deletes: c1 stays deleted; c3
        // (still there) takes the status; c9 (never in the cloud) is new.
        let before = Some(Pulled {
            stream_id: stream,
            checkpoint: position - 1,
        });
        ingest(config_batch_pulled(
            false,
            before,
            &[
                (1, "c1", "{}", "success"),
                (2, "c3", "{}", "success"),
                (3, "c9", "{}", "pending"),
            ],
        ));
        assert_eq!(rows(), "c3 success, c9 pending");
        // Cut after it had applied them: c2 is a row the box made again.
        let after = Some(Pulled {
            stream_id: stream,
            checkpoint: position,
        });
        ingest(config_batch_pulled(
            false,
            after,
            &[(4, "c2", "{}", "failed")],
        ));
        assert_eq!(rows(), "c2 failed, c3 success, c9 pending");
        // A checkpoint of another stream of the table is no checkpoint.
        let other = Some(Pulled {
            stream_id: stream ^ 1,
            checkpoint: position,
        });
        ingest(config_batch_pulled(
            false,
            other,
            &[(5, "c4", "{}", "success")],
        ));
        assert_eq!(rows(), "c2 failed, c3 success, c9 pending");
        // A batch that does not say what its edge pulled: as before.
        ingest(config_batch(false, &[(6, "c1", "{}", "success")]));
        assert_eq!(rows(), "c1 success, c2 failed, c3 success, c9 pending");
    }

    /// A batch cut again with other boundaries carries a row the cloud has
    /// (same version and device) with the edge's older copy of a column the
    /// cloud changed since: not a fork (no 55000), and the cloud's value stays.
    #[pg_test]
    fn a_cloud_owned_column_changed_since_is_no_evidence_of_a_fork() {
        setup();
        Spi::run(
            "SELECT sluice.register_table('configs', 'public.configs', ARRAY['location_id', 'camera_id']);
             SELECT sluice.publish('public.configs', columns => ARRAY['location_id', 'camera_id', 'settings'],
                 tenant_column => 'location_id');",
        )
        .unwrap();
        let first = config_batch(false, &[(1, "c1", "{\"fps\": 10}", "success")]);
        Spi::run_with_args("SELECT sluice.ingest($1)", &[first.into()]).unwrap();
        Spi::run("UPDATE public.configs SET settings = '{\"fps\": 30}'").unwrap();
        // (0, 2]: the same row 1 and a new row 2.
        let again = config_batch(
            false,
            &[
                (1, "c1", "{\"fps\": 10}", "success"),
                (2, "c2", "{}", "pending"),
            ],
        );
        let r = Spi::get_one_with_args::<String>(
            "SELECT public.try_sql(format('SELECT sluice.ingest(%L::bytea)', $1::text))",
            &[again.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(r, "ok");
        assert_eq!(
            text("SELECT string_agg(camera_id || ' ' || settings::text || ' ' || status, ', ' ORDER BY camera_id) FROM public.configs"),
            "c1 {\"fps\": 30} success, c2 {} pending"
        );
    }

    /// `sluice.device_streams` and `sluice.pull` run the same statement
    /// text with other parameter types (a table name, an OID): the plan of
    /// one was taken for the other, and the pull read an OID as text (the
    /// backend crashed, found by the agent's down tests).
    #[pg_test]
    fn one_statement_text_with_other_parameter_types_is_another_plan() {
        setup();
        Spi::run("SELECT sluice.publish('public.configs', tenant_column => 'location_id')")
            .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM sluice.device_streams('box-1')").unwrap(),
            Some(0)
        );
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT rows FROM sluice.pull('configs', 'box-1', 0, 0, 10, NULL, 'lyon')"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn publishing_again_changes_the_settings_and_the_stream_only_when_needed() {
        setup();
        Spi::run("SELECT sluice.publish('public.configs', tenant_column => 'location_id')")
            .unwrap();
        let s1 = Spi::get_one::<i64>("SELECT stream_id FROM sluice.publications").unwrap();
        Spi::run("SELECT sluice.publish('public.configs', tenant_column => 'location_id', horizon => '1 day')").unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT stream_id FROM sluice.publications").unwrap(),
            s1
        );
        assert_eq!(
            text("SELECT horizon::text FROM sluice.publications"),
            "1 day"
        );
        Spi::run("SELECT sluice.publish('public.configs', tenant_column => 'location_id', device_column => 'device')").unwrap();
        assert_ne!(
            Spi::get_one::<i64>("SELECT stream_id FROM sluice.publications").unwrap(),
            s1
        );
        assert_eq!(
            try_sql("SELECT sluice.publish('public.configs', 'other')"),
            "22023: sluice.publish: public.configs is already published as edge table 'configs'; unpublish it first"
        );
        assert_eq!(text("SELECT sluice.unpublish('configs')::text"), "true");
        assert_eq!(text("SELECT sluice.unpublish('configs')::text"), "false");
    }
}
