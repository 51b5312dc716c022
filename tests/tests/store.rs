//! The file store answers for its segments, not only for the sessions in them: a segment
//! deleted, cut short or swapped on a copy of the store is named by `verify`, while segments
//! removed after shipping stay verifiable through the sink's checkpoint.
use std::{fs, net::SocketAddr, path::Path, process::Command};

use interlock_e2e::*;

fn copy_store(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn segments(store: &Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments
}

/// `interlock verify` on a store at `dir/records`: its exit code and output.
fn verify(dir: &Path) -> (i32, String) {
    let config = dir.join("interlock.yaml");
    fs::write(&config, "recording:\n  dir: ./records\n").unwrap();
    let out = Command::new(interlock_bin())
        .args(["verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_deleted_truncated_or_replaced_segment_is_named_and_shipped_ones_are_not() {
    let server = HttpServer::start(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let mut gw = Gateway::start(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "recording:\n  dir: ./records\n  segment_bytes: 2KiB\n",
    );
    let url = format!("http://{}/index.html", server.addr);
    for _ in 0..6 {
        assert!(gw.wrap(&["curl", "-sS", &url]).status.success());
    }
    gw.wait_sessions_ended(6);
    gw.stop();
    let store = gw.dir.path().join("records");
    let all = segments(&store);
    assert!(all.len() >= 4, "several segments: {all:?}");
    let (code, out) = verify(gw.dir.path());
    assert_eq!(code, 0, "the store as written is intact: {out}");

    let check = |name: &str, damage: &dyn Fn(&Path), expected: &str| {
        let copy = tempfile::tempdir().unwrap();
        copy_store(&store, &copy.path().join("records"));
        damage(&copy.path().join("records"));
        let (code, out) = verify(copy.path());
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains(expected),
            "{name}: expected `{expected}` in\n{out}"
        );
    };
    let middle = all[all.len() / 2].file_name().unwrap().to_owned();
    let middle_index: u64 = middle.to_str().unwrap()[..20].parse().unwrap();
    check(
        "deleted",
        &|copy| fs::remove_file(copy.join("segments").join(&middle)).unwrap(),
        &format!("segment {middle_index} is missing"),
    );
    let last = all.last().unwrap().file_name().unwrap().to_owned();
    let last_index: u64 = last.to_str().unwrap()[..20].parse().unwrap();
    check(
        "deleted last",
        &|copy| fs::remove_file(copy.join("segments").join(&last)).unwrap(),
        &format!("segment {last_index} is missing"),
    );
    check(
        "truncated",
        &|copy| {
            let path = copy.join("segments").join(&middle);
            let len = fs::metadata(&path).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        },
        &format!("segment {middle_index} is truncated"),
    );
    check(
        "replaced",
        &|copy| {
            let first = copy.join("segments").join(all[0].file_name().unwrap());
            fs::copy(&first, copy.join("segments").join(&middle)).unwrap();
        },
        &format!("segment {middle_index}"),
    );
    check(
        "head removed",
        &|copy| fs::remove_file(copy.join("head.json")).unwrap(),
        "the store head is missing",
    );

    // Replaying one session opens only the segments its index names: garbage in every
    // other segment goes unread (a whole-store listing reports it).
    let copy = tempfile::tempdir().unwrap();
    let records = copy.path().join("records");
    copy_store(&store, &records);
    let first_session = gw.sessions()[0]["id"].as_str().unwrap().to_string();
    let mut garbled = 0;
    for segment in &all {
        let index: u64 = segment.file_name().unwrap().to_str().unwrap()[..20]
            .parse()
            .unwrap();
        let listed = fs::read_to_string(records.join(format!("index/{index:020}.sessions")))
            .unwrap_or_else(|_| panic!("segment {index} has an index"));
        if !listed.lines().any(|id| id == first_session) {
            fs::write(
                records.join("segments").join(segment.file_name().unwrap()),
                b"garbage",
            )
            .unwrap();
            garbled += 1;
        }
    }
    assert!(garbled > 0);
    let config = copy.path().join("interlock.yaml");
    fs::write(&config, "recording:\n  dir: ./records\n").unwrap();
    let replay = Command::new(interlock_bin())
        .args(["replay", &first_session, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(replay.status.success());
    assert!(
        String::from_utf8_lossy(&replay.stderr).is_empty(),
        "only the session's own segments were read: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stdout).contains("GET /index.html"));

    // Shipped through segment `middle` and removed from the spool: still verifiable.
    let copy = tempfile::tempdir().unwrap();
    let records = copy.path().join("records");
    copy_store(&store, &records);
    for segment in &all {
        let index: u64 = segment.file_name().unwrap().to_str().unwrap()[..20]
            .parse()
            .unwrap();
        if index < middle_index {
            fs::remove_file(records.join("segments").join(segment.file_name().unwrap())).unwrap();
        }
    }
    fs::create_dir_all(records.join("checkpoints")).unwrap();
    fs::write(
        records.join("checkpoints/kinesis.json"),
        format!("{{\"segment\":{middle_index},\"offset\":0}}"),
    )
    .unwrap();
    // Sessions that began in a removed segment are reported by their own chains; the store
    // itself is whole.
    let (_, out) = verify(copy.path());
    assert!(
        out.contains("store problems: 0"),
        "shipped segments are not missing: {out}"
    );
}
