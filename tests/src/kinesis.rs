//! A real Kinesis-API server (kinesalite, pinned in support/package.json) on loopback, an SDK
//! client to create streams and read them back independently of Interlock, and a
//! fault-injecting proxy for what kinesalite never does: partial failures and throttling.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use aws_sdk_kinesis::{Client, config::Credentials, types::ShardIteratorType};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::{Proc, free_port, wait_listening};

pub struct Kinesalite {
    pub addr: SocketAddr,
    path: Option<PathBuf>,
    proc: Option<Proc>,
}

impl Kinesalite {
    /// In memory, or persistent under `path` (it then survives a restart).
    pub fn start(path: Option<&Path>) -> Kinesalite {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut k = Kinesalite {
            addr,
            path: path.map(Path::to_path_buf),
            proc: None,
        };
        k.restart();
        k
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn restart(&mut self) {
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("support");
        let mut cmd = Command::new("node");
        cmd.arg(support.join("kinesalite.js"))
            .arg(self.addr.port().to_string());
        if let Some(path) = &self.path {
            cmd.arg(path);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node and tests/support/node_modules are installed by `cargo xtask setup`");
        self.proc = Some(Proc(child));
        wait_listening(self.addr);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn client(endpoint: &str) -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    Client::new(&config)
}

pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .unwrap()
            .stream_status()
            .as_str()
            == "ACTIVE"
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("stream {name} never became active");
}

/// Every Kinesis record in the stream, per shard in order, read with the SDK directly.
pub async fn read_raw(client: &Client, stream: &str) -> Vec<(String, Vec<u8>)> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_string);
        while let Some(iterator) = it {
            let page = client
                .get_records()
                .shard_iterator(iterator)
                .limit(10_000)
                .send()
                .await
                .unwrap();
            for r in page.records() {
                out.push((shard.shard_id().to_string(), r.data().as_ref().to_vec()));
            }
            if page.records().is_empty() {
                break;
            }
            it = page.next_shard_iterator().map(str::to_string);
        }
    }
    out
}

/// What the fault proxy did.
#[derive(Default, Debug)]
pub struct FaultLog {
    /// PutRecords calls answered with a whole-call throttling error.
    pub throttled_calls: usize,
    /// Records answered as failed (not forwarded).
    pub failed_records: usize,
    /// How often each record's data reached kinesalite.
    pub forwarded: HashMap<Vec<u8>, usize>,
    /// The access key id each call was signed with (SigV4 `Credential=`), in order.
    pub access_keys: Vec<String>,
}

/// Sits in front of kinesalite. The first `throttle_calls` PutRecords calls get a
/// ProvisionedThroughputExceededException; after that, in the next `partial_calls` calls every
/// third record is answered as failed (and not forwarded) while the rest go through.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<FaultLog>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, throttle_calls: usize, partial_calls: usize) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(FaultLog::default()));
        let state = Arc::new(Mutex::new((throttle_calls, partial_calls)));
        let shared_log = log.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (client, state, log) = (client.clone(), state.clone(), shared_log.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let (client, state, log) = (client.clone(), state.clone(), log.clone());
                            async move {
                                Ok::<_, Infallible>(handle(req, upstream, client, state, log).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FaultProxy { addr, log }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    client: HttpClient,
    state: Arc<Mutex<(usize, usize)>>,
    log: Arc<Mutex<FaultLog>>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let signed_with = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
        .unwrap_or_default()
        .to_string();
    log.lock().unwrap().access_keys.push(signed_with);
    let is_put_records = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|t| t.as_bytes().ends_with(b".PutRecords"));
    let (throttle, partial) = {
        let mut s = state.lock().unwrap();
        let mode = (
            is_put_records && s.0 > 0,
            is_put_records && s.0 == 0 && s.1 > 0,
        );
        if mode.0 {
            s.0 -= 1;
        } else if mode.1 {
            s.1 -= 1;
        }
        mode
    };
    if throttle {
        log.lock().unwrap().throttled_calls += 1;
        return json_response(
            400,
            json!({"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded for shard"}),
        );
    }
    let mut failed_positions = Vec::new();
    let body = if is_put_records {
        let mut request: Value = serde_json::from_slice(&body).unwrap();
        let records = request["Records"].as_array().unwrap().clone();
        let mut kept = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            if partial && i % 3 == 1 {
                failed_positions.push(i);
            } else {
                let data = BASE64.decode(record["Data"].as_str().unwrap()).unwrap();
                *log.lock().unwrap().forwarded.entry(data).or_default() += 1;
                kept.push(record);
            }
        }
        log.lock().unwrap().failed_records += failed_positions.len();
        request["Records"] = Value::Array(kept);
        Bytes::from(serde_json::to_vec(&request).unwrap())
    } else {
        body
    };
    parts.uri = format!("http://{upstream}{}", parts.uri.path_and_query().unwrap())
        .parse()
        .unwrap();
    parts.headers.remove("content-length");
    parts
        .headers
        .insert("host", upstream.to_string().parse().unwrap());
    let forwarded = client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    let status = forwarded.status().as_u16();
    let answer = forwarded.into_body().collect().await.unwrap().to_bytes();
    if failed_positions.is_empty() || status != 200 {
        return Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .body(Full::new(answer))
            .unwrap();
    }
    // Put the synthetic failures back at their positions.
    let mut answer: Value = serde_json::from_slice(&answer).unwrap();
    let mut results: Vec<Value> = answer["Records"].as_array().unwrap().clone();
    for &i in &failed_positions {
        results.insert(
            i,
            json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"}),
        );
    }
    answer["Records"] = Value::Array(results);
    answer["FailedRecordCount"] = json!(failed_positions.len());
    json_response(200, answer)
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

/// Plays the EKS Pod Identity agent on loopback: the container credential endpoint the SDK's
/// default chain reads from `AWS_CONTAINER_CREDENTIALS_FULL_URI`, sending the token from
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` as `Authorization`. Each answer is a new key that
/// expires after `lifetime`; a call without the token gets 401.
pub struct CredentialEndpoint {
    pub addr: SocketAddr,
    /// Each call: the `Authorization` it carried, and the access key id it was given.
    pub calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl CredentialEndpoint {
    pub fn start(token: &str, lifetime: std::time::Duration) -> CredentialEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (token, log) = (token.to_string(), calls.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (token, log) = (token.clone(), log.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (token, log) = (token.clone(), log.clone());
                            async move {
                                let authorization = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                if authorization != token {
                                    log.lock().unwrap().push((authorization, String::new()));
                                    return Ok::<_, Infallible>(json_response(
                                        401,
                                        json!({"message": "wrong or missing authorization token"}),
                                    ));
                                }
                                let mut calls = log.lock().unwrap();
                                let key = format!("ASIAPODIDENTITY{:05}", calls.len());
                                calls.push((authorization, key.clone()));
                                let expires = time::OffsetDateTime::now_utc() + lifetime;
                                let expires = expires
                                    .format(&time::format_description::well_known::Rfc3339)
                                    .unwrap();
                                Ok(json_response(
                                    200,
                                    json!({"AccessKeyId": key, "SecretAccessKey": "pod-identity-secret",
                                        "Token": "pod-identity-session", "AccountId": "123456789012",
                                        "Expiration": expires}),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        CredentialEndpoint { addr, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/credentials", self.addr)
    }
}
