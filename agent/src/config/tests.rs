//! The configuration: defaults, validation, and that the example file and
//! the docs hold exactly the defaults.

use super::*;

const MINIMAL: &str = r#"
    [device]
    id = "box-1"
    [edge]
    database = "edge.db"
    [cloud]
    url = "postgres://device@127.0.0.1:5432/cloud"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let cfg = Config::parse(MINIMAL).unwrap();
    assert_eq!(cfg.sync.batch_rows, DEFAULT_BATCH_ROWS);
    assert_eq!(cfg.sync.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(cfg.edge.busy_timeout_ms, DEFAULT_BUSY_TIMEOUT_MS);
    assert_eq!(cfg.sync.order, DrainOrder::Oldest);
    assert_eq!(cfg.sync.hourly_window_secs, DEFAULT_HOURLY_WINDOW_SECS);
}

#[test]
fn a_device_id_with_a_control_character_is_refused() {
    // The rule of sluice_wire::check_device_id, which the extensions use too.
    let err = format!(
        "{:#}",
        Config::parse(&MINIMAL.replace("box-1", "box\\u0007-1")).unwrap_err()
    );
    assert!(
        err.contains("device.id") && err.contains("control characters"),
        "{err}"
    );
    let long = "x".repeat(sluice_wire::MAX_DEVICE_ID_CHARS + 1);
    let err = format!(
        "{:#}",
        Config::parse(&MINIMAL.replace("box-1", &long)).unwrap_err()
    );
    assert!(err.contains("device.id"), "{err}");
    let longest = "x".repeat(sluice_wire::MAX_DEVICE_ID_CHARS);
    assert!(Config::parse(&MINIMAL.replace("box-1", &longest)).is_ok());
}

#[test]
fn drain_order_is_oldest_or_newest() {
    let cfg = Config::parse(&format!("{MINIMAL}\n[sync]\norder = \"newest\"")).unwrap();
    assert_eq!(cfg.sync.order, DrainOrder::Newest);
    let err = format!(
        "{:#}",
        Config::parse(&format!("{MINIMAL}\n[sync]\norder = \"sideways\"")).unwrap_err()
    );
    assert!(err.contains("order") && err.contains("sideways"), "{err}");
}

#[test]
fn a_password_in_the_url_is_refused() {
    for url in [
        "postgres://device:secret@host/db",
        "postgresql://device:secret@host:5432/db?sslmode=require",
        "postgres://device@host/db?password=secret",
        "host=h user=u password=secret",
    ] {
        let text = MINIMAL.replace("postgres://device@127.0.0.1:5432/cloud", url);
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("must not contain a password"), "{url}: {err}");
        assert!(
            !err.contains("secret"),
            "the error must not echo the secret"
        );
    }
}

