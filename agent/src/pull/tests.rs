//! The pull's decisions: what a reply means in each phase, what the edge's
//! report must say, when a notified table is pulled again.

use super::*;

fn batch(page: u32, last_page: bool, base: i64, last: i64, rows: u32) -> BatchInfo {
    BatchInfo {
        id: format!("box-1/cameras/{base}-{last}"),
        table: "cameras".into(),
        stream_id: 77,
        base_seq: base,
        last_seq: last,
        rows,
        snapshot_page: page,
        last_page,
    }
}

fn reply(checkpoint: i64, more: bool, cursor: Option<&str>) -> PullReply {
    PullReply {
        batch: None,
        checkpoint,
        cursor: cursor.map(str::to_owned),
        more,
        rows: 0,
    }
}

fn snapshot(page: u32) -> Phase {
    Phase::Snapshot {
        page,
        stream_id: 77,
        last_seq: 500,
        cursor: "c1".into(),
    }
}

fn applied(checkpoint: i64, replay: bool, page: u32, complete: bool) -> Applied {
    Applied {
        table: "cameras".into(),
        upserted: 1,
        deleted: 0,
        replay,
        checkpoint,
        snapshot_page: page,
        complete,
    }
}

#[test]
fn an_incremental_batch_is_applied_alone_and_nothing_ends_the_table() {
    assert_eq!(
        decide(&Phase::Idle, "cameras", false, None),
        Ok(Action::Done)
    );
    let b = batch(0, true, 10, 20, 3);
    assert_eq!(
        decide(&Phase::Idle, "cameras", true, Some(&b)),
        Ok(Action::Incremental)
    );
    // Table names are SQLite names: case does not matter.
    assert_eq!(
        decide(&Phase::Idle, "Cameras", false, Some(&b)),
        Ok(Action::Incremental)
    );
    // No batch but "more": the cloud contradicts itself.
    assert!(decide(&Phase::Idle, "cameras", true, None).is_err());
    // Another table's batch.
    let mut other = b.clone();
    other.table = "zones".into();
    let e = decide(&Phase::Idle, "cameras", false, Some(&other)).unwrap_err();
    assert!(e.contains("'zones'") && e.contains("'cameras'"), "{e}");
}

#[test]
fn a_snapshot_begins_at_page_1_and_goes_on_page_by_page() {
    assert_eq!(
        decide(
            &Phase::Idle,
            "cameras",
            true,
            Some(&batch(1, false, 0, 500, 100))
        ),
        Ok(Action::BeginSnapshot)
    );
    // A later page without the earlier ones in this run.
    let e = decide(
        &Phase::Idle,
        "cameras",
        true,
        Some(&batch(2, false, 0, 500, 100)),
    )
    .unwrap_err();
    assert!(e.contains("page 2"), "{e}");
    assert_eq!(
        decide(
            &snapshot(1),
            "cameras",
            true,
            Some(&batch(2, false, 0, 500, 100))
        ),
        Ok(Action::NextPage)
    );
    // A page skipped, a page repeated, page 1 again, an incremental batch,
    // a page of another snapshot, no page at all: each stops the table.
    for (phase, b) in [
        (snapshot(1), Some(batch(3, false, 0, 500, 100))),
        (snapshot(2), Some(batch(2, false, 0, 500, 100))),
        (snapshot(2), Some(batch(1, false, 0, 500, 100))),
        (snapshot(2), Some(batch(0, true, 500, 510, 1))),
        (snapshot(2), Some(batch(3, false, 0, 501, 100))),
        (snapshot(2), None),
    ] {
        assert!(
            decide(&phase, "cameras", true, b.as_ref()).is_err(),
            "{phase:?} {b:?}"
        );
    }
}

