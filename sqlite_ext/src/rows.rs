//! Parsing the `rows` argument of `sluice_insert`: a JSON array of objects
//! that all have the same keys as the first one, or the compact form
//! `{"columns": ["a", "b"], "rows": [[1, "x"], [2, "y"]]}` (keys named once,
//! `columns` before `rows`).
//!
//! The parser streams: it never builds a `serde_json::Value` or a map per
//! row. The first object fixes the column list; every later object's keys are
//! matched against it by position first (the usual case: same key order) and
//! by a name lookup otherwise, and its values are handed to a [`RowSink`] in
//! column order. Strings without escapes are borrowed from the input.
//! Nested objects and arrays become their JSON text (compact, key order kept).
//!
//! Nothing here knows about SQLite, so it is unit-tested with plain
//! `cargo test`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use sluice_wire::ColumnType;

/// One JSON value of a row, converted to what SQLite will store.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    /// `true`/`false`, stored as 1/0.
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    /// A nested object or array, as compact JSON text.
    Json(String),
}

impl Cell<'_> {
    /// What the user wrote, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Bool(_) => "boolean",
            Cell::Int(_) | Cell::Real(_) => "number",
            Cell::Text(_) => "text",
            Cell::Json(s) if s.starts_with('[') => "array",
            Cell::Json(_) => "object",
        }
    }
}

/// Checks a value against the affinity of the column it goes to: numeric
/// columns (INTEGER, REAL) refuse text, text columns refuse numbers and
/// booleans; NUMERIC and BLOB columns take anything; NULL always passes (the
/// table's own NOT NULL constraint decides).
pub fn check_cell(affinity: ColumnType, cell: &Cell<'_>) -> Result<(), String> {
    match (affinity, cell) {
        (_, Cell::Null) => Ok(()),
        (ColumnType::Integer | ColumnType::Real, Cell::Text(_) | Cell::Json(_)) => Err(format!(
            "expected a number, got {}",
            if matches!(cell, Cell::Text(_)) {
                "text"
            } else {
                cell.kind()
            }
        )),
        (ColumnType::Text, Cell::Int(_) | Cell::Real(_) | Cell::Bool(_)) => {
            Err(format!("expected text, got {}", cell.kind()))
        }
        _ => Ok(()),
    }
}

