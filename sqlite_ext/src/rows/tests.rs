//! Unit tests of the streaming row parser.

use super::*;

#[derive(Default)]
struct Collect {
    names: Vec<String>,
    rows: Vec<Vec<Cell<'static>>>,
    fail_at: Option<usize>,
}

fn owned(c: &Cell<'_>) -> Cell<'static> {
    match c {
        Cell::Text(t) => Cell::Text(Cow::Owned(t.to_string())),
        Cell::Null => Cell::Null,
        Cell::Bool(b) => Cell::Bool(*b),
        Cell::Int(i) => Cell::Int(*i),
        Cell::Real(f) => Cell::Real(*f),
        Cell::Json(s) => Cell::Json(s.clone()),
    }
}

impl<'a> RowSink<'a> for Collect {
    fn columns(&mut self, names: &[Cow<'a, str>]) -> Result<(), String> {
        self.names = names.iter().map(|n| n.to_string()).collect();
        Ok(())
    }
    fn row(&mut self, index: usize, cells: &[Cell<'a>]) -> Result<(), String> {
        if self.fail_at == Some(index) {
            return Err(format!("row {index}: sink says no"));
        }
        self.rows.push(cells.iter().map(owned).collect());
        Ok(())
    }
}

fn parse(json: &str) -> Result<Collect, String> {
    let mut c = Collect::default();
    parse_rows(json, &mut c)?;
    Ok(c)
}

#[test]
fn all_kinds_of_values() {
    let c = parse(
        r#"[{"a": 1, "b": 2.5, "c": "x", "d": true, "e": null, "f": {"z": 1, "a": [1, "q\"", 2.0]}, "g": []}]"#,
    )
    .unwrap();
    assert_eq!(c.names, ["a", "b", "c", "d", "e", "f", "g"]);
    assert_eq!(
        c.rows[0],
        vec![
            Cell::Int(1),
            Cell::Real(2.5),
            Cell::Text("x".into()),
            Cell::Bool(true),
            Cell::Null,
            Cell::Json(r#"{"z":1,"a":[1,"q\"",2.0]}"#.into()),
            Cell::Json("[]".into()),
        ]
    );
}

#[test]
fn later_rows_in_any_key_order() {
    let c = parse(r#"[{"a": 1, "b": "x"}, {"b": "y", "a": 2}, {"a": 3, "b": "z"}]"#).unwrap();
    assert_eq!(c.rows.len(), 3);
    assert_eq!(c.rows[1], vec![Cell::Int(2), Cell::Text("y".into())]);
    assert_eq!(c.rows[2], vec![Cell::Int(3), Cell::Text("z".into())]);
}

#[test]
fn empty_array_is_zero_rows() {
    let mut c = Collect::default();
    assert_eq!(parse_rows("[]", &mut c).unwrap(), 0);
    assert_eq!(parse_rows("  [ ]  ", &mut c).unwrap(), 0);
}

#[test]
fn missing_extra_and_duplicate_keys_name_row_and_column() {
    let e = parse(r#"[{"a": 1, "b": 2}, {"a": 1}]"#).err().unwrap();
    assert_eq!(e, "row 1: missing column 'b'");
    let e = parse(r#"[{"a": 1}, {"a": 1}, {"a": 1, "zz": 2}]"#)
        .err()
        .unwrap();
    assert_eq!(e, "row 2: unexpected column 'zz' (row 0 has no such key)");
    let e = parse(r#"[{"a": 1}, {"a": 1, "a": 2}]"#).err().unwrap();
    assert_eq!(e, "row 1: column 'a' appears twice");
    let e = parse(r#"[{"a": 1, "a": 2}]"#).err().unwrap();
    assert_eq!(e, "row 0: column 'a' appears twice");
    let e = parse(r#"[{}]"#).err().unwrap();
    assert_eq!(e, "row 0: the object has no keys");
}

#[test]
fn bad_shapes() {
    let e = parse(r#"5"#).err().unwrap();
    assert!(
        e.starts_with("invalid JSON: invalid type: integer `5`, expected a JSON array of objects"),
        "{e}"
    );
    let e = parse(r#"[{"a": 1}, 5]"#).err().unwrap();
    assert!(
        e.starts_with("row 1: invalid type: integer `5`, expected a JSON object"),
        "{e}"
    );
    let e = parse(r#"[{"a": 1}"#).err().unwrap();
    assert!(e.starts_with("invalid JSON: EOF while parsing"), "{e}");
    let e = parse(r#"[{"a": 1}] x"#).err().unwrap();
    assert!(e.starts_with("invalid JSON: trailing characters"), "{e}");
    let e = parse(r#"[{"a": 1}, {"a": 18446744073709551615}]"#)
        .err()
        .unwrap();
    assert!(
        e.starts_with("row 1, column 'a': integer 18446744073709551615 does not fit in 64 bits"),
        "{e}"
    );
    let e = parse("").err().unwrap();
    assert!(e.starts_with("invalid JSON"), "{e}");
}

#[test]
fn compact_form() {
    let c = parse(r#"{"columns": ["a", "b"], "rows": [[1, "x"], [null, {"k": [2]}]]}"#).unwrap();
    assert_eq!(c.names, ["a", "b"]);
    assert_eq!(c.rows[0], vec![Cell::Int(1), Cell::Text("x".into())]);
    assert_eq!(
        c.rows[1],
        vec![Cell::Null, Cell::Json(r#"{"k":[2]}"#.into())]
    );
    let mut c = Collect::default();
    assert_eq!(
        parse_rows(r#"{"columns": ["a"], "rows": []}"#, &mut c).unwrap(),
        0
    );
    for (json, want) in [
        (
            r#"{"columns": ["a", "b"], "rows": [[1, 2], [3]]}"#,
            "row 1: 1 values for 2 columns (missing column 'b')",
        ),
        (
            r#"{"columns": ["a"], "rows": [[1], [2, 3]]}"#,
            "row 1: more values than the 1 columns",
        ),
        (
            r#"{"rows": [[1]], "columns": ["a"]}"#,
            "\"columns\" must come before \"rows\"",
        ),
        (r#"{"columns": ["a"]}"#, "the compact form has no \"rows\""),
        (r#"{"columns": [], "rows": []}"#, "\"columns\" is empty"),
        (
            r#"{"columns": ["a", "a"], "rows": []}"#,
            "column 'a' appears twice",
        ),
    ] {
        assert_eq!(parse(json).err().unwrap(), want, "{json}");
    }
    let e = parse(r#"{"columns": ["a"], "rows": [[1], {"a": 1}]}"#)
        .err()
        .unwrap();
    assert!(
        e.starts_with("row 1: invalid type: map, expected a JSON array of values"),
        "{e}"
    );
    let e = parse(r#"{"columns": ["a"], "rows": [[1], [18446744073709551615]]}"#)
        .err()
        .unwrap();
    assert!(
        e.starts_with("row 1, column 'a': integer 18446744073709551615 does not fit"),
        "{e}"
    );
    let e = parse(r#"{"columns": [1], "rows": []}"#).err().unwrap();
    assert!(
        e.starts_with("\"columns\": invalid type: integer `1`, expected a string"),
        "{e}"
    );
    let e = parse(r#"{"a": 1}"#).err().unwrap();
    assert!(
        e.starts_with("unexpected key 'a' (the compact form is"),
        "{e}"
    );
    let e = parse(r#"[[1]]"#).err().unwrap();
    assert!(
        e.starts_with("row 0: invalid type: sequence, expected a JSON object"),
        "{e}"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(r#"[{{"a": {}{}}}]"#, "[".repeat(10_000), "]".repeat(10_000));
    let e = parse(&deep).err().unwrap();
    assert!(e.contains("recursion limit"), "{e}");
}

#[test]
fn sink_errors_pass_through_unchanged() {
    let mut c = Collect {
        fail_at: Some(1),
        ..Default::default()
    };
    let e = parse_rows(r#"[{"a": 1}, {"a": 2}]"#, &mut c).err().unwrap();
    assert_eq!(e, "row 1: sink says no");
}

#[test]
fn strings_without_escapes_are_borrowed() {
    struct Check;
    impl<'a> RowSink<'a> for Check {
        fn columns(&mut self, names: &[Cow<'a, str>]) -> Result<(), String> {
            assert!(matches!(names[0], Cow::Borrowed(_)));
            Ok(())
        }
        fn row(&mut self, _: usize, cells: &[Cell<'a>]) -> Result<(), String> {
            assert!(matches!(cells[0], Cell::Text(Cow::Borrowed("plain"))));
            assert_eq!(cells[1], Cell::Text(Cow::Owned("a\nb".into())));
            Ok(())
        }
    }
    parse_rows(r#"[{"a": "plain", "b": "a\nb"}]"#, &mut Check).unwrap();
}

#[test]
fn type_checks_follow_affinity() {
    use ColumnType::*;
    assert_eq!(
        check_cell(Integer, &Cell::Text("4".into())).err().unwrap(),
        "expected a number, got text"
    );
    assert_eq!(
        check_cell(Real, &Cell::Json("[]".into())).err().unwrap(),
        "expected a number, got array"
    );
    assert_eq!(
        check_cell(Text, &Cell::Int(4)).err().unwrap(),
        "expected text, got number"
    );
    assert_eq!(
        check_cell(Text, &Cell::Bool(true)).err().unwrap(),
        "expected text, got boolean"
    );
    assert!(check_cell(Text, &Cell::Json("{}".into())).is_ok());
    assert!(check_cell(Integer, &Cell::Bool(false)).is_ok());
    assert!(check_cell(Integer, &Cell::Real(1.5)).is_ok());
    assert!(check_cell(Numeric, &Cell::Text("x".into())).is_ok());
    assert!(check_cell(Blob, &Cell::Int(1)).is_ok());
    for t in [Integer, Real, Text, Blob, Numeric] {
        assert!(check_cell(t, &Cell::Null).is_ok());
    }
}
