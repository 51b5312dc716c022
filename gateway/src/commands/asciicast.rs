//! `interlock replay --asciicast`: a session's exec or attach stream as an asciicast v2
//! recording, which `asciinema play` and `asciinema cat` read. The header names the pod, its
//! namespace and container, and the command; `o` events are stdout and stderr, `i` events
//! stdin, `r` events resizes.
use std::io::Write;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::recording::record::{KubeChannel, Record, RecordBody};

/// The size a terminal is taken to have until the client sends its own.
const DEFAULT_SIZE: (u64, u64) = (80, 24);

pub fn write(records: &[&Record], mut out: impl Write) -> Result<()> {
    let Some((opened, request)) = records.iter().find_map(|r| match &r.body {
        RecordBody::KubeRequest(k)
            if matches!(k.info.subresource.as_deref(), Some("exec" | "attach")) =>
        {
            Some((*r, k))
        }
        _ => None,
    }) else {
        bail!(
            "this session has no exec or attach stream; `interlock replay SESSION_ID` shows what it has"
        );
    };
    let messages: Vec<(&Record, KubeChannel, &[u8])> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::KubeChannel(m) if m.stream == request.stream => {
                Some((*r, m.channel, &m.data[..]))
            }
            _ => None,
        })
        .collect();
    let (width, height) = messages
        .iter()
        .find_map(|(_, channel, data)| (*channel == KubeChannel::Resize).then(|| size(data)))
        .flatten()
        .unwrap_or(DEFAULT_SIZE);
    let info = &request.info;
    let header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": opened.ts.unix_timestamp(),
        "command": info.command.join(" "),
        "title": format!(
            "{} {}/{}{}",
            info.subresource.as_deref().unwrap_or("exec"),
            info.namespace.as_deref().unwrap_or(""),
            info.name.as_deref().unwrap_or(""),
            info.container.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        ),
        "interlock": {
            "session_id": opened.session_id,
            "namespace": info.namespace,
            "pod": info.name,
            "container": info.container,
            "command": info.command,
            "tty": info.tty,
        },
    });
    writeln!(out, "{header}").context("writing the asciicast")?;
    for (record, channel, data) in messages {
        let code = match channel {
            KubeChannel::Stdout | KubeChannel::Stderr => "o",
            KubeChannel::Stdin => "i",
            KubeChannel::Resize => "r",
            _ => continue,
        };
        let text = match channel {
            KubeChannel::Resize => match size(data) {
                Some((w, h)) => format!("{w}x{h}"),
                None => continue,
            },
            _ => String::from_utf8_lossy(data).into_owned(),
        };
        let at = (record.ts - opened.ts).as_seconds_f64().max(0.0);
        let event = json!([(at * 1e6).round() / 1e6, code, text]);
        writeln!(out, "{event}").context("writing the asciicast")?;
    }
    Ok(())
}

/// A resize message's `{"Width":…,"Height":…}`.
fn size(data: &[u8]) -> Option<(u64, u64)> {
    let value: Value = serde_json::from_slice(data).ok()?;
    Some((value["Width"].as_u64()?, value["Height"].as_u64()?))
}
