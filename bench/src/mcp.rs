//! MCP benchmark: a 1 KiB `tools/call` answered as an SSE event (as MCP servers answer), and
//! a GET SSE stream of 1 KiB notifications. The upstream is an in-process hyper server, so
//! only what sits in between differs: nothing, nginx as a plain reverse proxy (no
//! inspection), or Interlock in mcp mode (parsing, policy, masking and recording on). One
//! client process, wrapped by Interlock, measures all three in turn.
use std::{
    convert::Infallible,
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::{
    Request, Response, body::Frame, client::conn::http1::SendRequest, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::{
    BenchGateway, Killed, Metric, free_port, peak_rss_mib, percentile, print_ratios, run_client,
    run_nginx,
};

const WARMUP_CALLS: usize = 200;
const CALLS: usize = 10_000;
/// Calls in a row on one route; about 20 ms.
const BLOCK: usize = 100;
/// Unmeasured calls that start each block: the first calls after another route ran are
/// slower on every route (caches, wake-ups), and which route a block follows is an artifact
/// of interleaving, not of the route.
const BLOCK_WARMUP: usize = 10;
const STREAM_EVENTS: usize = 50_000;
const STREAM_ROUNDS: usize = 3;

#[derive(Serialize, Deserialize)]
struct McpResults {
    call_p50_us: f64,
    call_p99_us: f64,
    sse_events_per_s: f64,
    sse_mib_per_s: f64,
}

#[derive(Serialize, Deserialize)]
struct McpRun {
    direct: McpResults,
    nginx: McpResults,
    interlock: McpResults,
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

/// One route to the upstream, with its keep-alive connection and what it measured.
struct Route {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    latencies: Vec<Duration>,
    stream_rates: Vec<(f64, f64)>,
}

impl Route {
    async fn connect(addr: SocketAddr) -> Result<Route> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Route {
            addr,
            sender,
            latencies: Vec::with_capacity(CALLS),
            stream_rates: Vec::new(),
        })
    }

    /// One tools/call round trip, to the end of its answer.
    async fn call(&mut self, id: usize) -> Result<Duration> {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "m".repeat(1024)}}});
        let request = Request::post("/mcp")
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(call.to_string())))?;
        let started = Instant::now();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        let took = started.elapsed();
        anyhow::ensure!(body.len() > 1024, "short answer: {body:?}");
        Ok(took)
    }

    /// One GET SSE stream read to its end: (events/s, MiB/s).
    async fn stream(&mut self) -> Result<(f64, f64)> {
        let request = Request::get("/mcp")
            .header("host", self.addr.to_string())
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let started = Instant::now();
        let mut body = self.sender.send_request(request).await?.into_body();
        let mut bytes = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes += data.len();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        Ok((
            STREAM_EVENTS as f64 / secs,
            bytes as f64 / (1 << 20) as f64 / secs,
        ))
    }

    fn results(mut self) -> McpResults {
        self.stream_rates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (events, mib) = self.stream_rates[self.stream_rates.len() / 2];
        McpResults {
            call_p50_us: percentile(&mut self.latencies, 0.50),
            call_p99_us: percentile(&mut self.latencies, 0.99),
            sse_events_per_s: events,
            sse_mib_per_s: mib,
        }
    }
}

/// The load generator. Calls go to the three routes in turn, in blocks (direct, nginx,
/// Interlock, rotating which goes first), so a noisy moment on this machine lands on all
/// three alike instead of on whichever ran then. Blocks, not single calls, so that the work
/// Interlock's recorder does just after a call mostly lands on Interlock's own calls (it
/// runs at idle priority, so what is left yields to the next route's). Each block starts
/// with unmeasured calls, so that what is measured is each route's steady state. SSE streams
/// alternate the same way; the median counts.
pub fn client(direct: SocketAddr, nginx: SocketAddr, interlock: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let mut routes = [
            Route::connect(direct).await?,
            Route::connect(nginx).await?,
            Route::connect(interlock).await?,
        ];
        for id in 0..WARMUP_CALLS {
            for route in &mut routes {
                route.call(id).await?;
            }
        }
        for block in 0..CALLS / BLOCK {
            for turn in 0..routes.len() {
                let route = &mut routes[(block + turn) % 3];
                for id in 0..BLOCK_WARMUP {
                    route.call(id).await?;
                }
                for id in block * BLOCK..(block + 1) * BLOCK {
                    let took = route.call(id).await?;
                    route.latencies.push(took);
                }
            }
        }
        for _ in 0..STREAM_ROUNDS {
            for route in &mut routes {
                let rate = route.stream().await?;
                route.stream_rates.push(rate);
            }
        }
        let [direct, nginx, interlock] = routes.map(Route::results);
        anyhow::Ok(McpRun {
            direct,
            nginx,
            interlock,
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
    run_nginx(&conf, listen)
}

pub fn orchestrate(interlock: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    // The same upstream on two ports: Interlock intercepts the first (its target), while
    // the second is reached directly and through nginx from inside the same wrapped client.
    let target_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let plain_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    for addr in [target_addr, plain_addr] {
        let listener = std::net::TcpListener::bind(addr)?;
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
    }

    eprintln!(
        "starting nginx (plain reverse proxy, no inspection) and Interlock (mcp mode: parsing, policy, masking, recording)"
    );
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nginx = start_nginx(dir.path(), nginx_addr, plain_addr)?;
    let policy = "policy:\n  rules:\n    - name: no-deletes\n      match: { tool: \"delete_*\" }\n      action: deny\n";
    let target = format!("name: mcp\n    address: {target_addr}\n    protocol: mcp");
    let gateway = BenchGateway::start(interlock, dir.path(), &target, policy)?;
    eprintln!("{CALLS} calls per route, interleaved, then {STREAM_ROUNDS} SSE streams per route");
    let (direct, nginx_route, interlock_route) = (
        plain_addr.to_string(),
        nginx_addr.to_string(),
        target_addr.to_string(),
    );
    let wrapped = gateway.wrap(
        interlock,
        &me,
        &["mcp-client", &direct, &nginx_route, &interlock_route],
    );
    let run: McpRun = run_client(wrapped)?;
    let rss = peak_rss_mib(gateway.process.0.id());
    drop(gateway);
    drop(nginx);

    println!(
        "\nMCP benchmark: 1 KiB tools/call answered over SSE ({CALLS} calls per route, interleaved in blocks of {BLOCK}, each after {BLOCK_WARMUP} unmeasured), and {STREAM_EVENTS} 1 KiB SSE events (median of {STREAM_ROUNDS})"
    );
    let rows: [(&str, Metric<McpResults>); 4] = [
        ("tools/call p50 (us)", |r| r.call_p50_us),
        ("tools/call p99 (us)", |r| r.call_p99_us),
        ("SSE events/s", |r| r.sse_events_per_s),
        ("SSE MiB/s", |r| r.sse_mib_per_s),
    ];
    print_ratios(&rows, &run.direct, &run.nginx, &run.interlock);
    println!(
        "added p50: nginx {:.1} us, Interlock {:.1} us; added p99: nginx {:.1} us, Interlock {:.1} us",
        run.nginx.call_p50_us - run.direct.call_p50_us,
        run.interlock.call_p50_us - run.direct.call_p50_us,
        run.nginx.call_p99_us - run.direct.call_p99_us,
        run.interlock.call_p99_us - run.direct.call_p99_us
    );
    println!("gateway peak RSS: {rss:.1} MiB");
    Ok(())
}