#[test]
fn unknown_fields_and_bad_values_name_the_field() {
    let err = format!(
        "{:#}",
        Config::parse(&format!("{MINIMAL}\n[sync]\nbatch_rowz = 5")).unwrap_err()
    );
    assert!(err.contains("batch_rowz"), "{err}");
    let err = Config::parse(&format!("{MINIMAL}\n[sync]\nbatch_rows = 0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sync.batch_rows"), "{err}");
    let err = Config::parse(&MINIMAL.replace("box-1", ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("device.id"), "{err}");
}

#[test]
fn schedule_defaults_and_errors() {
    let cfg = Config::parse(MINIMAL).unwrap();
    assert_eq!(cfg.schedule.entries().unwrap().len(), 6);
    let err = Config::parse(&format!("{MINIMAL}\n[schedule]\nsync = \"hourly\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("schedule.sync"), "{err}");
    let cfg = Config::parse(&format!("{MINIMAL}\n[schedule]\nembed = \"off\"")).unwrap();
    assert_eq!(cfg.schedule.entries().unwrap().len(), 5);
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/sluice.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::parse(&text).unwrap();
    assert_eq!(cfg.sync.batch_rows, DEFAULT_BATCH_ROWS);
    assert_eq!(cfg.schedule.full_sync, DEFAULT_FULL_SYNC_CRON);
    assert_eq!(cfg.cleanup.keep, DEFAULT_CLEANUP_KEEP);
    assert_eq!(cfg.sync.hourly_window_secs, DEFAULT_HOURLY_WINDOW_SECS);
    assert_eq!(cfg.sync.order, DrainOrder::Oldest);
    // Every value the example writes out is the default it stands for:
    // the defaults are written once, in this file.
    let d = Config::parse(MINIMAL).unwrap();
    assert_eq!(format!("{:?}", cfg.schedule), format!("{:?}", d.schedule));
    assert_eq!(cfg.cleanup.keep, d.cleanup.keep);
    let sync_fields = |s: &SyncConfig| {
        (
            s.batch_rows,
            s.max_attempts,
            s.backoff_initial_ms,
            s.backoff_max_ms,
            s.bandwidth_bytes_per_sec,
            s.max_run_secs,
            s.concurrency,
            s.order,
            s.hourly_window_secs,
        )
    };
    assert_eq!(sync_fields(&cfg.sync), sync_fields(&d.sync));
    assert_eq!(cfg.edge.busy_timeout_ms, d.edge.busy_timeout_ms);
    assert_eq!(cfg.cloud.connect_timeout_secs, d.cloud.connect_timeout_secs);
    assert_eq!(cfg.cloud.tls, d.cloud.tls);
    assert_eq!(cfg.device.time_zone, d.device.time_zone);
    assert_eq!(format!("{:?}", cfg.pull), format!("{:?}", d.pull));
}

#[test]
fn the_schedule_table_of_docs_agent_md_quotes_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let d = ScheduleConfig::default();
    for (job, cron) in [
        ("rollup", &d.rollup),
        ("embed", &d.embed),
        ("sync", &d.sync),
        ("full_sync", &d.full_sync),
        ("cleanup", &d.cleanup),
        ("budget", &d.budget),
    ] {
        let row = format!("| `{job}` | `{cron}` |");
        assert!(doc.contains(&row), "docs/agent.md has no row {row}");
    }
}

#[test]
fn relative_paths_follow_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let cfg = Config::load(&path).unwrap();
    assert_eq!(cfg.edge.database, dir.path().join("edge.db"));
}

#[test]
fn the_time_zone_defaults_to_utc_and_the_machine_id_to_derived() {
    let cfg = Config::parse(MINIMAL).unwrap();
    assert_eq!(cfg.device.time_zone, DEFAULT_TIME_ZONE);
    assert_eq!(cfg.device.machine_id, None);
    let with = |extra: &str| MINIMAL.replace("id = \"box-1\"", &format!("id = \"box-1\"\n{extra}"));
    let cfg = Config::parse(&with(
        "time_zone = \"America/Argentina/Buenos_Aires\"\nmachine_id = \"rack-7\"",
    ))
    .unwrap();
    assert_eq!(cfg.device.time_zone, "America/Argentina/Buenos_Aires");
    assert_eq!(cfg.device.machine_id.as_deref(), Some("rack-7"));
    for ok in [
        "UTC",
        "Europe/Berlin",
        "Etc/GMT+3",
        "+05:30",
        "-03:00",
        "+00:00",
        "EST5EDT",
    ] {
        assert!(check_zone(ok).is_ok(), "{ok}: {:?}", check_zone(ok));
    }
}

#[test]
fn a_bad_time_zone_or_machine_id_is_refused_at_start_naming_the_key() {
    let with = |extra: &str| MINIMAL.replace("id = \"box-1\"", &format!("id = \"box-1\"\n{extra}"));
    for bad in [
        "",
        "Europe/Berlin; DROP",
        "Europe Berlin",
        "+5:30",
        "+05:60",
        "+15:00",
        "+14:30",
        "Europe//Berlin",
        "Europe/",
        "05:30",
        "/etc/localtime",
        "Zürich",
    ] {
        let err = format!(
            "{:#}",
            Config::parse(&with(&format!("time_zone = {bad:?}"))).unwrap_err()
        );
        assert!(err.contains("device.time_zone"), "{bad}: {err}");
    }
    let long = format!("Europe/{}", "x".repeat(MAX_ZONE_BYTES));
    let err = format!(
        "{:#}",
        Config::parse(&with(&format!("time_zone = {long:?}"))).unwrap_err()
    );
    assert!(
        err.contains("device.time_zone") && err.contains("64"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Config::parse(&with("machine_id = \"\"")).unwrap_err()
    );
    assert!(
        err.contains("device.machine_id") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn the_budget_watches_the_disk_with_a_reserve_and_checks_its_figures() {
    let with = |budget: &str| format!("{MINIMAL}\n[budget]\n{budget}\n");
    // No budget: no reserve, nothing to pass.
    let cfg = Config::parse(MINIMAL).unwrap();
    assert!(!cfg.budget.enabled());
    assert_eq!(cfg.budget.reserve(), None);
    assert_eq!(cfg.budget.options_json(), "{}");
    // A byte budget brings the default reserve.
    let cfg = Config::parse(&with("max_bytes = 1000000")).unwrap();
    assert_eq!(cfg.budget.reserve(), Some(DEFAULT_RESERVE_BYTES));
    assert_eq!(cfg.budget.options_json(), r#"{"reserve_bytes":8388608}"#);
    // min_free_bytes alone is a budget too; reserve_bytes as given, 0: none.
    let cfg = Config::parse(&with("min_free_bytes = 67108864\nreserve_bytes = 0")).unwrap();
    assert!(cfg.budget.enabled());
    assert_eq!(
        cfg.budget.options_json(),
        r#"{"min_free_bytes":67108864,"reserve_bytes":0}"#
    );
    let err = |budget: &str| format!("{:#}", Config::parse(&with(budget)).unwrap_err());
    assert!(err("max_bytes = 0").contains("budget.max_bytes must be positive"));
    assert_eq!(
        err("max_bytes = 1\nreserve_bytes = 2147483648"),
        "budget.reserve_bytes must be at most 1073741824 (1 GiB), got 2147483648"
    );
    assert_eq!(
        err("min_free_bytes = 2251799813685248"),
        "budget.min_free_bytes must be at most 1125899906842624 (1 PiB), got 2251799813685248"
    );
    assert!(
        err("reserve_bytes = 1048576").starts_with("budget.reserve_bytes needs budget.max_bytes"),
        "{}",
        err("reserve_bytes = 1048576")
    );
    // TOML's own checks name the key.
    assert!(err("min_free_bytes = -1").contains("min_free_bytes"));
    assert!(err("reserve_bytes = \"8 MiB\"").contains("reserve_bytes"));
}

#[test]
fn the_pull_section_has_defaults_and_its_errors_name_the_key() {
    let d = Config::parse(MINIMAL).unwrap();
    assert!(d.pull.enabled && d.pull.listen);
    assert_eq!(d.pull.schedule, DEFAULT_PULL_CRON);
    assert_eq!(d.pull.poll(), Duration::from_secs(2));
    assert_eq!(d.pull.max_rows, DEFAULT_PULL_MAX_ROWS);
    assert_eq!(d.pull.tenant, None);
    assert!(d.pull.entry().unwrap().is_some());
    let cfg = Config::parse(&format!(
        "{MINIMAL}\n[pull]\nlisten = false\npoll_interval = \"500ms\"\nmax_rows = 200\ntenant = \"acme\"\nschedule = \"off\""
    ))
    .unwrap();
    assert!(!cfg.pull.listen);
    assert_eq!(cfg.pull.poll(), Duration::from_millis(500));
    assert_eq!(cfg.pull.max_rows, 200);
    assert_eq!(cfg.pull.tenant.as_deref(), Some("acme"));
    assert!(cfg.pull.entry().unwrap().is_none());
    let off = Config::parse(&format!("{MINIMAL}\n[pull]\nenabled = false")).unwrap();
    assert!(off.pull.entry().unwrap().is_none());
    assert_eq!(parse_interval("1m 30s").unwrap(), Duration::from_secs(90));

    for (pull, key, what) in [
        (
            "schedule = \"every 30 seconds\"",
            "pull.schedule",
            "seconds field",
        ),
        ("poll_interval = \"2\"", "pull.poll_interval", "\"500ms\""),
        ("poll_interval = \"soon\"", "pull.poll_interval", "\"2s\""),
        (
            "poll_interval = \"10ms\"",
            "pull.poll_interval",
            "between 100ms and 1h",
        ),
        (
            "poll_interval = \"2h\"",
            "pull.poll_interval",
            "between 100ms and 1h",
        ),
        ("max_rows = 0", "pull.max_rows", "between 1 and 100000"),
        ("max_rows = 100001", "pull.max_rows", "between 1 and 100000"),
        ("tenant = \"\"", "pull.tenant", "non-empty"),
        ("listen = \"yes\"", "listen", "boolean"),
        ("interval = \"2s\"", "interval", "unknown field"),
    ] {
        let err = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}\n[pull]\n{pull}")).unwrap_err()
        );
        assert!(err.contains(key) && err.contains(what), "{pull}: {err}");
    }
}

#[test]
fn the_pull_section_of_docs_agent_md_quotes_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let d = PullConfig::default();
    for line in [
        format!("enabled = {}", d.enabled),
        format!("schedule = {:?}", d.schedule),
        format!("listen = {}", d.listen),
        format!("poll_interval = {:?}", d.poll_interval),
        format!("max_rows = {}", d.max_rows),
    ] {
        assert!(doc.contains(&line), "docs/agent.md has no `{line}`");
    }
}
