#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::testdb::{err, memory, one};

#[test]
fn smoke() {
    let db = memory();
    assert_eq!(one::<String>(&db, "SELECT sluice_version()"), crate::about::version_string());
    assert_eq!(one::<Option<String>>(&db, "SELECT sluice_machine()"), None);
    assert!(err(&db, "SELECT sluice_machine(NULL)").starts_with("sluice_machine: "));
}
