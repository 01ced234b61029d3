use super::*;

fn col(name: &str, ty: &str, not_null: bool) -> TableColumn {
    TableColumn {
        name: name.into(),
        type_sql: ty.into(),
        not_null,
        comparable: ty != "json",
    }
}

fn table() -> Vec<TableColumn> {
    vec![
        col("location_id", "text", true),
        col("camera", "text", true),
        col("settings", "jsonb", false),
        col("raw", "json", false),
        col("device", "text", false),
        col("sluice_device", "text", false),
        col("sluice_version", "bigint", false),
    ]
}

fn check(args: &PublishArgs) -> Result<Publication, PublishError> {
    let pk = vec!["location_id".to_string(), "camera".to_string()];
    Publication::check(
        "public.cameras",
        "\"public\".\"cameras\"",
        "cameras",
        &table(),
        &pk,
        &[pk.clone(), vec!["camera".into()]],
        args,
    )
}

#[test]
fn wire_kinds_follow_the_postgres_type() {
    assert_eq!(WireKind::of("bigint"), WireKind::Integer);
    assert_eq!(WireKind::of("smallint"), WireKind::Integer);
    assert_eq!(WireKind::of("boolean"), WireKind::Boolean);
    assert_eq!(WireKind::of("double precision"), WireKind::Real);
    assert_eq!(WireKind::of("bytea"), WireKind::Blob);
    assert_eq!(
        WireKind::of("timestamp with time zone"),
        WireKind::Timestamptz
    );
    for t in [
        "numeric",
        "text",
        "uuid",
        "date",
        "jsonb",
        "vector",
        "integer[]",
        "timestamp without time zone",
    ] {
        assert_eq!(WireKind::of(t), WireKind::Text, "{t}");
    }
    assert_eq!(WireKind::Boolean.column_type(), ColumnType::Integer);
    assert_eq!(WireKind::Timestamptz.column_type(), ColumnType::Text);
    assert_eq!(
        WireKind::Boolean.select_sql("t.\"on\""),
        "(t.\"on\")::integer::bigint"
    );
    assert!(WireKind::Timestamptz
        .select_sql("t.at")
        .contains("'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'"));
}

#[test]
fn literals_are_quoted_for_either_string_setting() {
    assert_eq!(quote_literal("cams"), "'cams'");
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
}

#[test]
fn defaults_publish_every_column_but_the_bookkeeping_keyed_by_the_primary_key() {
    let p = check(&PublishArgs::default()).unwrap();
    assert_eq!(p.edge_table, "cameras");
    assert_eq!(
        p.column_names(),
        ["location_id", "camera", "settings", "raw", "device"]
    );
    assert_eq!(p.key_names(), ["location_id", "camera"]);
    assert_eq!(p.columns[2].kind, WireKind::Text);
    assert_eq!((p.tenant, p.device), (None, None));
}

