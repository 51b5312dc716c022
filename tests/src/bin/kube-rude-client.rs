//! A client that misbehaves towards an API server on purpose, one way per run, and prints
//! one JSON line saying what came back. Run under `interlock wrap` to feed the gateway's
//! API-server path bad input:
//! - `garbage`: bytes that are no HTTP, after a good TLS handshake;
//! - `h2-reset`: an HTTP/2 request body cut by RST_STREAM, then a good request on the same
//!   connection;
//! - `ws-bad-length`: an exec WebSocket whose first frame claims 2^63 - 1 bytes;
//! - `spdy-garbage`: a port-forward upgraded to SPDY, then a stream whose header block is no
//!   zlib, and bytes that are no SPDY at all.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use interlock_e2e::apiserver::tls_client;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    Garbage,
    H2Reset,
    WsBadLength,
    SpdyGarbage,
}

#[derive(Parser)]
struct Args {
    scenario: Scenario,
    /// The API server's address.
    address: SocketAddr,
    /// PEM of the CA to trust (the bundle `interlock ca-bundle` prints).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// A file holding the bearer token.
    #[arg(long)]
    token_file: std::path::PathBuf,
}

const SERVER_NAME: &str = "kubernetes.default.svc";
/// How long to wait for an answer that may never come.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let outcome = match args.scenario {
        Scenario::Garbage => garbage(&args).await,
        Scenario::H2Reset => h2_reset(&args).await,
        Scenario::WsBadLength => ws_bad_length(&args).await,
        Scenario::SpdyGarbage => spdy_garbage(&args).await,
    };
    match outcome {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("kube-rude-client: {e}");
            std::process::exit(1);
        }
    }
}

type Failed = Box<dyn std::error::Error + Send + Sync>;

async fn tls(args: &Args, alpn: &[u8]) -> Result<TlsStream<TcpStream>, Failed> {
    let tcp = TcpStream::connect(args.address).await?;
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(tls_client(&args.ca, alpn)?.connect(name, tcp).await?)
}

fn token(args: &Args) -> Result<String, Failed> {
    Ok(std::fs::read_to_string(&args.token_file)?
        .trim()
        .to_string())
}

/// Reads until the peer closes (or resets), or `PATIENCE` passes: what it sent, and whether
/// it closed the connection.
async fn read_all(stream: &mut TlsStream<TcpStream>) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .is_ok();
    (got, closed)
}

async fn garbage(args: &Args) -> Result<serde_json::Value, Failed> {
    let mut stream = tls(args, b"http/1.1").await?;
    stream
        .write_all(b"\x16\x03\x01 this is not HTTP \x00\xff\r\n\r\n")
        .await?;
    let (answer, closed) = read_all(&mut stream).await;
    let first_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(json!({"scenario": "garbage", "answer": first_line, "closed": closed}))
}

async fn h2_reset(args: &Args) -> Result<serde_json::Value, Failed> {
    let stream = tls(args, b"h2").await?;
    let (mut client, connection) = h2::client::handshake(stream).await?;
    tokio::spawn(connection);
    let authorization = format!("Bearer {}", token(args)?);
    let request = |method: &str, path: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"))
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(())
    };
    // A create whose body stops a tenth of the way in, then is reset.
    let (answer, mut body) =
        client.send_request(request("POST", "/api/v1/namespaces/team/secrets")?, false)?;
    body.send_data(Bytes::from_static(b"{\"apiVersion\": \"v1\","), false)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    body.send_reset(h2::Reason::CANCEL);
    let reset = tokio::time::timeout(PATIENCE, answer).await;
    let reset_answer = match reset {
        Ok(Ok(response)) => json!(response.status().as_u16()),
        Ok(Err(e)) => json!(e.to_string()),
        Err(_) => json!("no answer"),
    };
    // The same connection serves the next request.
    let mut client = client.ready().await?;
    let (answer, _) = client.send_request(request("GET", "/version")?, true)?;
    let response = tokio::time::timeout(PATIENCE, answer).await??;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut version = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        version.extend_from_slice(&chunk);
    }
    Ok(json!({
        "scenario": "h2-reset",
        "reset_answer": reset_answer,
        "next_status": status,
        "next_body": serde_json::from_slice::<serde_json::Value>(&version).unwrap_or_default(),
    }))
}

async fn ws_bad_length(args: &Args) -> Result<serde_json::Value, Failed> {
    let stream = tls(args, b"http/1.1").await?;
    let mut request = format!(
        "wss://{SERVER_NAME}/api/v1/namespaces/team/pods/web/exec?command=cat&stdin=true&stdout=true"
    )
    .into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {}", token(args)?).parse()?);
    headers.insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
    let (socket, response) = tokio_tungstenite::client_async(request, stream).await?;
    let upgraded = response.status().as_u16();
    let mut stream = socket.into_inner();
    // FIN + binary, masked, 64-bit length 2^63 - 1, a mask key, and a few bytes.
    let mut frame = vec![0x82, 0xff];
    frame.extend_from_slice(&u64::MAX.wrapping_shr(1).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
    stream.write_all(&frame).await?;
    let (_, closed) = read_all(&mut stream).await;
    Ok(json!({"scenario": "ws-bad-length", "upgraded": upgraded, "closed": closed}))
}

async fn spdy_garbage(args: &Args) -> Result<serde_json::Value, Failed> {
    let mut stream = tls(args, b"http/1.1").await?;
    let head = format!(
        "POST /api/v1/namespaces/team/pods/web/portforward HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\
         Authorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n",
        token(args)?
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        answer.push(byte[0]);
    }
    let upgraded = String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 101");
    // SYN_STREAM for stream 1 whose header block is not zlib, then no SPDY at all.
    let mut frame = vec![0x80, 3, 0, 1, 0, 0, 0, 13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(b"notzl");
    frame.extend_from_slice(b"this is not SPDY");
    stream.write_all(&frame).await?;
    let (_, closed) = read_all(&mut stream).await;
    Ok(json!({"scenario": "spdy-garbage", "upgraded": upgraded, "closed": closed}))
}
