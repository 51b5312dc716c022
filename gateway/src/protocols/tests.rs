//! The in-process tier: real sockets on loopback, a real hyper upstream, the real record
//! store, and `serve` between them, with no eBPF and no root. Each test drives one client
//! connection through the L7 layer and reads back what was recorded.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{NodeServices, Session, error::SessionResult, mcp::holds::HoldDesk, serve};
use crate::{
    approvals::{Approvals, config::ApprovalsConfig},
    config::Config,
    identity::Workload,
    masking::{Masker, MaskingConfig},
    policy::Action,
    proxy::upstream::{TcpConnector, UpstreamConnector},
    recording::{
        self, Recorder, RecorderThread,
        record::{Principal, RecordBody},
        store,
    },
    vocabulary::{Direction, HoldOutcome, Outcome},
};

/// What the upstream saw: one entry per request, (version, Host header, path).
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, Option<String>, String)>>,
    connections: AtomicUsize,
    /// Released by the test: the SSE answer's second event waits for it.
    second_event: Notify,
}

/// An HTTP/1.1 upstream on loopback: `/mcp` answers JSON-RPC, `/sse` streams two events,
/// `/ws` upgrades to a byte echo, anything else answers `hello`.
async fn upstream() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            state.connections.fetch_add(1, Ordering::Relaxed);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

type UpstreamBody = http_body_util::Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

async fn answer(
    mut request: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<UpstreamBody>, std::convert::Infallible> {
    let host = request
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap().to_string());
    let path = request.uri().path().to_string();
    seen.requests.lock().unwrap().push((
        format!("{:?}", request.version()),
        host,
        request.uri().to_string(),
    ));
    let whole = |content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .header("content-type", content_type)
            .body(UpstreamBody::Left(Full::new(body.into())))
            .unwrap()
    };
    Ok(match path.as_str() {
        "/mcp" => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let call: Value = serde_json::from_slice(&body).unwrap();
            let reply =
                json!({"jsonrpc": "2.0", "id": call["id"], "result": {"echo": call["params"]}});
            whole("application/json", serde_json::to_vec(&reply).unwrap())
        }
        "/sse" => {
            let (mut tx, channel) = Channel::new(1);
            tokio::spawn(async move {
                let event = |n: u32| {
                    let message = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}});
                    Bytes::from(format!("event: message\ndata: {message}\n\n"))
                };
                tx.send_data(event(1)).await.unwrap();
                seen.second_event.notified().await;
                tx.send_data(event(2)).await.unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(UpstreamBody::Right(channel))
                .unwrap()
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(UpstreamBody::Left(Full::default()))
                .unwrap()
        }
        _ => whole("text/plain", b"hello".to_vec()),
    })
}

/// One client connection served by `serve`, recording into its own store.
struct Gateway {
    _dir: tempfile::TempDir,
    recorder: Recorder,
    writer: RecorderThread,
    dir: std::path::PathBuf,
    client_addr: SocketAddr,
    session: JoinHandle<SessionResult>,
    approvals: Arc<Approvals>,
}

impl Gateway {
    /// `target` and `policy` are YAML, as the config file writes them.
    async fn start(upstream: SocketAddr, protocol: &str, policy: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, writer, _) = recording::test_recorder(dir.path());
        let config = Config::parse(&format!(
            "targets:\n  - {{ name: t, address: \"{upstream}\", protocol: {protocol}, \
             upstream_response_timeout: 5s }}\npolicy:\n{policy}"
        ))
        .unwrap();
        let target = config.targets[0].clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_addr = listener.local_addr().unwrap();
        let approvals = Arc::new(Approvals::new(ApprovalsConfig::default(), None).unwrap());
        let services = NodeServices {
            tokens: Default::default(),
            api_server_tls: None,
            masker: Arc::new(Masker::new(&MaskingConfig::default()).unwrap()),
            desk: Arc::new(HoldDesk {
                approvals: approvals.clone(),
                sessions: Arc::new(super::mcp::sessions::McpSessions::new(Duration::from_secs(
                    60,
                ))),
            }),
        };
        let session = Session {
            recorder: recorder.session("in-process"),
            target,
            workload: Workload {
                cgroup_id: 1,
                cgroup: Some("/test".into()),
                pid: std::process::id(),
                process: "test".into(),
                cmdline: vec!["test".into()],
                pod: None,
                kubernetes: None,
            },
            original_dst: upstream,
            policy: Arc::new(config.policy.clone()),
            hard_stop: CancellationToken::new(),
        };
        let session = tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let connector = Arc::new(TcpConnector {
                timeout: Duration::from_secs(5),
            });
            let upstream_stream = connector.connect(upstream).await.unwrap();
            let redial = Box::new(move || {
                let connector = connector.clone();
                Box::pin(async move { connector.connect(upstream).await })
                    as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
            });
            serve(client, upstream_stream, redial, session, &services).await
        });
        Gateway {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            recorder,
            writer,
            client_addr,
            session,
            approvals,
        }
    }

    /// Waits for the session to end, and returns how it ended and everything it recorded.
    async fn finish(self) -> (SessionResult, Vec<RecordBody>) {
        let result = self.session.await.unwrap();
        self.writer.stop(&self.recorder).await;
        let (records, damage) = store::read_all(&self.dir).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        (result, records.into_iter().map(|r| r.record.body).collect())
    }
}

