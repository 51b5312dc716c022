//! `pods/NAME/exec` over WebSocket, as the kubelet streams it through kube-apiserver: the
//! `v5.channel.k8s.io` or `v4.channel.k8s.io` subprotocol, binary messages whose first byte
//! is the channel (0 stdin, 1 stdout, 2 stderr, 3 the closing Status, 4 resize), and in v5 the
//! close signal `[255, channel]`; or over SPDY (kubectl 1.29 and older), one stream a channel.
//! attach is served the same way, running the container's command. The command runs as a real
//! process on this host: on pipes, or with `tty=true` (`kubectl exec -it`) on a real
//! pseudo-terminal, whose size follows the client's resize messages (channel 4).
use std::{collections::HashMap, process::Stdio};

use futures_util::{SinkExt, StreamExt};
use hyper::{HeaderMap, Response, header, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::{
    api::{Body, switching_protocols},
    spdy::{self, Frame},
    status::ApiError,
};

/// Offered by clients, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The stream protocol served over SPDY.
const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What the exec request asks for, from its query (`command` repeats, one per argument).
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    pub fn from_query(query: &str) -> ExecRequest {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let flag = |key: &str| {
            pairs
                .iter()
                .any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1"))
        };
        ExecRequest {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// Answers the upgrade with 101 and runs the command on the upgraded connection.
pub fn upgrade(
    headers: &HeaderMap,
    on_upgrade: OnUpgrade,
    request: ExecRequest,
) -> Result<Response<Body>, ApiError> {
    let value = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if request.command.is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    if value(header::UPGRADE).eq_ignore_ascii_case("SPDY/3.1") {
        return upgrade_spdy(headers, on_upgrade, request);
    }
    if !value(header::UPGRADE).eq_ignore_ascii_case("websocket") {
        return Err(ApiError::BadRequest(
            "exec takes a WebSocket (v5.channel.k8s.io or v4.channel.k8s.io) or SPDY/3.1 upgrade"
                .into(),
        ));
    }
    let offered: Vec<&str> = value(header::SEC_WEBSOCKET_PROTOCOL)
        .split(',')
        .map(str::trim)
        .collect();
    let Some(protocol) = PROTOCOLS.into_iter().find(|p| offered.contains(p)) else {
        return Err(ApiError::BadRequest(format!(
            "no supported exec subprotocol offered (got {offered:?}; this server speaks {PROTOCOLS:?})"
        )));
    };
    let key = value(header::SEC_WEBSOCKET_KEY);
    if key.is_empty() {
        return Err(ApiError::BadRequest("Sec-WebSocket-Key is missing".into()));
    }
    let accept = derive_accept_key(key.as_bytes());
    let v5 = protocol.starts_with("v5");
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            run(socket, request, v5).await;
        }
    });
    Ok(switching_protocols(
        "websocket",
        &[
            ("sec-websocket-accept", &accept),
            ("sec-websocket-protocol", protocol),
        ],
    ))
}

/// kubectl 1.29 and older: SPDY, offering its stream protocols in `X-Stream-Protocol-Version`
/// (one header each); v4 is served, whose error stream carries a JSON `Status`.
fn upgrade_spdy(
    headers: &HeaderMap,
    on_upgrade: OnUpgrade,
    request: ExecRequest,
) -> Result<Response<Body>, ApiError> {
    let offered: Vec<&str> = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !offered.contains(&SPDY_PROTOCOL) {
        return Err(ApiError::BadRequest(format!(
            "no supported exec stream protocol offered (got {offered:?}; this server speaks {SPDY_PROTOCOL} over SPDY)"
        )));
    }
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            run_spdy(TokioIo::new(upgraded), request).await;
        }
    });
    Ok(switching_protocols(
        "SPDY/3.1",
        &[("x-stream-protocol-version", SPDY_PROTOCOL)],
    ))
}

/// Pumps a pipe into the channel it belongs to; None at its end.
fn pump(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    channel: u8,
    out: mpsc::Sender<Option<Vec<u8>>>,
) {
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&buffer[..n]);
                    if out.send(Some(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(None).await;
    });
}

/// A started command: where its input goes, and its terminal, if it has one.
struct Started {
    child: tokio::process::Child,
    stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
    /// The pseudo-terminal's master side, for resizes.
    terminal: Option<std::fs::File>,
}

