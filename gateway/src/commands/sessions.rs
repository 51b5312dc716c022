//! `interlock sessions list`, `replay`, `verify` and `tail`: reading records back from the
//! file store or from the Kinesis stream.
use std::{fmt::Write as _, io::Write as _};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use ed25519_dalek::{VerifyingKey, pkcs8::DecodePublicKey};
use time::format_description::well_known::Rfc3339;

use super::asciicast;
use crate::{
    config::Config,
    kubernetes::request_info::RequestInfo,
    recording::{
        chain::Sealer,
        head,
        record::{Direction, Record, RecordBody},
        sessions::Store,
        verify,
    },
    sinks::kinesis::{self, source},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The local file store (recording.dir).
    File,
    /// The Kinesis stream in recording.kinesis.
    Kinesis,
}

fn kinesis_config(config: &Config) -> Result<&crate::sinks::kinesis::config::Kinesis> {
    config
        .recording
        .kinesis
        .as_ref()
        .context("--from kinesis needs a recording.kinesis section in the config")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The store, or with `session` only what that session's records may be in.
fn open(config: &Config, from: Source, session: Option<&str>) -> Result<Store> {
    let store = match from {
        Source::File => match session {
            Some(id) => Store::open_session(&config.recording.dir, id)?,
            None => Store::open(&config.recording.dir)?,
        },
        Source::Kinesis => {
            let kinesis = kinesis_config(config)?;
            let (records, incomplete) = runtime()?.block_on(async {
                let client = kinesis::config::client(kinesis).await;
                source::read_all(&client, &kinesis.stream).await
            })?;
            let damage = incomplete
                .into_iter()
                .map(|id| format!("record {id}: chunks missing from the stream"))
                .collect();
            Store {
                records,
                damage,
                damaged: Vec::new(),
            }
        }
    };
    for damage in &store.damage {
        eprintln!("warning: {damage}");
    }
    Ok(store)
}

pub fn list(config: &Config, from: Source, json: bool) -> Result<()> {
    let sessions = open(config, from, None)?.sessions();
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
            format!("{} ({})", s.workload.process, s.workload.pid),
            s.original_dst,
            s.bytes_up,
            s.bytes_down,
            s.outcome
        );
    }
    Ok(())
}

/// Prints one session's records. With `mcp`, the id is an `Mcp-Session-Id`, and the MCP
/// conversation is gathered from every connection that carried it, in time order.
/// How `replay` shows what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayForm {
    Text,
    Json,
    /// The session's exec or attach stream, as asciicast v2.
    Asciicast,
}

/// `mcp`: `id` is an MCP session id (Mcp-Session-Id), whose conversation spans connections.
pub fn replay(config: &Config, from: Source, id: &str, mcp: bool, form: ReplayForm) -> Result<()> {
    // An MCP conversation spans connections anywhere in the store.
    let store = open(config, from, (!mcp).then_some(id))?;
    let records = if mcp {
        store.mcp_session_records(id)
    } else {
        store.session_records(id)
    };
    if records.is_empty() {
        bail!("no session `{id}` found; `interlock sessions list` shows the recorded ones");
    }
    if form == ReplayForm::Asciicast {
        asciicast::write(&records, std::io::stdout().lock())?;
    } else if form == ReplayForm::Json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if mcp {
        println!(
            "MCP session {id}: {} messages, numbered in time order; [connection:seq] is the \
             record (`interlock replay CONNECTION`)",
            records.len()
        );
        for (number, record) in records.iter().enumerate() {
            if let RecordBody::McpMessage(m) = &record.body {
                let ts = record.ts.format(&Rfc3339).unwrap_or_default();
                let heading = format!("#{} [{}:{}]", number + 1, record.session_id, record.seq);
                print!("{}", render_mcp(&heading, &ts, m));
            }
        }
    } else {
        print!("{}", render(&records));
    }
    Ok(())
}

