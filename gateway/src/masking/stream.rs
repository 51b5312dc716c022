//! Masking a body as it streams. Output comes in pieces, each the raw bytes and, when
//! masking changed them, the masked bytes: the caller forwards one and records the other.
//! SSE is masked per complete event, JSON as a whole body, a stream of JSON lines (an API
//! server's watch) per line, other text through a hold-back window; each bounded by the
//! configured buffer sizes.
use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::{MaskReport, Masker};

pub struct Piece {
    pub raw: Bytes,
    /// None: masking left the bytes as they were.
    pub masked: Option<Bytes>,
}

impl Piece {
    pub fn masked_or_raw(&self) -> &Bytes {
        self.masked.as_ref().unwrap_or(&self.raw)
    }
}

/// How a body is read for masking, chosen from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Sse,
    Json,
    /// One JSON document a line, for as long as the stream lasts (a Kubernetes watch). Never
    /// told by content type, which says `application/json`: the request says it is a watch.
    JsonLines,
    Text,
    /// Images, audio, archives: passed through as they are.
    Binary,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> BodyKind {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence == "text/event-stream" {
            BodyKind::Sse
        } else if essence == "application/json" || essence.ends_with("+json") {
            BodyKind::Json
        } else if ["image/", "audio/", "video/", "font/"]
            .iter()
            .any(|p| essence.starts_with(p))
            || matches!(
                essence,
                "application/octet-stream"
                    | "application/zip"
                    | "application/gzip"
                    | "application/pdf"
            )
        {
            BodyKind::Binary
        } else {
            BodyKind::Text
        }
    }
}

enum Mode {
    Sse,
    Json,
    JsonLines,
    Text,
    Binary,
}

pub struct BodyMasker<'m> {
    masker: &'m Masker,
    mode: Mode,
    pending: BytesMut,
    /// SSE and JSON lines: how far `pending` was searched for an event or line end.
    scanned: usize,
    pub report: MaskReport,
}

impl<'m> BodyMasker<'m> {
    pub fn new(masker: &'m Masker, kind: BodyKind) -> Self {
        BodyMasker {
            masker,
            mode: match kind {
                BodyKind::Sse => Mode::Sse,
                BodyKind::Json => Mode::Json,
                BodyKind::JsonLines => Mode::JsonLines,
                BodyKind::Text => Mode::Text,
                BodyKind::Binary => Mode::Binary,
            },
            pending: BytesMut::new(),
            scanned: 0,
            report: MaskReport::default(),
        }
    }

    /// Bytes held back, waiting for the end of an event, body or window.
    pub fn holding(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        match self.mode {
            Mode::Binary => {
                return vec![Piece {
                    raw: Bytes::copy_from_slice(data),
                    masked: None,
                }];
            }
            _ => self.pending.extend_from_slice(data),
        }
        let mut pieces = Vec::new();
        match self.mode {
            Mode::Sse => {
                while let Some(end) = event_end(&self.pending, self.scanned.saturating_sub(3)) {
                    let event = self.pending.split_to(end).freeze();
                    self.scanned = 0;
                    pieces.push(self.mask_event(event));
                }
                self.scanned = self.pending.len();
                if self.pending.len() > self.masker.max_buffer {
                    // An event this large is masked as text from here on.
                    self.mode = Mode::Text;
                }
            }
            Mode::JsonLines => {
                let from = self.scanned;
                if let Some(last) = memchr::memrchr(b'\n', &self.pending[from..]) {
                    let lines = self.pending.split_to(from + last + 1).freeze();
                    pieces.push(self.mask_json(lines));
                }
                self.scanned = self.pending.len();
                if self.pending.len() > self.masker.max_buffer {
                    // A line this large is masked as text from here on.
                    self.mode = Mode::Text;
                }
            }
            Mode::Json if self.pending.len() > self.masker.max_buffer => self.mode = Mode::Text,
            _ => {}
        }
        if matches!(self.mode, Mode::Text) {
            self.text_window(&mut pieces, false);
        }
        pieces
    }