/// Starts the command on pipes, one pump a stream; returns how many pumps feed `frames`.
fn start_on_pipes(
    request: &ExecRequest,
    frames: &mpsc::Sender<Option<Vec<u8>>>,
) -> std::io::Result<(Started, usize)> {
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut child = tokio::process::Command::new(&request.command[0])
        .args(&request.command[1..])
        .stdin(piped(request.stdin))
        .stdout(piped(request.stdout))
        .stderr(piped(request.stderr))
        .kill_on_drop(true)
        .spawn()?;
    let mut pumps = 0;
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, STDOUT, frames.clone());
        pumps += 1;
    }
    if let Some(stderr) = child.stderr.take() {
        pump(stderr, STDERR, frames.clone());
        pumps += 1;
    }
    let stdin = child
        .stdin
        .take()
        .map(|pipe| Box::new(pipe) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>);
    Ok((
        Started {
            child,
            stdin,
            terminal: None,
        },
        pumps,
    ))
}

/// Starts the command on a new pseudo-terminal, as its session leader: stdout and stderr
/// are both the terminal, read from its master side as stdout.
fn start_on_terminal(
    request: &ExecRequest,
    frames: &mpsc::Sender<Option<Vec<u8>>>,
) -> std::io::Result<(Started, usize)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors it opened; null name, termios and size.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if opened != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are open and owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut command = tokio::process::Command::new(&request.command[0]);
    command
        .args(&request.command[1..])
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true);
    // SAFETY: setsid and ioctl are async-signal-safe; the terminal becomes the child's
    // controlling terminal, as a container runtime makes it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    // The master reads EIO once the terminal's last holder exits: the end of its output.
    pump(reader, STDOUT, frames.clone());
    let terminal = std::fs::File::from(master);
    Ok((
        Started {
            child,
            stdin: Some(Box::new(writer)),
            terminal: Some(terminal),
        },
        1,
    ))
}

/// Sets the terminal's size from a resize message, `{"Width":…,"Height":…}`.
fn resize(terminal: &std::fs::File, message: &[u8]) {
    use std::os::fd::AsRawFd;
    let Ok(size) = serde_json::from_slice::<Value>(message) else {
        return;
    };
    let dimension = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok());
    let (Some(cols), Some(rows)) = (dimension("Width"), dimension("Height")) else {
        return;
    };
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid descriptor and a winsize that outlives the call.
    unsafe {
        libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}