/// An HTTP/1.1 client connection to the gateway.
async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

fn post(uri: &str, body: &Value, accept: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("host", "mcp.test")
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(Full::new(serde_json::to_vec(body).unwrap().into()))
        .unwrap()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", "mcp.test")
        .body(Full::default())
        .unwrap()
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"x": 1}}})
}

async fn body_json(response: Response<Incoming>) -> Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The bytes recorded in one direction, in order.
fn recorded(records: &[RecordBody], direction: Direction) -> Vec<u8> {
    records
        .iter()
        .filter_map(|r| match r {
            RecordBody::Data(chunk) if chunk.direction == direction => Some(&chunk.data[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn mcp_messages(records: &[RecordBody]) -> Vec<&crate::recording::record::McpMessage> {
    records
        .iter()
        .filter_map(|r| match r {
            RecordBody::McpMessage(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn keep_alive_requests_share_one_connection_each_way() {
    let (upstream, seen) = upstream().await;
    let gateway = Gateway::start(upstream, "http", "  default: allow").await;
    let mut client = http1(gateway.client_addr).await;
    for _ in 0..3 {
        let response = client.send_request(get("/plain")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    drop(client);
    let (result, records) = gateway.finish().await;
    assert_eq!(result.outcome(), Outcome::Closed);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    let heads = records
        .iter()
        .filter(|r| matches!(r, RecordBody::HttpRequest(_)))
        .count();
    assert_eq!(heads, 3);
    assert_eq!(recorded(&records, Direction::Down), b"hellohellohello");
    assert!(result.bytes_up > 0 && result.bytes_down > 0);
}

#[tokio::test]
async fn sse_events_reach_the_client_as_they_are_sent() {
    let (upstream, seen) = upstream().await;
    let gateway = Gateway::start(upstream, "mcp", "  default: allow").await;
    let mut client = http1(gateway.client_addr).await;
    let response = client.send_request(get("/sse")).await.unwrap();
    let mut body = response.into_body();
    // The first event arrives while the upstream still holds back the second.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"progress\":1"));
    seen.second_event.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("\"progress\":2"));
    drop(client);
    let (_, records) = gateway.finish().await;
    let progress: Vec<_> = mcp_messages(&records)
        .iter()
        .filter(|m| m.transport == "sse" && m.direction == Direction::Down)
        .map(|m| m.method.clone())
        .collect();
    assert_eq!(progress.len(), 2, "both events are read as MCP messages");
}

#[tokio::test]
async fn a_denied_call_is_answered_in_json_rpc_and_never_forwarded() {
    let (upstream, seen) = upstream().await;
    let policy = "  rules:\n    - name: no-deletes\n      match: { tool: \"delete_*\" }\n      action: deny\n      reason: deletes are not allowed";
    let gateway = Gateway::start(upstream, "mcp", policy).await;
    let mut client = http1(gateway.client_addr).await;
    let response = client
        .send_request(post("/mcp", &call(7, "delete_user"), "application/json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer = body_json(response).await;
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], -32001);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-deletes")
    );
    drop(client);
    let (_, records) = gateway.finish().await;
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "nothing went upstream"
    );
    let request = mcp_messages(&records)
        .into_iter()
        .find(|m| m.direction == Direction::Up)
        .unwrap();
    assert_eq!(request.policy.as_ref().unwrap().action, Action::Deny);
    assert!(
        records
            .iter()
            .any(|r| matches!(r, RecordBody::HttpResponse(head) if head.generated_by_gateway))
    );
}

#[tokio::test]
async fn a_held_call_goes_upstream_once_approved() {
    let (upstream, seen) = upstream().await;
    let policy = "  rules:\n    - name: risky\n      match: { tool: \"trigger-*\" }\n      action: hold\n      timeout: 1m";
    let gateway = Gateway::start(upstream, "mcp", policy).await;
    let approvals = gateway.approvals.clone();
    let mut client = http1(gateway.client_addr).await;
    let answer = tokio::spawn(async move {
        let response = client
            .send_request(post("/mcp", &call(3, "trigger-x"), "application/json"))
            .await
            .unwrap();
        (body_json(response).await, client)
    });
    let hold = loop {
        if let Some(hold) = approvals.list_pending().into_iter().next() {
            break hold;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "held, not forwarded"
    );
    let approver = Principal {
        issuer: Some("https://idp.test".into()),
        subject: Some("bob".into()),
        email: Some("bob@example.com".into()),
        groups: vec![],
    };
    approvals
        .decide_pending(&hold.hold_id, approver, true, "fine".into())
        .unwrap();
    let (answer, client) = answer.await.unwrap();
    assert_eq!(answer["id"], 3);
    assert_eq!(answer["result"]["echo"]["name"], "trigger-x");
    drop(client);
    let (_, records) = gateway.finish().await;
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    assert!(
        records
            .iter()
            .any(|r| matches!(r, RecordBody::HoldCreated(h) if h.workload.process == "test"))
    );
    assert!(
        records
            .iter()
            .any(|r| matches!(r, RecordBody::HoldDecided(d) if d.outcome == HoldOutcome::Approved))
    );
}

#[tokio::test]
async fn an_upgrade_becomes_a_recorded_tunnel() {
    let (upstream, _) = upstream().await;
    let gateway = Gateway::start(upstream, "http", "  default: allow").await;
    let mut client = http1(gateway.client_addr).await;
    let request = Request::get("/ws")
        .header("host", "ws.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::default())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    drop(tunnel);
    drop(client);
    let (result, records) = gateway.finish().await;
    assert_eq!(result.outcome(), Outcome::Closed);
    assert_eq!(recorded(&records, Direction::Up), b"ping");
    assert_eq!(recorded(&records, Direction::Down), b"ping");
    assert!(
        records
            .iter()
            .any(|r| matches!(r, RecordBody::HttpResponse(head) if head.status == 101))
    );
}

#[tokio::test]
async fn an_http2_client_reaches_an_http1_upstream() {
    let (upstream, seen) = upstream().await;
    let gateway = Gateway::start(upstream, "mcp", "  default: allow").await;
    let stream = TcpStream::connect(gateway.client_addr).await.unwrap();
    let (mut client, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::post("http://mcp.test/mcp")
        .version(hyper::Version::HTTP_2)
        .header("content-type", "application/json")
        .body(Full::new(
            serde_json::to_vec(&call(1, "echo")).unwrap().into(),
        ))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(body_json(response).await["result"]["echo"]["name"], "echo");
    drop(client);
    let (_, records) = gateway.finish().await;
    let seen = seen.requests.lock().unwrap();
    assert_eq!(
        seen[0],
        (
            "HTTP/1.1".to_string(),
            Some("mcp.test".to_string()),
            "/mcp".to_string()
        )
    );
    assert_eq!(mcp_messages(&records).len(), 2, "the call and its answer");
}

#[tokio::test]
async fn an_upstream_that_dies_mid_answer_cuts_the_clients_answer() {
    // Promises 100 bytes, sends 5, and closes. Binary, so the 5 pass unmasked at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = stream.read(&mut head).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\nhello")
            .await
            .unwrap();
    });
    let gateway = Gateway::start(upstream, "http", "  default: allow").await;
    let mut client = http1(gateway.client_addr).await;
    let response = client.send_request(get("/big")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.into_body().collect().await.is_err(),
        "a cut answer must not pass for complete"
    );
    drop(client);
    let (_, records) = gateway.finish().await;
    assert_eq!(recorded(&records, Direction::Down), b"hello");
}

#[tokio::test]
async fn a_dead_upstream_is_answered_with_502() {
    // Takes the gateway's first connection, then closes it and stops listening.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let gone = tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
    let gateway = Gateway::start(upstream, "http", "  default: allow").await;
    let mut client = http1(gateway.client_addr).await;
    gone.await.unwrap();
    let response = client.send_request(get("/plain")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("connecting: Connection refused"),
        "{body:?}"
    );
    drop(client);
    let (result, records) = gateway.finish().await;
    assert_eq!(result.outcome(), Outcome::Closed);
    assert!(records.iter().any(
        |r| matches!(r, RecordBody::HttpResponse(head) if head.status == 502 && head.generated_by_gateway)
    ));
}