    /// The end of the body: whatever is held is masked and released.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if self.pending.is_empty() {
            return pieces;
        }
        match self.mode {
            Mode::Json | Mode::JsonLines => {
                let body = self.pending.split().freeze();
                pieces.push(self.mask_json(body));
            }
            Mode::Sse => {
                let event = self.pending.split().freeze();
                pieces.push(self.mask_event(event));
            }
            Mode::Text | Mode::Binary => self.text_window(&mut pieces, true),
        }
        pieces
    }

    /// Releases the text that no secret crossing the window's end can reach back into.
    fn text_window(&mut self, pieces: &mut Vec<Piece>, at_end: bool) {
        // A window that grew past the buffer limit (a match keeps reaching back to its
        // start) is released whole rather than growing without bound.
        let forced = self.pending.len() > self.masker.max_buffer;
        let holdback = if at_end || forced {
            0
        } else {
            self.masker.holdback
        };
        if holdback > 0 && self.pending.len() < 2 * holdback {
            return;
        }
        let end = self.pending.len() - holdback;
        let (masked, covered) =
            match self
                .masker
                .mask_text_until(&self.pending, end, &mut self.report)
            {
                Some((masked, covered)) => (Some(Bytes::from(masked)), covered),
                None => (None, end),
            };
        if covered == 0 {
            return;
        }
        pieces.push(Piece {
            raw: self.pending.split_to(covered).freeze(),
            masked,
        });
    }

    /// Masks a whole JSON body, or complete JSON lines: each line is one document, and a
    /// document written without line breaks (as watch events are) is masked as one.
    fn mask_json(&mut self, body: Bytes) -> Piece {
        let masked = match self.mode {
            Mode::JsonLines => mask_json_lines(self.masker, &body, &mut self.report),
            _ => self.masker.mask_body(&body, &mut self.report),
        };
        Piece {
            raw: body,
            masked: masked.map(Bytes::from),
        }
    }

    fn mask_event(&mut self, event: Bytes) -> Piece {
        let masked = mask_sse_event(self.masker, &event, &mut self.report);
        Piece {
            raw: event,
            masked: masked.map(Bytes::from),
        }
    }
}

/// Masks each line as a body of its own; None when nothing changed.
fn mask_json_lines(masker: &Masker, lines: &[u8], report: &mut MaskReport) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut start = 0;
    for line in lines.split_inclusive(|&b| b == b'\n') {
        if let Some(masked) = masker.mask_body(line, report) {
            let out = out.get_or_insert_with(|| lines[..start].to_vec());
            out.extend_from_slice(&masked);
        } else if let Some(out) = &mut out {
            out.extend_from_slice(line);
        }
        start += line.len();
    }
    out
}

/// The end (separator included) of the first complete event at or after `from`.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    crate::sse::find_event_end(buf, from).map(|(end, separator)| end + separator)
}

/// Masks one event's `data` (joined, as JSON when it is JSON) and writes the event again,
/// other fields as they were; None when nothing changed.
fn mask_sse_event(masker: &Masker, event: &[u8], report: &mut MaskReport) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let mut values = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|value| value.strip_prefix(' ').unwrap_or(value));
    // Most events have one data line, masked where it lies; more are joined first.
    let data = match (values.next(), values.next()) {
        // Comments and other fields can carry text too.
        (None, _) => return masker.mask_text(event, report),
        (Some(only), None) => Cow::Borrowed(only),
        (Some(first), Some(second)) => Cow::Owned(
            [first, second]
                .into_iter()
                .chain(values)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    let masked = masker.mask_body(data.as_bytes(), report)?;
    let masked = String::from_utf8(masked).ok()?;
    let mut out = String::with_capacity(event.len());
    let mut data_written = false;
    for line in text.lines() {
        if line.starts_with("data:") {
            if !data_written {
                for data_line in masked.split('\n') {
                    out.push_str("data: ");
                    out.push_str(data_line);
                    out.push('\n');
                }
                data_written = true;
            }
        } else if !line.is_empty() {
            let mut field = line.to_string();
            masker.mask_string(&mut field, report);
            out.push_str(&field);
            out.push('\n');
        }
    }
    out.push('\n');
    Some(out.into_bytes())
}