async fn run<S>(mut socket: WebSocketStream<S>, request: ExecRequest, v5: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (frames, mut output) = mpsc::channel(16);
    let started = if request.tty {
        start_on_terminal(&request, &frames)
    } else {
        start_on_pipes(&request, &frames)
    };
    drop(frames);
    let (started, mut open_pipes) = match started {
        Ok(started) => started,
        Err(e) => {
            let status = failure(&format!("starting the command: {e}"), None);
            let _ = send_status(&mut socket, &status).await;
            return;
        }
    };
    let Started {
        mut child,
        mut stdin,
        terminal,
    } = started;
    let mut client_open = true;
    while open_pipes > 0 {
        tokio::select! {
            frame = output.recv() => match frame {
                Some(Some(frame)) => {
                    if socket.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
                Some(None) | None => open_pipes -= 1,
            },
            message = socket.next(), if client_open => match message {
                // The Python client sends text frames for `str` data, channel byte first.
                Some(Ok(message @ (Message::Binary(_) | Message::Text(_)))) => {
                    let data = message.into_data();
                    match data.first() {
                    Some(&STDIN) => {
                        // A terminal's master is a file, whose writes land on flush.
                        if let Some(pipe) = stdin.as_mut()
                            && (pipe.write_all(&data[1..]).await.is_err()
                                || pipe.flush().await.is_err())
                        {
                            stdin = None;
                        }
                    }
                    Some(&RESIZE) => {
                        if let Some(terminal) = &terminal {
                            resize(terminal, &data[1..]);
                        }
                    }
                    // v5: the client closed its stdin.
                    Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => stdin = None,
                    _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_open = false;
                    stdin = None;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(stdin);
    let status = exit_status(&mut child, &request.command).await;
    let _ = send_status(&mut socket, &status).await;
    // A close without a code reads as 1005 to client-go, which reports it as an error.
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = socket.close(Some(normal)).await;
    // The client's answering close is read before the socket goes: a
    // socket closed with that answer unread is reset, which can cost the client the Status.
    let answered = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answered).await;
}

/// The closing `Status` for a command that ended: Success, or its exit code.
async fn exit_status(child: &mut tokio::process::Child, command: &[String]) -> Value {
    match child.wait().await {
        Ok(exit) if exit.success() => json!({"metadata": {}, "status": "Success"}),
        Ok(exit) => {
            let code = exit.code().unwrap_or(128 + 9);
            let message = format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            );
            failure(&message, Some(code))
        }
        Err(e) => failure(&e.to_string(), None),
    }
}

fn failure(message: &str, code: Option<i32>) -> Value {
    match code {
        Some(code) => json!({
            "metadata": {}, "status": "Failure", "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({"metadata": {}, "status": "Failure", "message": message}),
    }
}

async fn send_status<S>(
    socket: &mut WebSocketStream<S>,
    status: &Value,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut frame = vec![ERROR];
    frame.extend_from_slice(status.to_string().as_bytes());
    socket.send(Message::binary(frame)).await
}

/// exec over SPDY: the client opens one stream per channel, each named by `streamtype`; the
/// command starts once all it asked for are open, and the `Status` goes on the error stream.
async fn run_spdy(io: impl AsyncRead + AsyncWrite + Send + 'static, request: ExecRequest) {
    let (mut from_client, to_client) = tokio::io::split(io);
    let frames = spdy::writer(to_client);
    // Frames are read on their own task: a read cut short by select! would lose its place.
    let (incoming_tx, mut incoming) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(frame) = spdy::read_frame(&mut from_client).await {
            if incoming_tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let expected = 1
        + usize::from(request.stdin)
        + usize::from(request.stdout)
        + usize::from(request.stderr && !request.tty)
        + usize::from(request.tty);
    let mut headers = spdy::Headers::new();
    let mut streams: HashMap<String, u32> = HashMap::new();
    while streams.len() < expected {
        let Some(frame) = incoming.recv().await else {
            return;
        };
        if let Frame::Control { kind, payload, .. } = frame
            && kind == spdy::SYN_STREAM
        {
            let Some((stream, opened, reply)) = headers.accept(&payload) else {
                return;
            };
            let _ = frames.send(reply).await;
            if let Some(kind) = opened.get("streamtype") {
                streams.insert(kind.clone(), stream);
            }
        }
    }
    let stream_of = |channel: u8| {
        let kind = match channel {
            STDOUT => "stdout",
            STDERR => "stderr",
            _ => "error",
        };
        streams.get(kind).copied()
    };
    let (output_tx, mut output) = mpsc::channel(16);
    let started = match request.tty {
        true => start_on_terminal(&request, &output_tx),
        false => start_on_pipes(&request, &output_tx),
    };
    drop(output_tx);
    let error_stream = stream_of(ERROR).unwrap_or_default();
    let (started, mut open_pipes) = match started {
        Ok(started) => started,
        Err(e) => {
            let status = failure(&format!("starting the command: {e}"), None);
            let _ = frames
                .send(spdy::data(
                    error_stream,
                    spdy::FIN,
                    status.to_string().as_bytes(),
                ))
                .await;
            return;
        }
    };
    let Started {
        mut child,
        mut stdin,
        terminal,
    } = started;
    let (stdin_stream, resize_stream) = (streams.get("stdin"), streams.get("resize"));
    while open_pipes > 0 {
        tokio::select! {
            frame = output.recv() => match frame {
                Some(Some(frame)) => {
                    if let Some(stream) = stream_of(frame[0]) {
                        let _ = frames.send(spdy::data(stream, 0, &frame[1..])).await;
                    }
                }
                Some(None) | None => open_pipes -= 1,
            },
            frame = incoming.recv() => match frame {
                Some(Frame::Data { stream, flags, payload }) if Some(&stream) == stdin_stream => {
                    if let Some(pipe) = stdin.as_mut()
                        && (pipe.write_all(&payload).await.is_err() || pipe.flush().await.is_err())
                    {
                        stdin = None;
                    }
                    if flags & spdy::FIN != 0 {
                        stdin = None;
                    }
                }
                Some(Frame::Data { stream, payload, .. }) if Some(&stream) == resize_stream => {
                    if let Some(terminal) = &terminal {
                        // Sizes follow one another as JSON objects.
                        for size in serde_json::Deserializer::from_slice(&payload).into_iter::<Value>().flatten() {
                            resize(terminal, size.to_string().as_bytes());
                        }
                    }
                }
                Some(Frame::Control { kind: spdy::PING, flags, payload }) => {
                    let _ = frames.send(spdy::control(spdy::PING, flags, &payload)).await;
                }
                Some(_) => {}
                None => stdin = None,
            },
        }
    }
    drop(stdin);
    let status = exit_status(&mut child, &request.command).await;
    let _ = frames
        .send(spdy::data(error_stream, 0, status.to_string().as_bytes()))
        .await;
    for kind in ["stdout", "stderr", "error"] {
        if let Some(&stream) = streams.get(kind) {
            let _ = frames.send(spdy::data(stream, spdy::FIN, &[])).await;
        }
    }
}