/// Receives the parsed rows.
pub trait RowSink<'a> {
    /// Called once, with the keys of the first object in their order, before
    /// the first row. An error stops parsing and is reported as is.
    fn columns(&mut self, names: &[Cow<'a, str>]) -> Result<(), String>;
    /// Called for each row (index from 0) with its values in column order.
    /// An error stops parsing and is reported as is.
    fn row(&mut self, index: usize, cells: &[Cell<'a>]) -> Result<(), String>;
}

/// Parses `json` and feeds `sink`; returns the number of rows. Error
/// messages name the row (0-based index in the array) and the column.
pub fn parse_rows<'a, S: RowSink<'a>>(json: &'a str, sink: &mut S) -> Result<usize, String> {
    let mut state = State {
        sink,
        names: Vec::new(),
        lookup: HashMap::new(),
        cells: Vec::new(),
        seen: Vec::new(),
        rows: 0,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    let result = (&mut de)
        .deserialize_any(RowsVisitor {
            state: &mut state,
            compact: false,
        })
        .and_then(|()| de.end());
    match (result, state.error) {
        (_, Some(e)) => Err(e),
        (Ok(()), None) => Ok(state.rows),
        (Err(e), None) => Err(format!("invalid JSON: {e}")),
    }
}

/// Parsing state shared by the visitors. Errors of our own are stored in
/// `error` (serde would otherwise append a line/column to them).
struct State<'s, 'a, S> {
    sink: &'s mut S,
    /// Keys of the first object.
    names: Vec<Cow<'a, str>>,
    /// Name → index, built after the first row, used when a key is not at
    /// its usual position.
    lookup: HashMap<String, usize>,
    /// The current row's values, in column order.
    cells: Vec<Cell<'a>>,
    /// `seen[c] == row + 1` when column `c` was set in the current row.
    seen: Vec<usize>,
    rows: usize,
    error: Option<String>,
}

impl<'a, S: RowSink<'a>> State<'_, 'a, S> {
    fn fail<E: de::Error>(&mut self, msg: String) -> E {
        if self.error.is_none() {
            self.error = Some(msg);
        }
        E::custom("sluice: stopped")
    }

    /// Where a key of row `row` (> 0) goes.
    fn column_of(&self, key: &str, position: usize) -> Option<usize> {
        if self.names.get(position).is_some_and(|n| n == key) {
            return Some(position);
        }
        self.lookup.get(key).copied()
    }
}

struct RowsVisitor<'r, 's, 'a, S> {
    state: &'r mut State<'s, 'a, S>,
    /// Inside the compact form: rows are arrays, and no object is accepted
    /// here.
    compact: bool,
}

impl<'de: 'a, 'a, S: RowSink<'a>> DeserializeSeed<'de> for RowsVisitor<'_, '_, 'a, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a, S: RowSink<'a>> Visitor<'de> for RowsVisitor<'_, '_, 'a, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.compact {
            f.write_str("a JSON array of arrays")
        } else {
            f.write_str(r#"a JSON array of objects or {"columns": [...], "rows": [[...], ...]}"#)
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let index = self.state.rows;
            let seed = RowSeed {
                state: &mut *self.state,
                index,
                compact: self.compact,
            };
            match seq.next_element_seed(seed)? {
                Some(()) => self.state.rows += 1,
                None => return Ok(()),
            }
        }
    }

    /// The compact form: `{"columns": [names], "rows": [[values], ...]}`.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.compact {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let st = self.state;
        let (mut columns, mut rows) = (false, false);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key.as_ref() {
                "columns" if !columns => {
                    let names = match map.next_value_seed(NamesSeed) {
                        Ok(n) => n,
                        Err(e) => return Err(st.fail(format!("\"columns\": {e}"))),
                    };
                    if names.is_empty() {
                        return Err(st.fail("\"columns\" is empty".to_string()));
                    }
                    for (i, n) in names.iter().enumerate() {
                        if names[..i].contains(n) {
                            return Err(st.fail(format!("column '{n}' appears twice")));
                        }
                    }
                    st.cells = vec![Cell::Null; names.len()];
                    if let Err(e) = st.sink.columns(&names) {
                        return Err(st.fail(e));
                    }
                    st.names = names;
                    columns = true;
                }
                "rows" if columns && !rows => {
                    map.next_value_seed(RowsVisitor {
                        state: &mut *st,
                        compact: true,
                    })?;
                    rows = true;
                }
                "rows" if !rows => {
                    return Err(st.fail("\"columns\" must come before \"rows\"".to_string()))
                }
                other => {
                    return Err(st.fail(format!(
                        "unexpected key '{other}' (the compact form is {{\"columns\": [...], \"rows\": [[...], ...]}})"
                    )))
                }
            }
        }
        if !rows {
            return Err(st.fail(format!(
                "the compact form has no \"{}\"",
                if columns { "rows" } else { "columns" }
            )));
        }
        Ok(())
    }
}

/// The `columns` of the compact form: an array of strings.
struct NamesSeed;

impl<'de> DeserializeSeed<'de> for NamesSeed {
    type Value = Vec<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(NamesSeed)
    }
}

impl<'de> Visitor<'de> for NamesSeed {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of column names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut names = Vec::new();
        while let Some(n) = seq.next_element_seed(KeySeed)? {
            names.push(n);
        }
        Ok(names)
    }
}

struct RowSeed<'r, 's, 'a, S> {
    state: &'r mut State<'s, 'a, S>,
    index: usize,
    compact: bool,
}

impl<'de: 'a, 'a, S: RowSink<'a>> DeserializeSeed<'de> for RowSeed<'_, '_, 'a, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let index = self.index;
        let state = self.state;
        let r = d.deserialize_any(RowVisitor {
            state: &mut *state,
            index,
            compact: self.compact,
        });
        if let Err(e) = &r {
            if state.error.is_none() {
                state.error = Some(format!("row {index}: {e}"));
            }
        }
        r
    }
}

struct RowVisitor<'r, 's, 'a, S> {
    state: &'r mut State<'s, 'a, S>,
    index: usize,
    /// A row of the compact form: an array of values in column order.
    compact: bool,
}

