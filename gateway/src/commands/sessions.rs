//! `interlock sessions list` and `interlock replay`: reading the record store.
use std::{fmt::Write as _, path::Path};

use anyhow::{Result, bail};
use time::format_description::well_known::Rfc3339;

use crate::recording::{
    record::{Direction, Record, RecordBody},
    sessions::Store,
};

fn open(dir: &Path) -> Result<Store> {
    let store = Store::open(dir)?;
    for damage in &store.damage {
        eprintln!("warning: {damage}");
    }
    Ok(store)
}

pub fn list(dir: &Path, json: bool) -> Result<()> {
    let sessions = open(dir)?.sessions();
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<12}  {:<24}  {:<22}  {:>10}  {:>10}  OUTCOME",
        "ID", "STARTED", "TARGET", "PROCESS", "ORIGINAL DST", "UP", "DOWN"
    );
    for s in sessions {
        let started = s.started_at.format(&Rfc3339).unwrap_or_default();
        println!(
            "{:<36}  {:<20.20}  {:<12}  {:<24}  {:<22}  {:>10}  {:>10}  {}",
            s.id,
            started,
            s.target,
            format!("{} ({})", s.process, s.pid),
            s.original_dst,
            s.bytes_up,
            s.bytes_down,
            s.outcome
        );
    }
    Ok(())
}

pub fn replay(dir: &Path, session_id: &str, json: bool) -> Result<()> {
    let store = open(dir)?;
    let records = store.session_records(session_id);
    if records.is_empty() {
        bail!(
            "no session `{session_id}` in {}; `interlock sessions list` shows the recorded ones",
            dir.display()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        print!("{}", render(&records));
    }
    Ok(())
}

/// The human form: who, what, when, then the data in both directions.
pub fn render(records: &[&Record]) -> String {
    let mut out = String::new();
    let mut started = None;
    for record in records {
        let ts = record.ts.format(&Rfc3339).unwrap_or_default();
        match &record.body {
            RecordBody::SessionStart(s) => {
                started = Some(record.ts);
                let _ = writeln!(
                    out,
                    "session {}  (schema v{})",
                    record.session_id, record.schema_version
                );
                let _ = writeln!(out, "  when:   {ts} on node {}", s.node);
                let _ = writeln!(
                    out,
                    "  who:    pid {} `{}`  cgroup {} (id {})",
                    s.pid,
                    s.process,
                    s.cgroup.as_deref().unwrap_or("?"),
                    s.cgroup_id
                );
                let _ = writeln!(out, "  cmd:    {}", s.cmdline.join(" "));
                let _ = writeln!(
                    out,
                    "  what:   {} -> {} (target {}, {})",
                    s.client_addr, s.original_dst, s.target, s.protocol
                );
            }
            RecordBody::Data(chunk) => {
                let arrow = match chunk.direction {
                    Direction::Up => "client -> upstream",
                    Direction::Down => "upstream -> client",
                };
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  {arrow}  {} bytes at offset {}",
                    record.seq, chunk.len, chunk.offset
                );
                out.push_str(&show_bytes(&chunk.data));
            }
            RecordBody::SessionEnd(end) => {
                let elapsed = started.map(|s| record.ts - s);
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  session end: {}  ({} bytes up, {} bytes down, {} ms){}",
                    record.seq,
                    end.outcome.as_str(),
                    end.bytes_up,
                    end.bytes_down,
                    elapsed.map_or(end.duration_ms as i128, |d| d.whole_milliseconds()),
                    end.error
                        .as_deref()
                        .map(|e| format!("\n  error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    if !records
        .iter()
        .any(|r| matches!(r.body, RecordBody::SessionEnd(_)))
    {
        out.push_str(
            "\n(no session_end: the session is still open, or the gateway stopped abruptly)\n",
        );
    }
    out
}

/// Text as text (indented), anything else as a hex dump.
fn show_bytes(data: &[u8]) -> String {
    let printable = |c: char| !c.is_control() || matches!(c, '\n' | '\r' | '\t');
    match std::str::from_utf8(data) {
        Ok(text) if text.chars().all(printable) => {
            let mut out = String::new();
            for line in text.split_inclusive('\n') {
                let _ = writeln!(out, "    | {}", line.trim_end_matches(['\r', '\n']));
            }
            out
        }
        _ => hex_dump(data),
    }
}

fn hex_dump(data: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in data.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = row
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "    {:08x}  {:<47}  |{ascii}|", i * 16, hex.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_shown_as_text_and_binary_as_hex() {
        assert_eq!(
            show_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            "    | GET / HTTP/1.1\n    | Host: x\n"
        );
        let dump = show_bytes(&[0u8, 1, 2, 0xff, b'A']);
        assert!(dump.contains("00 01 02 ff 41"), "{dump}");
        assert!(dump.contains("|....A|"), "{dump}");
    }
}
