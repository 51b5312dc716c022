//! MCP benchmark: a 1 KiB `tools/call` answered as an SSE event (as MCP servers answer), and
//! a GET SSE stream of 1 KiB notifications. The upstream is an in-process hyper server, so
//! only what sits in between differs: nothing, nginx as a plain reverse proxy (no
//! inspection), or Interlock in mcp mode (parsing, policy and recording on).
use std::{convert::Infallible, fs, net::SocketAddr, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::{
    BenchGateway, Killed, Metric, free_port, peak_rss_mib, percentile, print_ratios, run_client,
    wait_listening,
};

const CALLS: usize = 5000;
const STREAM_EVENTS: usize = 50_000;

#[derive(Serialize, Deserialize)]
struct McpResults {
    call_p50_us: f64,
    call_p99_us: f64,
    sse_events_per_s: f64,
    sse_mib_per_s: f64,
}

fn sse_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

/// POST answers a tools/call with its result as one SSE event; GET streams notifications.
async fn upstream(listener: tokio::net::TcpListener) {
    let notification = sse_event(&format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"{}"}}}}"#,
        "n".repeat(1000)
    ));
    while let Ok((stream, _)) = listener.accept().await {
        let notification = notification.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let notification = notification.clone();
                async move {
                    let stream = req.method() == hyper::Method::GET;
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let body = if stream {
                        let frames = std::iter::repeat_n(notification, STREAM_EVENTS)
                            .map(|f| Ok::<_, Infallible>(Frame::data(f)));
                        Either::Right(StreamBody::new(futures_util::stream::iter(frames)))
                    } else {
                        let call: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let result = serde_json::json!({"jsonrpc": "2.0", "id": call["id"],
                            "result": {"content": [{"type": "text", "text": call["params"]["arguments"]["message"]}]}});
                        Either::Left(Full::new(sse_event(&result.to_string())))
                    };
                    let response = Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body);
                    Ok::<_, Infallible>(response.expect("static parts are valid"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The load generator: sequential tools/call round trips on one keep-alive connection, then
/// one SSE stream read to its end.
pub fn client(addr: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut latencies = Vec::with_capacity(CALLS);
        for id in 0..CALLS {
            let call = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "m".repeat(1024)}}});
            let request = Request::post("/mcp")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(Full::new(Bytes::from(call.to_string())))?;
            let started = Instant::now();
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            latencies.push(started.elapsed());
            anyhow::ensure!(body.len() > 1024, "short answer: {body:?}");
        }
        let request = Request::get("/mcp")
            .header("host", addr.to_string())
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        sender.ready().await?;
        let started = Instant::now();
        let mut body = sender.send_request(request).await?.into_body();
        let mut bytes = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes += data.len();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        anyhow::Ok(McpResults {
            call_p50_us: percentile(&mut latencies, 0.50),
            call_p99_us: percentile(&mut latencies, 0.99),
            sse_events_per_s: STREAM_EVENTS as f64 / secs,
            sse_mib_per_s: bytes as f64 / (1 << 20) as f64 / secs,
        })
    })?;
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}

fn start_nginx(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> Result<Killed> {
    let conf = dir.join("nginx-http.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes auto;\npid {dir}/nginx-http.pid;\nerror_log {dir}/nginx-http-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  upstream mcp {{ server {upstream}; keepalive 16; }}\n\
               server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://mcp;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                 proxy_buffering off;\n      tcp_nodelay on;\n    }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let child = Command::new("nginx")
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&conf)
        .spawn()
        .context("nginx is installed by `cargo xtask setup`")?;
    wait_listening(listen)?;
    Ok(Killed(child))
}

pub fn orchestrate(interlock: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let upstream_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listener = std::net::TcpListener::bind(upstream_addr)?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            upstream(tokio::net::TcpListener::from_std(listener).expect("listener")).await
        });
    });
    let client_for = |addr: SocketAddr| {
        let mut cmd = Command::new(&me);
        cmd.args(["mcp-client", &addr.to_string()]);
        cmd
    };

    eprintln!("[1/3] MCP direct");
    let direct = run_client(client_for(upstream_addr))?;

    eprintln!("[2/3] MCP through nginx (plain reverse proxy, no inspection)");
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nginx = start_nginx(dir.path(), nginx_addr, upstream_addr)?;
    let via_nginx = run_client(client_for(nginx_addr))?;
    drop(nginx);

    eprintln!("[3/3] MCP through Interlock (mcp mode: parsing, policy, recording)");
    let policy = "policy:\n  rules:\n    - name: no-deletes\n      match: { tool: \"delete_*\" }\n      action: deny\n";
    let target = format!("name: mcp\n    address: {upstream_addr}\n    protocol: mcp");
    let gateway = BenchGateway::start(interlock, dir.path(), &target, policy)?;
    let wrapped = gateway.wrap(interlock, &me, &["mcp-client", &upstream_addr.to_string()]);
    let via_interlock = run_client(wrapped)?;
    let rss = peak_rss_mib(gateway.process.0.id());
    drop(gateway);

    println!(
        "\nMCP benchmark: 1 KiB tools/call answered over SSE ({CALLS} calls), and {STREAM_EVENTS} 1 KiB SSE events"
    );
    let rows: [(&str, Metric<McpResults>); 4] = [
        ("tools/call p50 (us)", |r| r.call_p50_us),
        ("tools/call p99 (us)", |r| r.call_p99_us),
        ("SSE events/s", |r| r.sse_events_per_s),
        ("SSE MiB/s", |r| r.sse_mib_per_s),
    ];
    print_ratios(&rows, &direct, &via_nginx, &via_interlock);
    println!(
        "added p50: nginx {:.1} us, Interlock {:.1} us; added p99: nginx {:.1} us, Interlock {:.1} us",
        via_nginx.call_p50_us - direct.call_p50_us,
        via_interlock.call_p50_us - direct.call_p50_us,
        via_nginx.call_p99_us - direct.call_p99_us,
        via_interlock.call_p99_us - direct.call_p99_us
    );
    println!("gateway peak RSS: {rss:.1} MiB");
    Ok(())
}
