//! The durable session stream, against a real kinesalite on loopback: volume, sink outage,
//! gateway crash, partial failures and throttling, tampering, a full disk, and bad input.
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::{kinesis::*, *};
use serde_json::Value;

const STREAM: &str = "interlock-sessions";

fn kinesis_config(endpoint: &str, extra: &str) -> String {
    format!(
        "recording:\n  dir: ./records\n  kinesis: {{ stream: {STREAM}, region: us-east-1, \
         endpoint: \"{endpoint}\", linger: 50ms }}\n{extra}"
    )
}

fn echo() -> EchoServer {
    EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn echo_gateway(echo: &EchoServer, config: &str) -> Gateway {
    Gateway::start(
        &[Target {
            name: "echo",
            address: echo.addr,
        }],
        config,
    )
}

fn chatty(
    gw: &Gateway,
    echo: &EchoServer,
    sessions: usize,
    rounds: usize,
    parallel: usize,
) -> Value {
    let probe = probe_bin();
    let out = gw.wrap(&[
        probe.to_str().unwrap(),
        "chatty",
        &echo.addr.to_string(),
        &sessions.to_string(),
        &rounds.to_string(),
        &parallel.to_string(),
    ]);
    probe_json(&out)
}

fn wait_shipped(gw: &Gateway, records: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let shipped = gw.metric("interlock_records_shipped_total").unwrap_or(0.0);
        if shipped >= records {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {shipped} of {records} records shipped\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn verify_json(gw: &Gateway, from: &str) -> (Output, Vec<Value>) {
    let out = gw
        .cli(&["verify", "--json", "--from", from])
        .output()
        .unwrap();
    let verdict: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let sessions = verdict["sessions"].as_array().cloned().unwrap_or_default();
    (out, sessions)
}

fn setup_stream(kinesalite: &Kinesalite, shards: i32) {
    runtime().block_on(async {
        let client = client(&kinesalite.endpoint()).await;
        create_stream(&client, STREAM, shards).await;
    });
}

#[test]
fn volume_1000_sessions_100k_records_shipped_in_order_without_loss() {
    let kinesalite = Kinesalite::start(None);
    setup_stream(&kinesalite, 4);
    let echo = echo();
    let gw = echo_gateway(&echo, &kinesis_config(&kinesalite.endpoint(), ""));

    // 1000 sessions x (start + 49 round trips x 2 chunks + end) = 100,000 records.
    let run = chatty(&gw, &echo, 1000, 49, 16);
    assert_eq!(run["ok"], 1000, "{run}");
    wait_shipped(&gw, 100_000.0, Duration::from_secs(240));

    // Read back independently with the SDK.
    let raw = runtime().block_on(async {
        let client = client(&kinesalite.endpoint()).await;
        read_raw(&client, STREAM).await
    });
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for (_, data) in &raw {
        let record: Value = serde_json::from_slice(data).unwrap();
        let id = record["record_id"].as_str().unwrap().to_string();
        if !seen.insert(id) {
            continue; // at-least-once: a duplicate, dropped by record id
        }
        let session = record["session_id"].as_str().unwrap().to_string();
        let seq = record["seq"].as_i64().unwrap();
        let last = last_seq.entry(session.clone()).or_insert(-1);
        assert_eq!(
            seq,
            *last + 1,
            "session {session}: seq {seq} after {last}: order broken"
        );
        *last = seq;
    }
    assert_eq!(seen.len(), 100_000, "distinct records in the stream");
    assert_eq!(last_seq.len(), 1000);
    assert!(last_seq.values().all(|&s| s == 99));

    // The same through Interlock's own reader: every chain and seal verifies.
    let (out, verdicts) = verify_json(&gw, "kinesis");
    assert_eq!(verdicts.len(), 1000);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listed = gw
        .cli(&["sessions", "list", "--json", "--from", "kinesis"])
        .output()
        .unwrap();
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 1000);
    assert!(
        listed
            .iter()
            .all(|s| s["outcome"] == "closed" && s["records"] == 100)
    );
}

#[test]
fn sink_outage_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut kinesalite = Kinesalite::start(Some(store.path()));
    setup_stream(&kinesalite, 1);
    let echo = echo();
    let gw = echo_gateway(&echo, &kinesis_config(&kinesalite.endpoint(), ""));

    assert_eq!(chatty(&gw, &echo, 50, 5, 8)["ok"], 50);
    wait_shipped(&gw, 600.0, Duration::from_secs(60));

    kinesalite.stop();
    assert_eq!(
        chatty(&gw, &echo, 50, 5, 8)["ok"],
        50,
        "sessions go on while the sink is down"
    );
    thread::sleep(Duration::from_secs(2));
    assert!(
        gw.metric("interlock_ship_retries_total").unwrap() > 0.0,
        "the sink kept retrying"
    );
    assert_eq!(gw.metric("interlock_records_shipped_total"), Some(600.0));

    kinesalite.restart();
    wait_shipped(&gw, 1200.0, Duration::from_secs(90));
    let (out, verdicts) = verify_json(&gw, "kinesis");
    assert_eq!(verdicts.len(), 100);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn gateway_crash_replays_the_spool_and_shows_the_interrupted_session_unsealed() {
    let kinesalite = Kinesalite::start(None);
    setup_stream(&kinesalite, 2);
    let echo = echo();
    let mut gw = echo_gateway(&echo, &kinesis_config(&kinesalite.endpoint(), ""));
    let probe = probe_bin();
    let _held = Proc(
        gw.wrap_cmd(
            None,
            &[
                probe.to_str().unwrap(),
                "hold",
                &echo.addr.to_string(),
                "30000",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    assert_eq!(chatty(&gw, &echo, 20, 5, 4)["ok"], 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .sessions()
        .iter()
        .filter(|s| s["outcome"] == "unfinished")
        .count()
        != 1
    {
        assert!(Instant::now() < deadline, "the held session never started");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));

    gw.kill9();
    gw.launch();
    // Whatever was not acknowledged before the crash is shipped after the restart, and so is
    // the restarted gateway's record of taking the held session's workload over.
    let deadline = Instant::now() + Duration::from_secs(60);
    let is_restart = |v: &Value| {
        v["session_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("gateway-start-"))
    };
    let (verdicts, restarts) = loop {
        let (_, all) = verify_json(&gw, "kinesis");
        let (restarts, verdicts): (Vec<Value>, Vec<Value>) = all.into_iter().partition(is_restart);
        if verdicts.len() == 21 && restarts.len() == 1 || Instant::now() > deadline {
            break (verdicts, restarts);
        }
        thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(verdicts.len(), 21, "{verdicts:#?}");
    assert_eq!(restarts.len(), 1, "{restarts:#?}");
    assert!(restarts[0]["problems"].as_array().unwrap().is_empty());
    let interrupted: Vec<&Value> = verdicts
        .iter()
        .filter(|v| !v["problems"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(
        interrupted.len(),
        1,
        "only the held session is incomplete: {interrupted:#?}"
    );
    let problems = interrupted[0]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0]["problem"], "unsealed",
        "its chain is intact, only the seal is missing"
    );
}

#[test]
fn partial_failures_and_throttling_resend_only_what_failed() {
    let kinesalite = Kinesalite::start(None);
    setup_stream(&kinesalite, 1);
    let proxy = FaultProxy::start(kinesalite.addr, 2, 4);
    let echo = echo();
    let gw = echo_gateway(&echo, &kinesis_config(&proxy.endpoint(), ""));

    assert_eq!(chatty(&gw, &echo, 30, 5, 4)["ok"], 30);
    wait_shipped(&gw, 360.0, Duration::from_secs(60));

    let log = proxy.log.lock().unwrap();
    assert_eq!(log.throttled_calls, 2, "{log:?}");
    assert!(log.failed_records > 0, "{log:?}");
    assert_eq!(log.forwarded.len(), 360, "every record reached the stream");
    let duplicated = log.forwarded.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated, 0, "only the failed records were resent");
    assert_eq!(
        gw.metric("interlock_records_resent_total"),
        Some(log.failed_records as f64)
    );
    drop(log);
    let (out, verdicts) = verify_json(&gw, "kinesis");
    assert_eq!(verdicts.len(), 30);
    assert!(out.status.success());
}

/// Frames of the newest segment: (offset, length) of each payload.
fn frames(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[pos..pos + 4].try_into().unwrap()) as usize;
        out.push((pos + 8, len));
        pos += 8 + len;
    }
    out
}

fn segment_file(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = fs::read_dir(dir.join("records/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().len() > 0)
        .expect("a segment with records")
}

fn verify_text(gw: &Gateway) -> (bool, String) {
    let out = gw.cli(&["verify"]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn tampering_and_dropped_records_are_named_by_session_and_seq() {
    let echo = echo();
    let mut gw = echo_gateway(&echo, "");
    assert_eq!(chatty(&gw, &echo, 3, 3, 1)["ok"], 3);
    gw.wait_sessions_ended(3);
    gw.stop();
    let (ok, text) = verify_text(&gw);
    assert!(ok, "{text}");

    let path = segment_file(gw.dir.path());
    let original = fs::read(&path).unwrap();
    let all = frames(&original);
    // A data record in the middle of a session: seq 2.
    let (target_index, &(offset, len)) = all
        .iter()
        .enumerate()
        .find(|(_, (o, l))| {
            let r: Value = serde_json::from_slice(&original[*o..*o + *l]).unwrap();
            r["seq"] == 2 && r["kind"] == "data"
        })
        .unwrap();
    let record: Value = serde_json::from_slice(&original[offset..offset + len]).unwrap();
    let session = record["session_id"].as_str().unwrap().to_string();

    // 1. Altered content with a recomputed CRC: only the hash chain can tell.
    let mut forged = original.clone();
    let data_at = offset + find(&original[offset..offset + len], b"\"data\":\"").unwrap() + 8;
    forged[data_at] = if forged[data_at] == b'A' { b'B' } else { b'A' };
    let crc = crc32fast::hash(&forged[offset..offset + len]);
    forged[offset - 4..offset].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &forged).unwrap();
    let (ok, text) = verify_text(&gw);
    assert!(!ok);
    assert!(
        text.contains(&format!("{session}  TAMPERED: tampered at seq 2")),
        "{text}"
    );

    // 2. One flipped byte, CRC left alone.
    let mut flipped = original.clone();
    flipped[data_at] ^= 0x01;
    fs::write(&path, &flipped).unwrap();
    let (ok, text) = verify_text(&gw);
    assert!(!ok);
    assert!(
        text.contains(&format!("{session}  TAMPERED: tampered at seq 2")),
        "{text}"
    );

    // 3. One record dropped.
    let mut dropped = original[..offset - 8].to_vec();
    dropped.extend_from_slice(&original[offset + len..]);
    assert!(target_index > 0);
    fs::write(&path, &dropped).unwrap();
    let (ok, text) = verify_text(&gw);
    assert!(!ok);
    assert!(
        text.contains(&format!("{session}  MISSING: missing record seq 2")),
        "{text}"
    );

    fs::write(&path, &original).unwrap();
    assert!(verify_text(&gw).0);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        Tmpfs(path.to_path_buf())
    }
}

/// A gateway whose record store is a small tmpfs; `spool` is the YAML of recording.spool.
fn gateway_on_tmpfs(
    echo: &EchoServer,
    size: &str,
    spool: &str,
) -> (tempfile::TempDir, Tmpfs, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    let tmpfs = Tmpfs::mount(&records, size);
    let config = format!(
        "recording:\n  dir: {}\n  spool: {spool}\n",
        records.display()
    );
    let gw = echo_gateway(echo, &config);
    (dir, tmpfs, gw)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_spool_refuses_new_sessions_keeps_established_ones_and_corrupts_nothing() {
    let echo = echo();
    let (_dir, _tmpfs, mut gw) =
        gateway_on_tmpfs(&echo, "4m", "{ max_bytes: 256KiB, when_full: fail_closed }");
    let probe = probe_bin();
    let held = gw
        .wrap_cmd(
            None,
            &[
                probe.to_str().unwrap(),
                "hold",
                &echo.addr.to_string(),
                "3000",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));

    let run = chatty(&gw, &echo, 400, 10, 4);
    assert!(
        run["failed"].as_u64().unwrap() > 0,
        "sessions past the limit are refused: {run}"
    );
    assert!(
        gw.metric("interlock_sessions_refused_spool_full_total")
            .unwrap()
            > 0.0
    );
    assert!(
        gw.log()
            .contains("new session refused (when_full: fail_closed)")
    );
    let held = held.wait_with_output().unwrap();
    let held: Value = serde_json::from_slice(&held.stdout).unwrap();
    assert_eq!(
        held["ok"], true,
        "the established session kept working: {held}"
    );
    gw.stop();

    // Nothing is corrupted: every frame reads back and every recorded session verifies.
    let list = gw.cli(&["sessions", "list", "--json"]).output().unwrap();
    assert!(
        list.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let (ok, text) = verify_text(&gw);
    assert!(ok, "{text}");
}

#[test]
fn disk_full_fails_writes_cleanly() {
    let echo = echo();
    // The limit is above the disk: the disk fills first.
    let (_dir, _tmpfs, mut gw) = gateway_on_tmpfs(&echo, "1m", "{ max_bytes: 1GiB }");
    let run = chatty(&gw, &echo, 300, 10, 4);
    assert!(run["failed"].as_u64().unwrap() > 0, "{run}");
    assert!(gw.metric("interlock_record_write_errors_total").unwrap() > 0.0);
    assert!(
        gw.log().contains("Check free space"),
        "the error says what to do"
    );
    gw.stop();
    // Failed writes were cut back: no torn or corrupt frame anywhere.
    let list = gw.cli(&["sessions", "list", "--json"]).output().unwrap();
    assert!(list.status.success());
    assert!(
        list.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
}

#[test]
fn garbage_segments_and_truncated_tails_are_reported_not_fatal() {
    let echo = echo();
    let mut gw = echo_gateway(&echo, "");
    assert_eq!(chatty(&gw, &echo, 2, 2, 1)["ok"], 2);
    gw.wait_sessions_ended(2);
    gw.stop();
    let path = segment_file(gw.dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 7);
    fs::write(&path, &bytes).unwrap();
    fs::write(
        path.with_file_name("00000000000000009999.seg"),
        b"\x13\x37 not a segment at all",
    )
    .unwrap();

    let list = gw.cli(&["sessions", "list", "--json"]).output().unwrap();
    assert!(list.status.success());
    let stderr = String::from_utf8_lossy(&list.stderr);
    assert!(stderr.contains("truncated frame"), "{stderr}");
    assert!(stderr.contains("00000000000000009999.seg"), "{stderr}");
    let sessions: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(sessions.len(), 2);

    let out = gw.cli(&["verify"]).output().unwrap();
    assert!(!out.status.success(), "damage is a problem");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("UNSEALED"),
        "the cut session lost its end: {text}"
    );
    assert!(
        text.lines().any(|l| l.contains("  intact (")),
        "the other session is intact: {text}"
    );
}

#[test]
fn records_larger_than_the_stream_allows_are_chunked_and_reassembled() {
    let kinesalite = Kinesalite::start(None);
    setup_stream(&kinesalite, 1);
    let web = HttpServer::start(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    web.add_file("big.bin", &big);
    let config = format!(
        "recording:\n  dir: ./records\n  kinesis: {{ stream: {STREAM}, region: us-east-1, \
         endpoint: \"{}\", linger: 50ms, max_record_bytes: 4KiB }}\n",
        kinesalite.endpoint()
    );
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: web.addr,
        }],
        &config,
    );
    let out = gw.wrap(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("http://{}/big.bin", web.addr),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200000");
    let sessions = gw.wait_sessions_ended(1);
    let records = sessions[0]["records"].as_u64().unwrap();

    // Every Kinesis record fits the limit; the big ones went as chunks.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (out, verdicts) = verify_json(&gw, "kinesis");
        if out.status.success() && verdicts.len() == 1 {
            assert_eq!(verdicts[0]["records"], records, "every record reassembled");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        thread::sleep(Duration::from_millis(300));
    }
    let raw = runtime().block_on(async {
        let client = client(&kinesalite.endpoint()).await;
        read_raw(&client, STREAM).await
    });
    let session_id = sessions[0]["id"].as_str().unwrap();
    assert!(
        raw.iter()
            .all(|(_, data)| data.len() + session_id.len() <= 4096),
        "a record over the limit"
    );
    let chunks = raw
        .iter()
        .filter(|(_, d)| serde_json::from_slice::<Value>(d).unwrap()["chunk_of"].is_string())
        .count();
    assert!(
        chunks > 50,
        "the 16 KiB data records were split: {chunks} chunks"
    );
}

#[test]
fn kinesis_credentials_come_from_the_pod_identity_agent_and_are_renewed_as_they_expire() {
    let kinesalite = Kinesalite::start(None);
    setup_stream(&kinesalite, 2);
    // Records every call's signing key on its way to kinesalite.
    let signed = FaultProxy::start(kinesalite.addr, 0, 0);
    let echo = echo();
    let mut gw = Gateway::configure(&format!(
        "targets:\n  - name: echo\n    address: \"{}\"\n{}",
        echo.addr,
        kinesis_config(&signed.endpoint(), "")
    ));
    // What EKS Pod Identity gives a pod: the agent's URL and a token file.
    let token = format!("pod-identity-token-{}", std::process::id());
    let token_file = gw.dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, &token).unwrap();
    let agent = CredentialEndpoint::start(&token, Duration::from_secs(15));
    gw.launch_adjusted(|command| {
        command
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url())
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    });

    // Sessions for longer than a key lives: 4 rounds of 10, 7 s apart.
    let mut sessions = 0;
    for round in 0..4 {
        if round > 0 {
            thread::sleep(Duration::from_secs(7));
        }
        let run = chatty(&gw, &echo, 10, 2, 5);
        assert_eq!(run["ok"], 10, "{run}");
        sessions += 10;
        // start + 2 round trips of 2 chunks + end, each.
        wait_shipped(&gw, (sessions * 6) as f64, Duration::from_secs(60));
    }

    // The agent was asked with the token every time, and again once a key had expired.
    let calls = agent.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|(authorization, _)| *authorization == token),
        "{calls:?}"
    );
    let issued: HashSet<&String> = calls.iter().map(|(_, key)| key).collect();
    assert!(
        issued.len() >= 2,
        "no key was renewed: {calls:?}\n{}",
        gw.log()
    );
    // Every call to Kinesis was signed with a key the agent issued, the later ones renewed.
    let used: Vec<String> = signed.log.lock().unwrap().access_keys.clone();
    assert!(
        used.iter().all(|key| issued.contains(key)),
        "signed with keys the agent never issued: {used:?}"
    );
    let distinct: HashSet<&String> = used.iter().collect();
    assert!(distinct.len() >= 2, "every call used one key: {used:?}");

    // Nothing lost across the renewals; duplicates only as at-least-once allows.
    let raw = runtime().block_on(async {
        let client = client(&kinesalite.endpoint()).await;
        read_raw(&client, STREAM).await
    });
    let ids: HashSet<String> = raw
        .iter()
        .map(|(_, data)| {
            let record: Value = serde_json::from_slice(data).unwrap();
            record["record_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), sessions * 6, "distinct records in the stream");
}
