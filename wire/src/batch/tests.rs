//! Round trips, hostile inputs and property tests of the batch format.

use super::body::decimal;
use super::*;
use crate::codec;
use crate::error::WireError;
use proptest::prelude::*;

fn header(columns: Vec<Column>, base: i64, last: i64) -> BatchHeader {
    BatchHeader {
        pulled: None,
        device_id: "box-1".into(),
        stream_id: 0xdead_beef,
        table: "division_states".into(),
        base_seq: base,
        last_seq: last,
        row_count: 0,
        sent_at_ms: 1_700_000_000_000,
        fingerprint: column_fingerprint(&columns),
        columns,
        digest: None,
        origin: Origin::default(),
        resend: 0,
        changes: None,
    }
}

fn sample() -> (BatchHeader, Vec<i64>, Vec<Vec<Value>>) {
    let cols = vec![
        Column::new("id", ColumnType::Integer),
        Column::new("state", ColumnType::Text),
        Column::new("score", ColumnType::Real),
        Column::new("img", ColumnType::Blob),
    ];
    let versions = vec![11, 12, 15];
    let data = vec![
        vec![Value::Integer(11), Value::Integer(12), Value::Integer(15)],
        vec![
            Value::Text("RED".into()),
            Value::Null,
            Value::Text("GREEN \u{e9}".into()),
        ],
        vec![Value::Real(0.5), Value::Real(-1e300), Value::Integer(3)],
        vec![Value::Blob(vec![0, 1, 2]), Value::Null, Value::Blob(vec![])],
    ];
    (header(cols, 10, 15), versions, data)
}

#[test]
fn round_trip_keeps_everything() {
    let (h, v, d) = sample();
    for opts in [
        EncodeOptions::default(),
        EncodeOptions {
            brotli_quality: None,
        },
    ] {
        let bytes = encode(&h, &v, &d, opts).unwrap();
        let b = decode(&bytes).unwrap();
        assert_eq!(b.header.row_count, 3);
        assert_eq!(b.header.id(), h.id());
        assert_eq!(b.versions, v);
        assert_eq!(b.columns, d);
        assert_eq!(decode_header(&bytes).unwrap(), b.header);
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let (h, v, d) = sample();
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(decode(&b).is_err(), "flip at byte {i} went unnoticed");
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let (h, v, d) = sample();
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err());
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let (h, v, d) = sample();
    let mut bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert!(decode(b"hello")
        .unwrap_err()
        .to_string()
        .contains("shorter than"));
    assert!(decode(&[0u8; 64])
        .unwrap_err()
        .to_string()
        .contains("magic"));
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    assert!(decode(&bytes)
        .unwrap_err()
        .to_string()
        .contains("checksum mismatch"));
}

/// Re-signs `bytes` after tampering so the checksum no longer protects
/// the decoder: what a hostile sender could do.
fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn a_lying_row_count_does_not_allocate_it() {
    let (h, v, d) = sample();
    let bytes = encode(
        &h,
        &v,
        &d,
        EncodeOptions {
            brotli_quality: None,
        },
    )
    .unwrap();
    // row_count sits right after device id, stream id, table, base, last.
    let off = 9 + 2 + h.device_id.len() + 8 + 2 + h.table.len() + 16;
    let mut b = bytes.clone();
    b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode(&resign(b)).unwrap_err().to_string();
    assert!(err.contains("claims 4294967295 rows"), "{err}");
}

#[test]
fn a_huge_claimed_body_is_refused_before_allocating() {
    let (h, v, d) = sample();
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    let header_len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    let off = 9 + header_len;
    let mut b = bytes.clone();
    b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode(&resign(b)).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
}

#[test]
fn encode_rejects_inconsistent_input() {
    let (h, v, mut d) = sample();
    d[1].pop();
    let err = encode(&h, &v, &d, EncodeOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("column 'state' has 2 values"),
        "{err}"
    );
}