/// Checks every session (or one) and returns whether all were intact.
pub fn verify(
    config: &Config,
    from: Source,
    session_id: Option<&str>,
    public_key: Option<&std::path::Path>,
    json: bool,
) -> Result<bool> {
    let key = match public_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                anyhow::anyhow!("{} is not an ed25519 public key: {e}", path.display())
            })?
        }
        None => Sealer::load(&config.recording.signing_key_path().0, false)?.verifying_key(),
    };
    let store = open(config, from, None)?;
    let mut verdicts = verify::verify(&store.records, &store.damaged, &key);
    if let Some(id) = session_id {
        verdicts.retain(|v| v.session_id == id);
        if verdicts.is_empty() {
            bail!("no session `{id}` found");
        }
    }
    // The file store also answers for its segments: none removed, cut short or replaced.
    let store_problems = match from {
        Source::File => {
            let dir = &config.recording.dir;
            head::check(dir, &key, shipped_before(dir))
                .with_context(|| format!("checking the segments of {}", dir.display()))?
        }
        Source::Kinesis => Vec::new(),
    };
    let intact = store.damage.is_empty()
        && store_problems.is_empty()
        && verdicts.iter().all(|v| v.problems.is_empty());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "store": store_problems,
                "sessions": verdicts,
            }))?
        );
    } else {
        for problem in &store_problems {
            println!("STORE  {problem}");
        }
        for v in &verdicts {
            match v.problems.as_slice() {
                [] => println!("{}  intact ({} records)", v.session_id, v.records),
                problems => {
                    for p in problems {
                        println!("{}  {}: {p}", v.session_id, v.status().to_uppercase());
                    }
                }
            }
        }
        let bad = verdicts.iter().filter(|v| !v.problems.is_empty()).count();
        println!(
            "sessions verified: {}, intact: {}, with problems: {bad}, store problems: {}{}",
            verdicts.len(),
            verdicts.len() - bad,
            store_problems.len(),
            if store.damage.is_empty() {
                String::new()
            } else {
                format!(", damaged frames: {}", store.damage.len())
            }
        );
    }
    Ok(intact)
}

