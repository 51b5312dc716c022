//! `interlock wrap`: run a command in a fresh cgroup that the running gateway intercepts.
use std::{
    ffi::CString,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::{ffi::OsStrExt, net::UnixStream, process::CommandExt},
    path::Path,
    process::{Command, ExitStatus},
};

use anyhow::{Context, Result, bail};

use crate::{
    admin::control::{ControlRequest, ControlResponse},
    cgroup,
};

/// Runs `command` intercepted and returns the exit code to pass through.
pub fn wrap(control_socket: &Path, pod_proxy: Option<IpAddr>, command: &[String]) -> Result<i32> {
    let Some((program, args)) = command.split_first() else {
        bail!("nothing to run; usage: interlock wrap --config FILE -- CMD [ARGS...]");
    };
    let stream = UnixStream::connect(control_socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "only root may wrap commands: the gateway's control socket {} is root-only",
            control_socket.display()
        ),
        _ => anyhow::anyhow!(
            "no Interlock gateway is running (cannot connect to {}: {e}); start one with \
             `interlock run --config FILE` using the same config",
            control_socket.display()
        ),
    })?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let registered = request(
        &mut writer,
        &mut reader,
        &ControlRequest::Register { pod_proxy },
    )?;
    if !registered.ok {
        bail!(
            "the gateway refused to register a cgroup: {}",
            registered.error.unwrap_or_default()
        );
    }
    let cgroup_dir = registered
        .cgroup
        .context("gateway answered without a cgroup path")?;
    let procs = CString::new(cgroup_dir.join("cgroup.procs").as_os_str().as_bytes())?;

    let mut child = Command::new(program);
    child.args(args);
    // SAFETY: the closure only makes async-signal-safe syscalls (open, write, close).
    unsafe {
        child.pre_exec(move || cgroup::join_cgroup_in_child(&procs));
    }
    let status = child
        .status()
        .with_context(|| format!("starting `{program}`"));

    // Ending the registration also removes the cgroup. If the gateway is gone (it crashed
    // or was killed), remove the cgroup here.
    let unregistered = request(&mut writer, &mut reader, &ControlRequest::Unregister);
    if unregistered.is_err() {
        eprintln!(
            "interlock wrap: warning: the gateway stopped while `{program}` ran: its sessions \
             open then were cut, and until a gateway was back its connections were refused \
             (fail_mode: closed) or not intercepted (open); a restarted gateway intercepts it \
             again (see the gateway's log)"
        );
        let _ = std::fs::remove_dir(&cgroup_dir);
    }
    Ok(exit_code(status?))
}

fn request(
    writer: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    request: &ControlRequest,
) -> Result<ControlResponse> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // A gateway that refuses us answers and closes at once, possibly before our write lands:
    // read its answer even when the write failed.
    let sent = writer.write_all(&line);
    let mut answer = String::new();
    if reader.read_line(&mut answer)? == 0 {
        sent.context("sending to the gateway")?;
        bail!("the gateway closed the control connection");
    }
    serde_json::from_str(&answer).context("the gateway's answer was not understood")
}

/// Shell convention: the exit code, or 128 + the signal that killed the command.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