#[test]
fn bodies_without_the_compact_flag_still_read() {
    // A batch of the first v1 writers: plain 8-byte real, plain text.
    let cols = vec![
        Column::new("x", ColumnType::Real),
        Column::new("t", ColumnType::Text),
    ];
    let h = header(cols.clone(), 0, 1);
    let mut head = Vec::new();
    codec::put_str16(&mut head, &h.device_id, "").unwrap();
    codec::put_u64(&mut head, h.stream_id);
    codec::put_str16(&mut head, &h.table, "").unwrap();
    codec::put_u64(&mut head, 0);
    codec::put_u64(&mut head, 1);
    codec::put_u32(&mut head, 1);
    codec::put_u64(&mut head, h.sent_at_ms as u64);
    codec::put_u16(&mut head, 2);
    for c in &cols {
        codec::put_str16(&mut head, &c.name, "").unwrap();
        head.push(c.ty as u8);
    }
    codec::put_u64(&mut head, column_fingerprint(&cols));
    let mut body = Vec::new();
    codec::put_zigzag(&mut body, 1);
    body.push(2);
    codec::put_u64(&mut body, 2.5f64.to_bits());
    body.push(3);
    codec::put_bytes_varint(&mut body, b"hi");
    let mut out = b"SLB\x01\x00".to_vec();
    codec::put_u32(&mut out, head.len() as u32);
    out.extend_from_slice(&head);
    codec::put_u32(&mut out, body.len() as u32);
    codec::put_u32(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    codec::put_u32(&mut out, crc);
    let b = decode(&out).unwrap();
    assert_eq!(
        b.columns,
        vec![vec![Value::Real(2.5)], vec![Value::Text("hi".into())]]
    );
}

#[test]
fn short_decimals_and_shared_prefixes_take_few_bytes() {
    for f in [
        0.0,
        1.5,
        -2.25,
        12.345,
        1e-9,
        0.1 + 0.2,
        1e300,
        f64::MIN_POSITIVE,
        -0.0,
        123456.789,
    ] {
        if let Some((m, k)) = decimal(f) {
            assert_eq!(
                (m as f64 / 10f64.powi(i32::from(k))).to_bits(),
                f.to_bits(),
                "{f}"
            );
        }
    }
    assert_eq!(decimal(12.345), Some((12345, 3)));
    assert_eq!(decimal(-0.0), None);
    assert_eq!(decimal(0.1 + 0.2), None);
    let cols = vec![
        Column::new("t", ColumnType::Text),
        Column::new("x", ColumnType::Real),
    ];
    let n = 100;
    let versions: Vec<i64> = (1..=n).collect();
    let data = vec![
        (0..n)
            .map(|i| {
                Value::Text(format!(
                    "2026-11-22T10:15:{:02}.{:03}Z",
                    i % 60,
                    i * 7 % 1000
                ))
            })
            .collect(),
        (0..n)
            .map(|i| Value::Real(i as f64 * 0.25 + 1000.125))
            .collect(),
    ];
    let bytes = encode(
        &header(cols, 0, n),
        &versions,
        &data,
        EncodeOptions {
            brotli_quality: None,
        },
    )
    .unwrap();
    assert!(bytes.len() < 100 * 16, "{} bytes for 100 rows", bytes.len());
    let b = decode(&bytes).unwrap();
    assert_eq!(b.columns, data);
}

#[test]
fn affinity_follows_sqlite_rules() {
    assert_eq!(ColumnType::from_declared("BIGINT"), ColumnType::Integer);
    assert_eq!(ColumnType::from_declared("varchar(20)"), ColumnType::Text);
    assert_eq!(ColumnType::from_declared(""), ColumnType::Blob);
    assert_eq!(
        ColumnType::from_declared("DOUBLE PRECISION"),
        ColumnType::Real
    );
    assert_eq!(ColumnType::from_declared("TIMESTAMP"), ColumnType::Numeric);
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::Real),
        ".{0,40}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
    ]
}