#[test]
fn refusals_name_the_problem() {
    let e = check(&PublishArgs {
        columns: Some(vec!["camera".into(), "nope".into()]),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::UndefinedColumn);
    assert!(e.message.contains("\"nope\""), "{}", e.message);

    let e = check(&PublishArgs {
        key_columns: Some(vec!["settings".into()]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.message.contains("NOT NULL"), "{}", e.message);

    let e = check(&PublishArgs {
        key_columns: Some(vec!["location_id".into()]),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::InvalidColumnReference);

    // The other unique key is fine, in any order of the index's columns.
    let p = check(&PublishArgs {
        key_columns: Some(vec!["camera".into()]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.key, vec![1]);

    let e = check(&PublishArgs {
        tenant_column: Some("site".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::UndefinedColumn);
    let e = check(&PublishArgs {
        columns: Some(vec!["location_id".into(), "camera".into()]),
        device_column: Some("device".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::InvalidParameterValue);
    assert!(
        e.message.contains("not among the published"),
        "{}",
        e.message
    );
    let e = check(&PublishArgs {
        columns: Some(vec!["camera".into(), "location_id".into(), "camera".into()]),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::DuplicateColumn);
    let e = check(&PublishArgs {
        columns: Some(vec![
            "camera".into(),
            "location_id".into(),
            "sluice_version".into(),
        ]),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::InvalidParameterValue);
    let e = check(&PublishArgs {
        edge_table: Some(String::new()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.sqlstate, SqlState::InvalidParameterValue);
}

#[test]
fn hostile_names_are_quoted_everywhere() {
    let evil = "a\"; DROP TABLE x; --";
    let t = vec![
        col(evil, "text", true),
        col("v", "integer", false),
        col("x$sluice$", "text", false),
    ];
    let p = Publication::check(
        "public.t",
        "\"public\".\"t\"",
        "t",
        &t,
        &[evil.to_string()],
        &[vec![evil.to_string()]],
        &PublishArgs {
            edge_table: Some("it's $sluice$".into()),
            tenant_column: Some("v".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let q = quote_ident(evil);
    for sql in [
        p.capture_function_sql("sluice.f"),
        p.changes_sql(),
        p.snapshot_sql(true),
    ] {
        assert!(sql.contains(&q), "{sql}");
        assert!(!sql.replace(&q, "").contains("DROP TABLE"), "{sql}");
    }
    let triggers = p.create_triggers_sql("sluice.f").join("\n");
    assert!(triggers.contains("('it''s $sluice$')"), "{triggers}");
    // The edge table is a trigger argument, never in the function body.
    let f = p.capture_function_sql("sluice.f");
    assert!(!f.contains("it''s"));
    // The body's dollar quote is one no column name contains.
    assert!(
        f.contains("AS $sluice1$\n") && f.ends_with("$sluice1$"),
        "{f}"
    );
    assert_eq!(f.matches("$sluice1$").count(), 2);
}

#[test]
fn the_pull_statements_keep_to_the_scope() {
    let p = check(&PublishArgs {
        tenant_column: Some("location_id".into()),
        device_column: Some("device".into()),
        ..Default::default()
    })
    .unwrap();
    assert!(p
        .cut_sql()
        .contains("c.tenant = $5 AND (c.device = $6 OR c.device IS NULL)"));
    assert!(
        p.last_before_sql().contains("SELECT max(c.position)")
            && p.last_before_sql().contains("c.tenant = $4")
    );
    assert!(p
        .more_sql()
        .contains("c.tenant = $4 AND (c.device = $5 OR c.device IS NULL)"));
    let changes = p.changes_sql();
    assert!(
        changes.contains("t.\"location_id\"::text = $4"),
        "{changes}"
    );
    assert!(
        changes.contains("(t.\"device\"::text = $5 OR t.\"device\" IS NULL)"),
        "{changes}"
    );
    assert!(
        changes.contains("t.\"camera\" = (k.key[2])::text"),
        "{changes}"
    );
    let snap = p.snapshot_sql(true);
    assert!(
        snap.contains("(t.\"location_id\", t.\"camera\") > (($3)::text, ($4)::text)"),
        "{snap}"
    );
    assert!(
        snap.ends_with("ORDER BY t.\"location_id\", t.\"camera\" LIMIT $5"),
        "{snap}"
    );
    assert!(p.snapshot_sql(false).ends_with("LIMIT $3"));

    let global = check(&PublishArgs::default()).unwrap();
    assert!(global.cut_sql().contains("c.tenant IS NULL"));
    assert!(!global.changes_sql().contains("$4"));
}

#[test]
fn an_update_writes_entries_for_changed_published_values_and_for_old_scopes() {
    let p = check(&PublishArgs {
        tenant_column: Some("location_id".into()),
        device_column: Some("device".into()),
        ..Default::default()
    })
    .unwrap();
    let f = p.capture_function_sql("sluice.\"_capture_1\"");
    assert!(f.contains("SECURITY DEFINER"));
    assert!(f.contains("WHERE o.\"location_id\" = n.\"location_id\" AND o.\"camera\" = n.\"camera\" AND o.\"settings\" IS NOT DISTINCT FROM n.\"settings\" AND o.\"raw\"::text IS NOT DISTINCT FROM n.\"raw\"::text AND o.\"device\" IS NOT DISTINCT FROM n.\"device\")"), "{f}");
    assert!(
        f.contains("o.\"device\" IS NOT DISTINCT FROM n.\"device\""),
        "{f}"
    );
    assert!(f.contains("pg_catalog.pg_notify('sluice_changes', TG_ARGV[0])"));
    assert!(!f.contains("sluice_version"));
}

#[test]
fn cursors_round_trip_and_refuse_anything_else() {
    let c = Cursor {
        stream_id: -42,
        checkpoint: 7_000_123,
        page: 3,
        after: vec!["lyon".into(), "cam:1 é".into()],
    };
    let text = c.encode();
    assert_eq!(Cursor::decode(&text, 2).unwrap(), c);
    assert!(Cursor::decode(&text, 1).is_err());
    for bad in [
        "",
        "s2:1:1:1:61",
        "s1:x:1:1:61",
        "s1:1:1:0:61",
        "s1:1:0:1:61",
        "s1:1:1:1:6",
        "s1:1:1:1:zz",
        "s1:1:1:1:ff",
    ] {
        assert!(Cursor::decode(bad, 1).is_err(), "{bad}");
    }
}

#[test]
fn modes_of_a_pull() {
    use PullMode::*;
    use SnapshotReason::*;
    assert_eq!(pull_mode(0, 5, 5, 0, 100), Snapshot(First));
    assert_eq!(pull_mode(10, 4, 5, 0, 100), Snapshot(Stream));
    assert_eq!(pull_mode(10, 5, 5, 11, 100), Snapshot(Purged));
    assert_eq!(pull_mode(11, 5, 5, 11, 100), Incremental);
    assert_eq!(pull_mode(100, 5, 5, 0, 100), Snapshot(Ahead));
    assert_eq!(pull_mode(99, 5, 5, 0, 100), Incremental);
}

#[test]
fn only_this_databases_transactions_hold_the_bound_back() {
    assert_eq!(serve_below(100, &[], &[], None), 100);
    assert_eq!(serve_below(100, &[90, 95], &[], None), 90);
    // 90 runs in another database: only 95 holds back.
    assert_eq!(serve_below(100, &[90, 95], &[90], None), 95);
    // Matched by the low 32 bits of the 64-bit id.
    let x = (7_i64 << 32) + 90;
    assert_eq!(serve_below(x + 10, &[x], &[90], None), x + 10);
    // Our own transaction, if it has an id, is in progress.
    assert_eq!(serve_below(100, &[90], &[90], Some(97)), 97);
}
