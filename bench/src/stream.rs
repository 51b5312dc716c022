//! Spool append throughput, and Kinesis shipping rate per CPU core, on the real code paths:
//! the recorder writing segments, and the Kinesis sink reading them and calling PutRecords
//! against kinesalite on loopback.
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use interlock::{
    identity::Workload,
    recording::config::FsyncPolicy,
    recording::{
        Recorder, WriterOptions,
        chain::Sealer,
        record::{Direction, Outcome, SessionEnd, SessionStart},
        spool::{Checkpoint, Position, SpoolReader, SpoolState},
    },
    sinks::kinesis::{
        config::{Kinesis, client},
        service::KinesisService,
        sink::KinesisSink,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 200;
const CHUNKS_PER_SESSION: usize = 500;
const CHUNK: usize = 1024;

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn start_record() -> SessionStart {
    SessionStart {
        node: "bench".into(),
        target: "bench".into(),
        protocol: "tcp".into(),
        original_dst: "127.0.0.1:1".into(),
        client_addr: "127.0.0.1:2".into(),
        workload: Workload {
            cgroup_id: 1,
            cgroup: None,
            pid: 1,
            process: "bench".into(),
            cmdline: vec![],
            pod: None,
            kubernetes: None,
        },
    }
}

/// Writes SESSIONS concurrent sessions of CHUNKS_PER_SESSION 1 KiB chunks.
async fn fill_spool(dir: &Path) -> Result<(u64, Duration, watch::Receiver<Position>)> {
    let sealer = Sealer::load(&dir.join("signing.key"), true)?;
    let spool = Arc::new(SpoolState::new(dir, u64::MAX)?);
    let options = WriterOptions {
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_secs(1),
    };
    let (recorder, thread, committed) = Recorder::start(dir, options, sealer, spool.clone())?;
    let payload = Bytes::from(vec![b'x'; CHUNK]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let session = recorder.session(&format!("bench-{i:05}"));
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            session.start(start_record()).await?;
            for _ in 0..CHUNKS_PER_SESSION {
                session.data(Direction::Up, payload.clone()).await?;
            }
            session
                .end(SessionEnd {
                    bytes_up: (CHUNKS_PER_SESSION * CHUNK) as u64,
                    bytes_down: 0,
                    duration_ms: 0,
                    outcome: Outcome::Closed,
                    error: None,
                    seal: None,
                })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    thread.stop(&recorder).await;
    Ok((spool.bytes(), started.elapsed(), committed))
}

fn start_kinesalite(port: u16) -> Result<std::process::Child> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/kinesalite.js");
    let child = Command::new("node")
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("node and tests/support/node_modules (cargo xtask setup)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "kinesalite did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

pub fn run() -> Result<()> {
    // SAFETY: no other thread exists yet; the SDK's credential chain reads these.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let records = (SESSIONS * (CHUNKS_PER_SESSION + 2)) as f64;

    let (bytes, elapsed, committed) = runtime.block_on(fill_spool(dir.path()))?;
    let secs = elapsed.as_secs_f64();
    println!(
        "\nSpool append ({SESSIONS} concurrent sessions, 1 KiB chunks, fsync interval, sealed chains)"
    );
    println!(
        "  {:.0} records/s, {:.1} MB/s of spool written ({} records, {:.1} MB in {secs:.2} s)",
        records / secs,
        bytes as f64 / 1e6 / secs,
        records,
        bytes as f64 / 1e6
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut kinesalite = start_kinesalite(port)?;
    let result = runtime.block_on(async {
        let config = Kinesis {
            stream: "bench".into(),
            region: Some("us-east-1".into()),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            linger: Duration::from_millis(50),
            max_record_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
        };
        let kinesis = client(&config).await;
        kinesis
            .create_stream()
            .stream_name("bench")
            .shard_count(4)
            .send()
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let spool = Arc::new(SpoolState::new(dir.path(), u64::MAX)?);
        let sink = KinesisSink {
            service: KinesisService {
                client: kinesis,
                stream: "bench".into(),
            },
            reader: SpoolReader::new(dir.path(), Position::default(), committed),
            checkpoint: Checkpoint::new(dir.path(), "kinesis")?,
            dir: dir.path().to_path_buf(),
            spool,
            max_record_bytes: 1 << 20,
            linger: config.linger,
        };
        let cpu_before = cpu_time();
        let started = Instant::now();
        // The writer has stopped, so the sink ships everything and returns.
        sink.run(CancellationToken::new()).await;
        anyhow::Ok((started.elapsed(), cpu_time() - cpu_before))
    });
    let _ = kinesalite.kill();
    let _ = kinesalite.wait();
    let (wall, cpu) = result?;
    println!("Shipping to kinesalite (release build, PutRecords of up to 500 records / 5 MiB)");
    println!(
        "  {:.0} records/s wall, {:.0} records per CPU-second of the shipper ({:.2} s wall, {:.2} s CPU)",
        records / wall.as_secs_f64(),
        records / cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
    Ok(())
}
