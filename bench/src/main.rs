//! Benchmarks Interlock's tcp mode against a direct connection and a plain proxy (nginx's
//! stream module, no inspection), in one run, against the same echo server.
//!
//! `interlock-bench --interlock BIN` orchestrates; `interlock-bench client ADDR` is the load
//! generator, run once directly, once against nginx, and once wrapped by Interlock.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The interlock binary (release build).
    #[arg(long)]
    interlock: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the load against ADDR and print JSON results.
    Client { addr: SocketAddr },
    /// Spool append throughput and Kinesis shipping rate (against kinesalite).
    Stream,
    /// MCP: added latency of a 1 KiB tools/call and SSE throughput: direct, nginx, Interlock.
    Mcp {
        #[arg(long)]
        interlock: PathBuf,
    },
    /// The MCP load generator: the same upstream directly, through nginx and through
    /// Interlock, interleaved; prints JSON.
    McpClient {
        direct: SocketAddr,
        nginx: SocketAddr,
        interlock: SocketAddr,
    },
    /// Masking throughput per core: one-pass engine vs a naive per-pattern loop.
    Masking,
    /// Memory of 10,000 idle sessions, and after they close: nginx vs Interlock.
    Idle {
        #[arg(long)]
        interlock: PathBuf,
    },
    /// Node mode: registration latency of 100 pods created at once, and memory with 1,000
    /// cached pods.
    Node {
        #[arg(long)]
        interlock: PathBuf,
        /// The test API server (tests/src/kube), built with `-p interlock-e2e`.
        #[arg(long)]
        testserver: PathBuf,
    },
    /// The API server: GET and LIST latency and exec throughput, direct, nginx (TLS
    /// re-encrypting, HTTP/2) and Interlock (protocol: kubernetes).
    Kube {
        #[arg(long)]
        interlock: PathBuf,
        #[arg(long)]
        testserver: PathBuf,
    },
    /// The API-server load generator: ROUTES is JSON, [direct, nginx, interlock].
    KubeClient {
        routes: String,
        #[arg(long)]
        token: String,
    },
    /// The idle load generator: opens COUNT sessions to ADDR and holds them until stdin closes.
    IdleClient {
        addr: SocketAddr,
        count: usize,
        /// Send each a request head that never ends, instead of an echoed byte.
        #[arg(long)]
        half_request: bool,
    },
}

mod idle;
mod kube;
mod masking;
mod mcp;
mod node;
mod stream;

const CONNECTS: usize = 2000;
const ROUND_TRIPS: usize = 20_000;
const MESSAGE: usize = 64;
const BULK_BYTES: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Results {
    connect_p50_us: f64,
    connect_p99_us: f64,
    first_byte_p50_us: f64,
    first_byte_p99_us: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    throughput_mib_s: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Client { addr }) => {
            println!("{}", serde_json::to_string(&client(addr)?)?);
            Ok(())
        }
        Some(Mode::Stream) => stream::run(),
        Some(Mode::Mcp { interlock }) => mcp::orchestrate(&interlock),
        Some(Mode::McpClient {
            direct,
            nginx,
            interlock,
        }) => mcp::client(direct, nginx, interlock),
        Some(Mode::Masking) => masking::run(),
        Some(Mode::Idle { interlock }) => idle::orchestrate(&interlock),
        Some(Mode::Node {
            interlock,
            testserver,
        }) => node::orchestrate(&interlock, &testserver),
        Some(Mode::Kube {
            interlock,
            testserver,
        }) => kube::orchestrate(&interlock, &testserver),
        Some(Mode::KubeClient { routes, token }) => kube::client(&routes, &token),
        Some(Mode::IdleClient {
            addr,
            count,
            half_request,
        }) => idle::client(addr, count, half_request),
        None => orchestrate(&cli.interlock.context("--interlock BIN is required")?),
    }
}

pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e6
}

/// Connect latency (syscall, and to the first echoed byte: through a proxy that includes the
/// upstream connect), small request/response round trips on one connection, and bulk echo
/// throughput.
fn client(addr: SocketAddr) -> Result<Results> {
    let mut connects = Vec::with_capacity(CONNECTS);
    let mut first_bytes = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let start = Instant::now();
        let mut stream = TcpStream::connect(addr)?;
        connects.push(start.elapsed());
        stream.set_nodelay(true)?;
        stream.write_all(b"x")?;
        let mut one = [0u8; 1];
        stream.read_exact(&mut one)?;
        first_bytes.push(start.elapsed());
    }

    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = [b'r'; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        rtts.push(start.elapsed());
    }

    let stream = TcpStream::connect(addr)?;
    let mut writer = stream.try_clone()?;
    let start = Instant::now();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..BULK_BYTES / chunk.len() {
            writer.write_all(&chunk)?;
        }
        Ok(())
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    while received < BULK_BYTES {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed after {received} bytes");
        }
        received += n;
    }
    let elapsed = start.elapsed();
    sender.join().expect("sender thread")?;

    Ok(Results {
        connect_p50_us: percentile(&mut connects, 0.50),
        connect_p99_us: percentile(&mut connects, 0.99),
        first_byte_p50_us: percentile(&mut first_bytes, 0.50),
        first_byte_p99_us: percentile(&mut first_bytes, 0.99),
        rtt_p50_us: percentile(&mut rtts, 0.50),
        rtt_p99_us: percentile(&mut rtts, 0.99),
        throughput_mib_s: BULK_BYTES as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
    })
}

