use super::{request_builder::entries_for, source::Assembler};

fn record_json(session: &str, body_len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema_version": 1, "record_id": format!("{session}:3"), "session_id": session,
        "seq": 3, "ts": "2026-01-01T00:00:00Z", "prev_hash": null, "kind": "data",
        "direction": "up", "offset": 0, "len": body_len, "data": "A".repeat(body_len),
    }))
    .unwrap()
}

#[test]
fn small_records_are_one_entry_keyed_by_session() {
    let payload = record_json("sess-a", 10);
    let entries = entries_for(&payload, 1 << 20).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].partition_key, "sess-a");
    assert_eq!(&entries[0].data[..], &payload[..]);
}

#[test]
fn large_records_split_within_the_limit_and_reassemble_in_any_order() {
    let payload = record_json("sess-b", 3 << 20);
    let limit = 1 << 20;
    let entries = entries_for(&payload, limit).unwrap();
    assert!(entries.len() >= 4, "{} chunks", entries.len());
    for e in &entries {
        assert!(
            e.size() <= limit,
            "chunk of {} bytes exceeds the limit",
            e.size()
        );
        assert_eq!(e.partition_key, "sess-b");
    }
    let mut assembler = Assembler::default();
    let mut whole = None;
    for e in entries.iter().rev() {
        if let Some(done) = assembler.feed(&e.data).unwrap() {
            whole = Some(done);
        }
    }
    assert_eq!(whole.unwrap(), payload);
    assert!(assembler.incomplete().is_empty());
}

#[test]
fn a_record_exactly_at_the_limit_is_not_split() {
    let payload = record_json("s", 100);
    let limit = payload.len() + 1;
    assert_eq!(entries_for(&payload, limit).unwrap().len(), 1);
    assert!(
        entries_for(&payload, limit - 1).is_err(),
        "too small a limit to chunk into is an error"
    );
}

#[test]
fn garbage_frames_are_refused_not_shipped() {
    assert!(entries_for(b"\xff\x00garbage", 1 << 20).is_err());
}