fn batch_parts() -> impl Strategy<Value = (BatchHeader, Vec<i64>, Vec<Vec<Value>>)> {
    (0usize..6, 0usize..50, any::<i32>()).prop_flat_map(|(ncols, nrows, base)| {
        let base = i64::from(base);
        (
            proptest::collection::vec(("[a-z_]{1,12}", 1u8..=5), ncols),
            proptest::collection::vec(1i64..1000, nrows),
            proptest::collection::vec(proptest::collection::vec(value(), nrows), ncols),
            "[a-z0-9-]{0,20}",
            any::<u64>(),
            proptest::option::of(0u32..=11),
        )
            .prop_map(move |(cols, gaps, data, device, stream, q)| {
                let cols: Vec<Column> = cols
                    .into_iter()
                    .map(|(n, t)| Column::new(n, ColumnType::from_u8(t).unwrap()))
                    .collect();
                let mut versions = Vec::with_capacity(gaps.len());
                let mut s = base;
                for g in gaps {
                    s += g;
                    versions.push(s);
                }
                let last = versions.last().copied().unwrap_or(base) + 3;
                let mut h = header(cols, base, last);
                h.device_id = device;
                h.stream_id = stream;
                h.row_count = u32::from(q.unwrap_or(99) as u8);
                (h, versions, data)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_round_trip((h, v, d) in batch_parts(), q in proptest::option::of(0u32..=11)) {
        let bytes = encode(&h, &v, &d, EncodeOptions { brotli_quality: q }).unwrap();
        let b = decode(&bytes).unwrap();
        prop_assert_eq!(&b.versions, &v);
        prop_assert_eq!(&b.columns, &d);
        prop_assert_eq!(b.header.row_count as usize, v.len());
        prop_assert_eq!(b.header.id(), h.id());
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let mut framed = b"SLB\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode(&resign(framed.clone()));
        let _ = decode_header(&resign(framed));
    }

    #[test]
    fn prop_resigned_mutations_never_panic((h, v, d) in batch_parts(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode(&h, &v, &d, EncodeOptions { brotli_quality: None }).unwrap();
        let n = bytes.len() - 4;
        bytes[pos % n] = byte;
        let _ = decode(&resign(bytes));
    }
}

#[test]
fn the_column_fingerprint_is_pinned() {
    // The fingerprint travels in every batch and the cloud compares it:
    // changing how it is computed would make every box's batches refused.
    let cols = [
        Column::new("id", ColumnType::Integer),
        Column::new("state", ColumnType::Text),
    ];
    assert_eq!(column_fingerprint(&cols), 0xaab6_b962_2b4f_db7d);
}

fn with_origin() -> (BatchHeader, Vec<i64>, Vec<Vec<Value>>) {
    let (mut h, v, d) = sample();
    h.origin = Origin {
        machine: 0x1234_5678_9abc_def0,
        zone: "Asia/Shanghai".into(),
        fork: Some(Fork {
            parent_stream: 77,
            fork_seq: 14,
        }),
    };
    (h, v, d)
}

#[test]
fn version_2_carries_digest_and_origin() {
    let (h, v, d) = with_origin();
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(bytes[3], 2);
    let b = decode(&bytes).unwrap();
    assert_eq!(b.header.origin, h.origin);
    let digest = b.header.digest.expect("a version 2 batch has a digest");
    assert_eq!(decode_header(&bytes).unwrap().digest, Some(digest));
    assert_eq!(decode_header(&bytes).unwrap().origin, h.origin);
}

#[test]
fn the_digest_is_the_rows_not_the_send_time() {
    let (mut h, v, mut d) = sample();
    let digest = |h: &BatchHeader, d: &[Vec<Value>]| {
        decode_header(&encode(h, &v, d, EncodeOptions::default()).unwrap())
            .unwrap()
            .digest
            .unwrap()
    };
    let first = digest(&h, &d);
    h.sent_at_ms += 60_000;
    h.origin.machine = 9;
    assert_eq!(
        digest(&h, &d),
        first,
        "send time and machine are not content"
    );
    // Compression is not content either.
    let raw = encode(
        &h,
        &v,
        &d,
        EncodeOptions {
            brotli_quality: None,
        },
    )
    .unwrap();
    assert_eq!(decode_header(&raw).unwrap().digest, Some(first));
    d[1][1] = Value::Text("YELLOW".into());
    assert_ne!(digest(&h, &d), first, "another value is other content");
}

#[test]
fn a_digest_that_does_not_match_the_rows_is_refused() {
    let (h, v, d) = sample();
    let bytes = encode(
        &h,
        &v,
        &d,
        EncodeOptions {
            brotli_quality: None,
        },
    )
    .unwrap();
    // The digest is the first of the version-2 fields, right after the
    // fingerprint: header_len is at 5..9, the header ends 8 + 8 + 2 + 0 + 8
    // + 8 bytes (digest, machine, empty zone, parent, fork sequence) before
    // its end.
    let header_len = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
    let digest_at = 9 + header_len - 34;
    let mut tampered = bytes.clone();
    tampered[digest_at] ^= 1;
    let tampered = resign(tampered);
    assert!(
        decode_header(&tampered).is_ok(),
        "the header alone is whole"
    );
    let e = decode(&tampered).unwrap_err().to_string();
    assert!(e.contains("content digest does not match"), "{e}");
}

/// `bytes` (version 2, no origin) as the version 1 writers wrote them.
fn as_version_1(bytes: &[u8]) -> Vec<u8> {
    let header_len = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
    let v2_tail = 8 + 8 + 2 + 8 + 8;
    let mut out = Vec::new();
    out.extend_from_slice(&bytes[..3]);
    out.push(1);
    out.push(bytes[4]);
    out.extend_from_slice(&((header_len - v2_tail) as u32).to_le_bytes());
    out.extend_from_slice(&bytes[9..9 + header_len - v2_tail]);
    out.extend_from_slice(&bytes[9 + header_len..]);
    resign(out)
}

#[test]
fn version_1_batches_still_read() {
    let (h, v, d) = sample();
    let v1 = as_version_1(&encode(&h, &v, &d, EncodeOptions::default()).unwrap());
    let b = decode(&v1).unwrap();
    assert_eq!(b.header.id(), h.id());
    assert_eq!(b.header.digest, None);
    assert_eq!(b.header.origin, Origin::default());
    assert_eq!(b.versions, v);
    assert_eq!(b.columns, d);
}

#[test]
fn unknown_versions_and_bad_origins_are_refused() {
    let (h, v, d) = sample();
    let mut bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    bytes[3] = 3;
    let e = decode(&resign(bytes)).unwrap_err().to_string();
    assert!(
        e.contains("version 3") && e.contains("versions 1 to 2"),
        "{e}"
    );

    let (mut h, v, d) = with_origin();
    h.origin.zone = "x".repeat(MAX_ZONE_BYTES + 1);
    let e = encode(&h, &v, &d, EncodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("zone"), "{e}");
    h.origin.zone.clear();
    h.origin.fork = Some(Fork {
        parent_stream: 0,
        fork_seq: 3,
    });
    let e = encode(&h, &v, &d, EncodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("parent stream is 0"), "{e}");
}

/// `sample()` with its middle row a delete: the key (`id`) and NULL elsewhere.
fn with_a_delete() -> (BatchHeader, Vec<i64>, Vec<bool>, Vec<Vec<Value>>) {
    let (h, v, mut d) = sample();
    for col in d.iter_mut().skip(1) {
        col[1] = Value::Null;
    }
    (h, v, vec![false, true, false], d)
}

#[test]
fn deletes_round_trip_and_set_the_row_operations_flag() {
    let (h, v, del, d) = with_a_delete();
    for q in [None, Some(5)] {
        let opts = EncodeOptions { brotli_quality: q };
        let bytes = encode_with_deletes(&h, &v, &del, &d, opts).unwrap();
        assert_eq!(bytes[4] & 4, 4, "flag bit 2");
        let b = decode(&bytes).unwrap();
        assert_eq!(b.versions, v);
        assert_eq!(b.deleted, del);
        assert_eq!(b.columns, d);
        // The operations are content: the digest differs from the same rows
        // as upserts.
        let upserts = decode(&encode(&h, &v, &d, opts).unwrap()).unwrap();
        assert_ne!(b.header.digest, upserts.header.digest);
    }
}

#[test]
fn no_delete_means_no_flag_and_the_bytes_of_encode() {
    let (h, v, d) = sample();
    let opts = EncodeOptions {
        brotli_quality: None,
    };
    let plain = encode(&h, &v, &d, opts).unwrap();
    assert_eq!(plain[4] & 4, 0);
    assert!(decode(&plain).unwrap().deleted.is_empty());
    for del in [vec![], vec![false; 3]] {
        let mut with = encode_with_deletes(&h, &v, &del, &d, opts).unwrap();
        // Only the send time may differ (it does not: same header).
        with.truncate(plain.len());
        assert_eq!(with, plain);
    }
}

#[test]
fn hostile_row_operations_are_refused() {
    let (h, v, del, d) = with_a_delete();
    let opts = EncodeOptions {
        brotli_quality: None,
    };
    let e = encode_with_deletes(&h, &v, &del[..2], &d, opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 row operations given but there are 3 rows"),
        "{e}"
    );

    let bytes = encode_with_deletes(&h, &v, &del, &d, opts).unwrap();
    // The operations follow the three one-byte versions at the start of the
    // body: 13 bytes from the end of the frame's fixed part and header.
    let header_len = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
    let body_at = 9 + header_len + 8;
    assert_eq!(&bytes[body_at + 3..body_at + 6], &[0, 1, 0]);
    // An unknown operation: the digest (checked first) no longer matches.
    let mut bad = bytes.clone();
    bad[body_at + 4] = 7;
    assert!(decode(&resign(bad)).is_err());
    // A body with the flag cleared has bytes left over (or misreads them):
    // never a panic, always an error.
    let mut cleared = bytes.clone();
    cleared[4] &= !4;
    assert!(decode(&resign(cleared)).is_err());
    // Cut right after the versions: the operations are missing.
    let e = super::body::decode_body(
        &decode_header(&bytes).unwrap(),
        &bytes[body_at..body_at + 3],
        true,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("row operations"), "{e}");
    let e = super::body::decode_body(
        &decode_header(&bytes).unwrap(),
        &[2, 2, 6, 0, 9, 0],
        true,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("row 1: unknown row operation 9"), "{e}");
}

#[test]
fn version_1_frames_cannot_carry_row_operations() {
    let (h, v, d) = sample();
    let mut v1 = as_version_1(&encode(&h, &v, &d, EncodeOptions::default()).unwrap());
    assert!(decode(&v1).unwrap().deleted.is_empty());
    v1[4] |= 4;
    let e = decode(&resign(v1)).unwrap_err().to_string();
    assert!(e.contains("unknown flags"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_deletes_round_trip((h, v, d) in batch_parts(), seed in any::<u64>(), q in proptest::option::of(0u32..=11)) {
        let del: Vec<bool> = (0..v.len()).map(|i| (seed >> (i % 64)) & 1 == 1).collect();
        let bytes = encode_with_deletes(&h, &v, &del, &d, EncodeOptions { brotli_quality: q }).unwrap();
        let b = decode(&bytes).unwrap();
        let expect: Vec<bool> = if del.contains(&true) { del } else { vec![] };
        prop_assert_eq!(&b.deleted, &expect);
        prop_assert_eq!(&b.versions, &v);
        prop_assert_eq!(&b.columns, &d);
    }

    #[test]
    fn prop_resigned_mutations_of_deletes_never_panic((h, v, d) in batch_parts(), pos in any::<usize>(), byte in any::<u8>()) {
        let del = vec![true; v.len()];
        let mut bytes = encode_with_deletes(&h, &v, &del, &d, EncodeOptions { brotli_quality: None }).unwrap();
        let n = bytes.len() - 4;
        bytes[pos % n] = byte;
        let _ = decode(&resign(bytes));
    }
}

#[test]
fn a_resend_number_travels_in_the_header_and_is_part_of_the_identity() {
    let (mut h, v, d) = sample();
    let plain = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(plain[4] & 8, 0, "no re-send flag on an ordinary batch");
    h.resend = 3;
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(bytes[4] & 8, 8);
    let back = decode(&bytes).unwrap();
    assert_eq!(back.header.resend, 3);
    assert_eq!(decode_header(&bytes).unwrap().resend, 3);
    assert_ne!(back.header.id(), decode(&plain).unwrap().header.id());
    assert!(back.header.id().to_string().ends_with(" re-send 3"));
    // The same rows: the same digest, whatever the re-send number.
    assert_eq!(back.header.digest, decode(&plain).unwrap().header.digest);
    // The flag without the number, or a version 1 frame with the flag.
    let mut cut = plain.clone();
    cut[4] |= 8;
    let e = decode(&resign(cut)).unwrap_err().to_string();
    assert!(e.contains("re-send number"), "{e}");
    let mut v1 = as_version_1(&plain);
    v1[4] |= 8;
    let e = decode(&resign(v1)).unwrap_err().to_string();
    assert!(e.contains("unknown flags"), "{e}");
}

#[test]
fn a_batch_of_cloud_changes_carries_its_page_and_readers_refuse_nonsense() {
    let (mut h, v, d) = sample();
    let plain = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(plain[4] & 16, 0, "no changes flag on an edge batch");
    assert_eq!(decode(&plain).unwrap().header.changes, None);
    h.changes = Some(Changes {
        snapshot_page: 0,
        last_page: true,
    });
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(bytes[4] & 16, 16);
    assert_eq!(decode(&bytes).unwrap().header.changes, h.changes);
    assert_eq!(decode_header(&bytes).unwrap().changes, h.changes);
    // With a re-send number too, both fields in order.
    h.resend = 2;
    let both = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    let back = decode(&both).unwrap().header;
    assert_eq!((back.resend, back.changes), (2, h.changes));
    h.resend = 0;
    // A snapshot page: base 0, every version up to last_seq.
    let (mut s, v, d) = sample();
    s.base_seq = 0;
    s.changes = Some(Changes {
        snapshot_page: 3,
        last_page: false,
    });
    let page = encode(&s, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(decode(&page).unwrap().header.changes, s.changes);
    // Nonsense: an incremental batch that is not its last page, a snapshot
    // page with a base, a last-page byte of 2, the flag without the fields.
    h.changes = Some(Changes {
        snapshot_page: 0,
        last_page: false,
    });
    let e = decode(&encode(&h, &v, &d, EncodeOptions::default()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("incremental"), "{e}");
    let (mut b, v, d) = sample();
    b.changes = Some(Changes {
        snapshot_page: 1,
        last_page: true,
    });
    let e = decode(&encode(&b, &v, &d, EncodeOptions::default()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("base sequence 0"), "{e}");
    let mut two = bytes.clone();
    let at = 9 + u32::from_le_bytes([two[5], two[6], two[7], two[8]]) as usize - 1;
    two[at] = 2;
    let e = decode(&resign(two)).unwrap_err().to_string();
    assert!(e.contains("last-page byte"), "{e}");
    let mut cut = plain.clone();
    cut[4] |= 16;
    let e = decode(&resign(cut)).unwrap_err().to_string();
    assert!(e.contains("snapshot page"), "{e}");
    let mut v1 = as_version_1(&plain);
    v1[4] |= 16;
    let e = decode(&resign(v1)).unwrap_err().to_string();
    assert!(e.contains("unknown flags"), "{e}");
}

#[test]
fn an_up_batch_says_what_its_edge_had_pulled_and_readers_refuse_nonsense() {
    let (mut h, v, d) = sample();
    let plain = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(
        plain[4] & 32,
        0,
        "no pulled flag on a batch of a table not subscribed"
    );
    assert_eq!(decode(&plain).unwrap().header.pulled, None);
    h.pulled = Some(Pulled {
        stream_id: u64::MAX - 6,
        checkpoint: 7_412,
    });
    let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
    assert_eq!(bytes[4] & 32, 32);
    assert_eq!(decode(&bytes).unwrap().header.pulled, h.pulled);
    assert_eq!(decode_header(&bytes).unwrap().pulled, h.pulled);
    // Not part of the identity nor of the content.
    let back = decode(&bytes).unwrap();
    let before = decode(&plain).unwrap();
    assert_eq!(back.header.id(), before.header.id());
    assert_eq!(back.header.digest, before.header.digest);
    // With a re-send number too, both fields in order.
    h.resend = 3;
    let both = decode(&encode(&h, &v, &d, EncodeOptions::default()).unwrap())
        .unwrap()
        .header;
    assert_eq!((both.resend, both.pulled), (3, h.pulled));
    h.resend = 0;
    // Never on a batch of cloud changes, written or read.
    let mut c = h.clone();
    c.changes = Some(Changes {
        snapshot_page: 0,
        last_page: true,
    });
    let e = encode(&c, &v, &d, EncodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot say what its edge had pulled"), "{e}");
    c.pulled = None;
    let mut down = encode(&c, &v, &d, EncodeOptions::default()).unwrap();
    down[4] |= 32;
    let e = decode(&resign(down)).unwrap_err().to_string();
    assert!(
        e.contains("pulled stream") || e.contains("cannot say"),
        "{e}"
    );
    // The flag without the fields, a negative checkpoint, version 1.
    let mut cut = plain.clone();
    cut[4] |= 32;
    let e = decode(&resign(cut)).unwrap_err().to_string();
    assert!(e.contains("pulled stream"), "{e}");
    let mut neg = bytes.clone();
    let end = 9 + u32::from_le_bytes([neg[5], neg[6], neg[7], neg[8]]) as usize;
    neg[end - 1] = 0xff;
    let e = decode(&resign(neg)).unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
    let mut v1 = as_version_1(&plain);
    v1[4] |= 32;
    let e = decode(&resign(v1)).unwrap_err().to_string();
    assert!(e.contains("unknown flags"), "{e}");
}
