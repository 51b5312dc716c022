//! Many watches at once against an API server, each on its own HTTP/2 connection, as many
//! controllers on a node would hold them. Prints `ready` once every watch has its answer's
//! head, then waits until every watch has seen the pod named `--expect` added, keeps them
//! open `--hold` seconds more, and prints one JSON line: how many watches saw it, and how
//! many events arrived in all.
use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use interlock_e2e::apiserver::tls_client;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    address: SocketAddr,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long, default_value_t = 200)]
    watches: usize,
    #[arg(long, default_value = "team")]
    namespace: String,
    /// The pod every watch must see added.
    #[arg(long)]
    expect: String,
    /// How long to wait for it, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Seconds to keep the watches open once every one saw it.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

const SERVER_NAME: &str = "kubernetes.default.svc";

type Failed = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("kube-watchers: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Failed> {
    let connector = tls_client(&args.ca, b"h2")?;
    let authorization = format!(
        "Bearer {}",
        std::fs::read_to_string(&args.token_file)?.trim()
    );
    let (saw, events) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let needle = format!("\"name\":\"{}\"", args.expect);
    let mut started = Vec::new();
    for _ in 0..args.watches {
        let tcp = TcpStream::connect(args.address).await?;
        let tls = connector
            .connect(ServerName::try_from(SERVER_NAME)?, tcp)
            .await?;
        let (mut client, connection) = h2::client::handshake(tls).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!(
            "https://{SERVER_NAME}/api/v1/namespaces/{}/pods?watch=true",
            args.namespace
        ))
        .header("authorization", &authorization)
        .header("accept", "application/json")
        .body(())?;
        let (answer, _) = client.send_request(request, true)?;
        let response = answer.await?;
        if response.status() != 200 {
            return Err(format!("a watch was answered {}", response.status()).into());
        }
        let (saw, events, needle) = (saw.clone(), events.clone(), needle.clone());
        started.push(tokio::spawn(async move {
            // The client is kept alive for as long as its watch runs.
            let _client = client;
            let mut body = response.into_body();
            let (mut seen, mut pending) = (false, Vec::new());
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    events.fetch_add(1, Ordering::Relaxed);
                    let line = String::from_utf8_lossy(&line);
                    if !seen && line.contains("\"ADDED\"") && line.contains(&needle) {
                        seen = true;
                        saw.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    while saw.load(Ordering::Relaxed) < args.watches && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    println!(
        "{}",
        serde_json::json!({
            "watches": started.len(),
            "saw": saw.load(Ordering::Relaxed),
            "events": events.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