#[test]
fn the_edges_report_must_agree_with_the_batch() {
    // Incremental: the checkpoint moves to the batch's last position.
    let b = batch(0, true, 10, 20, 3);
    assert_eq!(
        after_apply(&b, &applied(20, false, 0, true), &reply(20, false, None)),
        Ok((Phase::Idle, false))
    );
    // A replay leaves the edge's (higher) checkpoint.
    assert_eq!(
        after_apply(&b, &applied(30, true, 0, true), &reply(20, false, None)),
        Ok((Phase::Idle, false))
    );
    let e = after_apply(&b, &applied(19, false, 0, true), &reply(20, false, None)).unwrap_err();
    assert!(e.contains("checkpoint 19, not 20"), "{e}");
    // The cloud's checkpoint is the batch's last position.
    let e = after_apply(&b, &applied(20, false, 0, true), &reply(25, false, None)).unwrap_err();
    assert!(e.contains("checkpoint 25"), "{e}");

    // A page before the last keeps the transaction open with the cursor.
    let p1 = batch(1, false, 0, 500, 100);
    assert_eq!(
        after_apply(
            &p1,
            &applied(0, false, 1, false),
            &reply(0, true, Some("c1"))
        ),
        Ok((snapshot(1), false))
    );
    // The cloud must say more and give a cursor before the last page.
    assert!(after_apply(
        &p1,
        &applied(0, false, 1, false),
        &reply(0, false, Some("c1"))
    )
    .is_err());
    assert!(after_apply(&p1, &applied(0, false, 1, false), &reply(0, true, None)).is_err());
    // The last page commits, and the edge must call the snapshot complete.
    let p3 = batch(3, true, 0, 500, 7);
    assert_eq!(
        after_apply(&p3, &applied(500, false, 3, true), &reply(500, false, None)),
        Ok((Phase::Idle, true))
    );
    assert!(after_apply(&p3, &applied(0, false, 3, false), &reply(500, false, None)).is_err());
}

#[test]
fn a_notified_table_is_pulled_again_until_it_reaches_the_horizon() {
    let t0 = Instant::now();
    let mut w = Waiting::default();
    assert!(w.next().is_none());
    w.notified("cameras", 100, t0);
    assert_eq!(w.due(t0), BTreeSet::from(["cameras".to_owned()]));
    // Pulled, but an older cloud transaction still held the change back.
    w.pulled("cameras", Some(90), t0);
    assert!(w.due(t0).is_empty());
    assert_eq!(w.next(), Some(t0 + WAIT_FIRST));
    w.pulled("cameras", Some(95), t0 + WAIT_FIRST);
    assert_eq!(w.next(), Some(t0 + WAIT_FIRST + WAIT_FIRST * 2));
    // Reached: done.
    w.pulled("cameras", Some(100), t0 + WAIT_FIRST * 3);
    assert!(w.next().is_none());

    // The pauses double up to WAIT_MAX, and stop after WAIT_WINDOW.
    w.notified("zones", 100, t0);
    let mut now = t0;
    let mut pauses = Vec::new();
    while w.next().is_some() {
        w.pulled("zones", Some(1), now);
        if let Some(n) = w.next() {
            pauses.push(n - now);
            now = n;
        }
    }
    assert_eq!(pauses[0], WAIT_FIRST);
    assert!(pauses.iter().all(|p| *p <= WAIT_MAX), "{pauses:?}");
    assert!(pauses.contains(&WAIT_MAX));
    assert!(now - t0 >= WAIT_WINDOW && now - t0 < WAIT_WINDOW + WAIT_MAX);

    // A failed pull leaves the table to the schedule; a notification
    // without a horizon is one pull.
    w.notified("a", 100, t0);
    w.pulled("a", None, t0);
    w.notified("b", i64::MIN, t0);
    w.pulled("b", Some(0), t0);
    assert!(w.next().is_none());

    // A burst: the horizons merge, the highest counts.
    w.notified("c", 100, t0);
    w.notified("c", 200, t0);
    w.notified("c", 150, t0);
    w.pulled("c", Some(150), t0);
    assert!(w.next().is_some());
    w.pulled("c", Some(200), t0);
    assert!(w.next().is_none());
    // A table never notified is no concern of it.
    w.pulled("d", Some(1), t0);
    assert!(w.next().is_none());
}

#[test]
fn the_summary_and_the_log_name_the_table_and_what_failed() {
    let ok = TablePull {
        table: "cameras".into(),
        batches: 4,
        upserted: 1000,
        deleted: 2,
        snapshots: 1,
        checkpoint: 7351,
        ..TablePull::default()
    };
    assert_eq!(
        ok.summary(),
        "pull cameras         applied 4 batches: 1000 upserted, 2 deleted, 0 replays; checkpoint 7351 (1 snapshot)"
    );
    let failed = TablePull {
        table: "zones".into(),
        error: Some("pull of table 'zones': the edge refused batch x (at checkpoint 5)".into()),
        ..TablePull::default()
    };
    assert!(failed
        .summary()
        .starts_with("pull zones           FAILED after 0 batches: pull of table 'zones'"));
    let e = log_entry(std::slice::from_ref(&ok));
    assert_eq!((e.status, e.rows, e.batches), (RunStatus::Success, 1002, 4));
    let e = log_entry(&[ok, failed.clone()]);
    assert_eq!(e.status, RunStatus::Partial);
    assert!(e.error.unwrap().starts_with("zones: pull of table 'zones'"));
    assert_eq!(log_entry(&[failed]).status, RunStatus::Failed);
    assert_eq!(log_entry(&[]).status, RunStatus::Success);
}