impl<'de: 'a, 'a, S: RowSink<'a>> Visitor<'de> for RowVisitor<'_, '_, 'a, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.compact {
            f.write_str("a JSON array of values")
        } else {
            f.write_str("a JSON object")
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.compact {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let st = self.state;
        let row = self.index;
        let n = st.names.len();
        for c in 0..n {
            match seq.next_element_seed(CellSeed) {
                Ok(Some(cell)) => st.cells[c] = cell,
                Ok(None) => {
                    return Err(st.fail(format!(
                        "row {row}: {c} values for {n} columns (missing column '{}')",
                        st.names[c]
                    )))
                }
                Err(e) => {
                    let msg = format!("row {row}, column '{}': {e}", st.names[c]);
                    return Err(st.fail(msg));
                }
            }
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(st.fail(format!("row {row}: more values than the {n} columns")));
        }
        let cells = std::mem::take(&mut st.cells);
        let r = st.sink.row(row, &cells);
        st.cells = cells;
        r.map_err(|e| st.fail(e))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.compact {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let st = self.state;
        let row = self.index;
        if row == 0 {
            while let Some(key) = map.next_key_seed(KeySeed)? {
                if st.names.contains(&key) {
                    return Err(st.fail(format!("row 0: column '{key}' appears twice")));
                }
                let cell = match map.next_value_seed(CellSeed) {
                    Ok(cell) => cell,
                    Err(e) => return Err(st.fail(format!("row 0, column '{key}': {e}"))),
                };
                st.names.push(key);
                st.cells.push(cell);
            }
            if st.names.is_empty() {
                return Err(st.fail("row 0: the object has no keys".to_string()));
            }
            st.lookup = st
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .collect();
            st.seen = vec![1; st.names.len()];
            let names = std::mem::take(&mut st.names);
            let r = st.sink.columns(&names);
            st.names = names;
            if let Err(e) = r {
                return Err(st.fail(e));
            }
        } else {
            let mut position = 0;
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let Some(c) = st.column_of(&key, position) else {
                    return Err(st.fail(format!(
                        "row {row}: unexpected column '{key}' (row 0 has no such key)"
                    )));
                };
                if st.seen[c] == row + 1 {
                    return Err(st.fail(format!("row {row}: column '{key}' appears twice")));
                }
                st.seen[c] = row + 1;
                let cell = match map.next_value_seed(CellSeed) {
                    Ok(cell) => cell,
                    Err(e) => return Err(st.fail(format!("row {row}, column '{key}': {e}"))),
                };
                st.cells[c] = cell;
                position += 1;
            }
            if position != st.names.len() {
                let missing = st
                    .seen
                    .iter()
                    .position(|&s| s != row + 1)
                    .and_then(|c| st.names.get(c))
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                return Err(st.fail(format!("row {row}: missing column '{missing}'")));
            }
        }
        let cells = std::mem::take(&mut st.cells);
        let r = st.sink.row(row, &cells);
        st.cells = cells;
        r.map_err(|e| st.fail(e))
    }
}

/// An object key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One value of a row.
struct CellSeed;

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cell::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cell::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Cell::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cell::Real(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut out = String::new();
        JsonText { out: &mut out }.visit_map(map)?;
        Ok(Cell::Json(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let mut out = String::new();
        JsonText { out: &mut out }.visit_seq(seq)?;
        Ok(Cell::Json(out))
    }
}

/// Writes any JSON value back as compact JSON text, keeping key order.
/// Depth is bounded by serde_json's recursion limit (128).
struct JsonText<'o> {
    out: &'o mut String,
}

impl<'de> DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'de> Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.push_str("null");
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.out.push_str(&v.to_string());
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.out.push_str(&v.to_string());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json writes finite floats with a decimal point or exponent.
        let s = serde_json::to_string(&v).map_err(E::custom)?;
        self.out.push_str(&s);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        push_json_str(self.out, v);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push('{');
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !first {
                self.out.push(',');
            }
            first = false;
            push_json_str(self.out, &key);
            self.out.push(':');
            map.next_value_seed(JsonText {
                out: &mut *self.out,
            })?;
        }
        self.out.push('}');
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push('[');
        let mut first = true;
        loop {
            if !first {
                self.out.push(',');
            }
            let len = self.out.len();
            match seq.next_element_seed(JsonText {
                out: &mut *self.out,
            })? {
                Some(()) => first = false,
                None => {
                    // Undo the comma written before the end of the array.
                    self.out.truncate(if first { len } else { len - 1 });
                    break;
                }
            }
        }
        self.out.push(']');
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