fn start_echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut stream = stream;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listening on {addr}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs a load generator and parses the JSON it prints.
pub(crate) fn run_client<T: serde::de::DeserializeOwned>(mut cmd: Command) -> Result<T> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("load generator failed: {cmd:?}");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A gateway started for a benchmark, and the config it runs with.
pub(crate) struct BenchGateway {
    pub process: Killed,
    pub config: PathBuf,
}

impl BenchGateway {
    /// Starts `interlock run` with one target (`target_yaml` is the list item's body) and
    /// any further config.
    pub fn start(interlock: &Path, dir: &Path, target_yaml: &str, extra: &str) -> Result<Self> {
        let (listen, admin) = (free_port()?, free_port()?);
        let config = dir.join("interlock.yaml");
        fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{listen}\nlisten_v6: null\nadmin: 127.0.0.1:{admin}\n\
                 control_socket: ./control.sock\ntargets:\n  - {target_yaml}\n\
                 recording:\n  dir: ./records\n{extra}"
            ),
        )?;
        let process = Killed(
            Command::new(interlock)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .spawn()?,
        );
        wait_listening(format!("127.0.0.1:{admin}").parse()?)?;
        Ok(BenchGateway { process, config })
    }

    /// `command` run inside a cgroup this gateway intercepts.
    pub fn wrap(&self, interlock: &Path, command: &Path, args: &[&str]) -> Command {
        let mut wrapped = Command::new(interlock);
        wrapped
            .args(["wrap", "--config"])
            .arg(&self.config)
            .arg("--")
            .arg(command)
            .args(args);
        wrapped
    }
}

/// How one table row reads its number out of a result.
pub(crate) type Metric<R> = fn(&R) -> f64;

/// Prints metrics side by side with Interlock's ratios to direct and to nginx.
pub(crate) fn print_ratios<R>(rows: &[(&str, Metric<R>)], direct: &R, nginx: &R, interlock: &R) {
    println!(
        "{:<28} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "metric", "direct", "nginx", "interlock", "/direct", "/nginx"
    );
    for (name, get) in rows {
        let (d, n, i) = (get(direct), get(nginx), get(interlock));
        println!(
            "{name:<28} {d:>11.1} {n:>11.1} {i:>11.1} {:>8.2}x {:>8.2}x",
            i / d,
            i / n
        );
    }
}

fn start_nginx(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> Result<Killed> {
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             worker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             stream {{ server {{ listen {listen}; proxy_pass {upstream}; tcp_nodelay on; }} }}\n",
            dir = dir.display()
        ),
    )?;
    run_nginx(&conf, listen)
}

/// nginx in the foreground with `conf`, once it listens on `listen`.
pub(crate) fn run_nginx(conf: &Path, listen: SocketAddr) -> Result<Killed> {
    let child = Command::new("nginx")
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(conf)
        .spawn()
        .context("nginx with the stream module is installed by `cargo xtask setup`")?;
    wait_listening(listen)?;
    Ok(Killed(child))
}

pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn orchestrate(interlock: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let echo = start_echo_server()?;
    eprintln!("echo server on {echo}");

    eprintln!("[1/3] direct");
    let mut direct = Command::new(&me);
    direct.args(["client", &echo.to_string()]);
    let direct = run_client(direct)?;

    eprintln!("[2/3] through nginx (stream proxy, no inspection)");
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nginx = start_nginx(dir.path(), nginx_addr, echo)?;
    let mut via_nginx = Command::new(&me);
    via_nginx.args(["client", &nginx_addr.to_string()]);
    let via_nginx = run_client(via_nginx)?;
    drop(nginx);

    eprintln!("[3/3] through Interlock (tcp mode, recording on, wrapped client)");
    let gateway = BenchGateway::start(
        interlock,
        dir.path(),
        &format!("name: echo\n    address: {echo}"),
        "",
    )?;
    let wrapped = gateway.wrap(interlock, &me, &["client", &echo.to_string()]);
    let via_interlock = run_client(wrapped)?;
    let rss = peak_rss_mib(gateway.process.0.id());
    drop(gateway);
    let recorded: u64 = fs::read_dir(dir.path().join("records/segments"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    println!(
        "\nInterlock tcp-mode benchmark (loopback, recording on; lower is better except throughput)"
    );
    let rows: [(&str, Metric<Results>); 7] = [
        ("connect p50 (us)", |r| r.connect_p50_us),
        ("connect p99 (us)", |r| r.connect_p99_us),
        ("first byte p50 (us)", |r| r.first_byte_p50_us),
        ("first byte p99 (us)", |r| r.first_byte_p99_us),
        ("64 B round trip p50 (us)", |r| r.rtt_p50_us),
        ("64 B round trip p99 (us)", |r| r.rtt_p99_us),
        ("echo throughput (MiB/s)", |r| r.throughput_mib_s),
    ];
    print_ratios(&rows, &direct, &via_nginx, &via_interlock);
    println!(
        "gateway peak RSS: {rss:.1} MiB; record store written: {:.1} MiB",
        recorded as f64 / (1 << 20) as f64
    );
    Ok(())
}