/// The first segment not yet shipped, by the Kinesis sink's checkpoint: segments before it
/// may have been removed from the spool.
fn shipped_before(dir: &std::path::Path) -> u64 {
    std::fs::read(dir.join("checkpoints/kinesis.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::recording::spool::Position>(&bytes).ok())
        .map_or(0, |position| position.segment)
}

/// Streams records from Kinesis as JSON lines: a minimal SIEM consumer.
pub fn tail(config: &Config, from_latest: bool) -> Result<()> {
    let kinesis = kinesis_config(config)?;
    runtime()?.block_on(async {
        let client = kinesis::config::client(kinesis).await;
        let mut stdout = std::io::stdout().lock();
        source::tail(&client, &kinesis.stream, from_latest, |raw| {
            stdout.write_all(raw)?;
            stdout.write_all(b"\n")?;
            stdout.flush()
        })
        .await
    })?;
    Ok(())
}

/// An API-server request as RBAC reads it: `delete namespaces team`,
/// `connect pods/exec team/web`, `get /version`.
fn kube_operation(info: &RequestInfo) -> String {
    let Some(resource) = info.resource_path() else {
        return format!("{} {}", info.verb, info.path);
    };
    let group = match info.api_group.as_deref() {
        Some("") | None => String::new(),
        Some(group) => format!(".{group}"),
    };
    let object = match (&info.namespace, &info.name) {
        (Some(ns), Some(name)) if resource != "namespaces" => format!(" {ns}/{name}"),
        (_, Some(name)) => format!(" {name}"),
        (Some(ns), None) => format!(" in {ns}"),
        (None, None) => String::new(),
    };
    let dry_run = if info.dry_run { " (dry run)" } else { "" };
    format!("{} {resource}{group}{object}{dry_run}", info.verb)
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
                    s.workload.pid,
                    s.workload.process,
                    s.workload.cgroup.as_deref().unwrap_or("?"),
                    s.workload.cgroup_id
                );
                if let Some(pod) = &s.workload.kubernetes {
                    let _ = writeln!(
                        out,
                        "  pod:    {}/{} container {}, service account {} (uid {})",
                        pod.namespace,
                        pod.pod,
                        pod.container.as_deref().unwrap_or("?"),
                        pod.service_account,
                        pod.uid
                    );
                }
                let _ = writeln!(out, "  cmd:    {}", s.workload.cmdline.join(" "));
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
            RecordBody::HttpRequest(head) => {
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  client -> upstream  {} {} {}",
                    record.seq, head.method, head.uri, head.version
                );
                for (name, value) in &head.headers {
                    let _ = writeln!(out, "    {name}: {value}");
                }
            }
            RecordBody::HttpResponse(head) => {
                let by = if head.generated_by_gateway {
                    "  (answered by Interlock)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  upstream -> client  HTTP {}{by}",
                    record.seq, head.status
                );
                for (name, value) in &head.headers {
                    let _ = writeln!(out, "    {name}: {value}");
                }
            }
            RecordBody::McpMessage(m) => {
                out.push_str(&render_mcp(&format!("#{}", record.seq), &ts, m))
            }
            RecordBody::KubeRequest(request) => {
                let user = request
                    .user
                    .as_ref()
                    .and_then(|u| u.subject.as_deref())
                    .map(|s| format!("  as {s}"))
                    .unwrap_or_default();
                let impersonating = request
                    .impersonate
                    .as_ref()
                    .and_then(|i| i.user.as_deref())
                    .map(|u| format!("  impersonating {u}"))
                    .unwrap_or_default();
                let policy = match &request.policy.rule {
                    Some(rule) => format!("  ({:?} by rule {rule})", request.policy.action),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  kube [{}] {}{user}{impersonating}{policy}",
                    record.seq,
                    request.stream,
                    kube_operation(&request.info)
                );
            }
            RecordBody::KubeChannel(message) => {
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  kube [{}] {:?}, {} bytes",
                    record.seq,
                    message.stream,
                    message.channel,
                    message.data.len()
                );
                out.push_str(&show_bytes(&message.data));
            }
            RecordBody::KubePortForward(forward) => {
                let arrow = match forward.direction {
                    Direction::Up => "->",
                    Direction::Down => "<-",
                };
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  kube [{}] port-forward {} connection {} {arrow} {:?} {:?}, {} bytes",
                    record.seq,
                    forward.stream,
                    forward.port,
                    forward.connection,
                    forward.channel,
                    forward.event,
                    forward.data.len()
                );
                out.push_str(&show_bytes(&forward.data));
            }
            RecordBody::KubeResponse(response) => {
                let what = match (&response.object_kind, &response.name) {
                    (Some(kind), Some(name)) => format!(" {kind} {name}"),
                    (Some(kind), None) => format!(" {kind}"),
                    _ => String::new(),
                };
                let mut details = Vec::new();
                if let Some(rv) = &response.resource_version {
                    details.push(format!("resourceVersion {rv}"));
                }
                if let Some(items) = response.items {
                    details.push(format!("{items} items"));
                }
                if let Some(events) = response.events {
                    details.push(format!("{events} events"));
                }
                if let (Some(reason), Some(message)) = (&response.reason, &response.message) {
                    details.push(format!("{reason}: {message}"));
                }
                if response.generated_by_gateway {
                    details.push("answered by Interlock".into());
                }
                let details = if details.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", details.join(", "))
                };
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  kube [{}] -> {}{what} in {:.1} ms{details}",
                    record.seq, response.stream, response.code, response.latency_ms
                );
            }
            RecordBody::Masked(masked) => {
                let counts: Vec<String> = masked
                    .detectors
                    .0
                    .iter()
                    .map(|(name, n)| format!("{name} ×{n}"))
                    .collect();
                let who = if masked.peer_saw_masked {
                    "peer and record"
                } else {
                    "record only"
                };
                let _ = writeln!(
                    out,
                    "
#{} {ts}  masked ({who}, {:?}): {}",
                    record.seq,
                    masked.direction,
                    counts.join(", ")
                );
            }
            RecordBody::HoldCreated(hold) => {
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  HELD {} by rule {} for approval (hold {}, until {})",
                    record.seq,
                    hold.kube
                        .as_deref()
                        .map(kube_operation)
                        .or_else(|| hold.tool.clone())
                        .unwrap_or_else(|| hold.method.clone()),
                    hold.rule.as_deref().unwrap_or("default"),
                    hold.hold_id,
                    hold.expires_at.format(&Rfc3339).unwrap_or_default()
                );
            }
            RecordBody::TokenCheck(check) => {
                let who = check
                    .token
                    .as_ref()
                    .map(|t| format!(" for {}", t.subject))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  token {:?}{who}, {}{}",
                    record.seq,
                    check.outcome,
                    if check.allowed {
                        "let through"
                    } else {
                        "refused"
                    },
                    check
                        .reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
            }
            RecordBody::HoldDecided(decision) => {
                let by = decision
                    .approver
                    .as_ref()
                    .and_then(|a| a.email.clone().or(a.subject.clone()))
                    .map(|who| format!(" by {who}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\n#{} {ts}  hold {} {}{by} after {} ms: {}",
                    record.seq,
                    decision.hold_id,
                    decision.outcome.as_str(),
                    decision.waited_ms,
                    decision.reason.as_deref().unwrap_or("-")
                );
            }
            RecordBody::RegistrationsAdopted(adopted) => {
                let _ = writeln!(
                    out,
                    "gateway restart on {}: {} workloads intercepted again; their sessions open at the restart were cut",
                    adopted.node,
                    adopted.cgroups.len()
                );
                for (id, path) in &adopted.cgroups {
                    let _ = writeln!(out, "    cgroup {id} {path}");
                }
            }
            RecordBody::SpoolGap(gap) => {
                let _ = writeln!(
                    out,
                    "spool gap: {} sessions went through UNRECORDED between {} and {}",
                    gap.sessions,
                    gap.first.format(&Rfc3339).unwrap_or_default(),
                    gap.last.format(&Rfc3339).unwrap_or_default()
                );
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

/// One MCP message as a line of conversation.
fn render_mcp(heading: &str, ts: &str, m: &crate::recording::record::McpMessage) -> String {
    let arrow = match m.direction {
        Direction::Up => "MCP client -> server",
        Direction::Down => "MCP server -> client",
    };
    let id = m
        .jsonrpc_id
        .as_ref()
        .map(|id| format!(" id={id}"))
        .unwrap_or_default();
    let mut line = format!("\n{heading} {ts}  {arrow}  {}{id}", m.message_kind);
    if let Some(method) = &m.method {
        line.push_str(&format!(" {method}"));
    }
    if let Some(tool) = &m.tool {
        line.push_str(&format!(" tool={tool}"));
    }
    if let Some(uri) = &m.resource_uri {
        line.push_str(&format!(" uri={uri}"));
    }
    if let Some(prompt) = &m.prompt {
        line.push_str(&format!(" prompt={prompt}"));
    }
    if let Some(session) = &m.mcp_session_id {
        line.push_str(&format!("  [mcp session {session}]"));
    }
    line.push('\n');
    for (label, value) in [
        ("arguments", &m.arguments),
        ("result", &m.result),
        ("error", &m.error),
    ] {
        if let Some(value) = value {
            line.push_str(&format!("    {label}: {}\n", shortened(&value.to_string())));
        }
    }
    if let Some(truncated) = &m.truncated {
        line.push_str(&format!(
            "    truncated: {} bytes, over the {}-byte limit (max_body_bytes), so not read as \
             JSON-RPC; the bytes themselves are in the session's data records (interlock replay)\n",
            truncated.bytes, truncated.limit
        ));
    }
    if let Some(decision) = &m.policy {
        line.push_str(&format!(
            "    policy: {:?} (rule {}){}\n",
            decision.action,
            decision.rule.as_deref().unwrap_or("default"),
            decision
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    line
}

/// Values longer than this are cut in the human form; `--json` has them whole.
const SHOWN_VALUE_CHARS: usize = 600;

fn shortened(value: &str) -> String {
    match value.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((cut, _)) => format!(
            "{}… ({} bytes in all; --json shows it whole)",
            &value[..cut],
            value.len()
        ),
        None => value.into(),
    }
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
    fn long_values_are_cut_on_a_char_boundary_and_say_so() {
        let long = "é".repeat(SHOWN_VALUE_CHARS + 5);
        let shown = shortened(&long);
        assert!(shown.starts_with(&"é".repeat(SHOWN_VALUE_CHARS)), "{shown}");
        assert!(shown.ends_with(&format!(
            "… ({} bytes in all; --json shows it whole)",
            long.len()
        )));
        assert_eq!(shortened("short"), "short");
    }

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
