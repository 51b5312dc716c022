//! The exchange log: how an L7 session's requests, answers and what was masked in them become
//! records. A record that cannot be written means the recorder stopped (shutdown), and the
//! session then ends anyway, so writes here report nothing back.
use std::sync::Arc;

use bytes::Bytes;
use hyper::{HeaderMap, StatusCode, http::request};

use crate::{
    masking::{MaskApply, MaskReport, Masker},
    protocols::target::Target,
    recording::{
        SessionRecorder,
        record::{DataChunk, HttpRequestHead, HttpResponseHead, MaskedBody, RecordBody},
    },
    telemetry::events::{InternalEvent, SecretsMasked},
    vocabulary::Direction,
};

/// Where masking applies to one exchange: the target's setting, or a matching rule's.
#[derive(Debug, Clone, Copy)]
pub struct Masking {
    pub apply: MaskApply,
    pub record_raw: bool,
}

pub struct ExchangeLog {
    session: SessionRecorder,
    masker: Arc<Masker>,
    target: String,
    /// The target keeps clear text in its records.
    record_raw: bool,
}

impl ExchangeLog {
    pub fn new(session: SessionRecorder, masker: Arc<Masker>, target: &Target) -> Self {
        ExchangeLog {
            session,
            masker,
            target: target.name.clone(),
            record_raw: target.record_raw,
        }
    }

    pub fn session_id(&self) -> &str {
        self.session.id()
    }

    pub fn masker(&self) -> &Arc<Masker> {
        &self.masker
    }

    /// The recorder itself, for bytes relayed as they are (an upgraded tunnel).
    pub fn session(&self) -> &SessionRecorder {
        &self.session
    }

    pub async fn record(&self, body: RecordBody) {
        let _ = self.session.record(body).await;
    }

    pub async fn data(&self, direction: Direction, data: Bytes) {
        let _ = self.session.data(direction, data).await;
    }

    /// Records what `build` makes from what was seen, off the data path (see
    /// `SessionRecorder::record_later`).
    pub async fn later(&self, build: impl FnOnce() -> Vec<RecordBody> + Send + 'static) {
        let _ = self.session.record_later(Box::new(build)).await;
    }

    /// Records a request head, masked unless the target keeps raw records.
    pub async fn request_head(&self, head: &request::Parts) {
        let (method, mut uri) = (head.method.to_string(), head.uri.to_string());
        let (version, headers) = (format!("{:?}", head.version), head.headers.clone());
        let (masker, record_raw) = (self.masker.clone(), self.record_raw);
        self.later(move || {
            if !record_raw {
                masker.mask_string(&mut uri, &mut MaskReport::default());
            }
            let headers = recordable_headers(&masker, record_raw, &headers);
            vec![RecordBody::HttpRequest(HttpRequestHead {
                method,
                uri,
                version,
                headers,
            })]
        })
        .await;
    }

    /// Records a response head, the upstream's or one the gateway made.
    pub async fn response_head(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        generated_by_gateway: bool,
    ) {
        let (masker, record_raw, headers) = (self.masker.clone(), self.record_raw, headers.clone());
        self.later(move || {
            vec![RecordBody::HttpResponse(HttpResponseHead {
                status: status.as_u16(),
                headers: recordable_headers(&masker, record_raw, &headers),
                generated_by_gateway,
            })]
        })
        .await;
    }

    /// Records the request body (masked unless `record_raw`) and returns what to forward.
    pub async fn request_body(&self, body: Bytes, masking: Masking) -> Bytes {
        self.request_body_as(body, masking, None).await
    }

    /// Like `request_body`, a JSON body's top object taken to be of `kind` (a patch of a
    /// Secret names no kind).
    pub async fn request_body_as(
        &self,
        body: Bytes,
        masking: Masking,
        kind: Option<&'static str>,
    ) -> Bytes {
        if body.is_empty() {
            return body;
        }
        if !masking.apply.requests() {
            // The upstream gets the body as sent, so only the record's copy is masked, and
            // that is done off the data path.
            let (masker, target, raw) = (self.masker.clone(), self.target.clone(), body.clone());
            self.later(move || {
                let mut report = MaskReport::default();
                let recorded = if masking.record_raw {
                    raw
                } else {
                    masker
                        .mask_body_as(&raw, kind, &mut report)
                        .map_or(raw, Bytes::from)
                };
                let chunk = RecordBody::Data(DataChunk::new(Direction::Up, recorded));
                std::iter::once(chunk)
                    .chain(masked_record(&target, Direction::Up, report, false))
                    .collect()
            })
            .await;
            return body;
        }
        // The upstream gets the masked body, so it is masked here, on the data path.
        let mut report = MaskReport::default();
        let masked = self
            .masker
            .mask_body_as(&body, kind, &mut report)
            .map(Bytes::from);
        let recorded = match (&masked, masking.record_raw) {
            (Some(masked), false) => masked.clone(),
            _ => body.clone(),
        };
        self.data(Direction::Up, recorded).await;
        self.masked(Direction::Up, report, true).await;
        masked.unwrap_or(body)
    }

    /// Counts what was masked, and says so in a record, when anything was.
    pub async fn masked(&self, direction: Direction, report: MaskReport, peer_saw_masked: bool) {
        if let Some(masked) = masked_record(&self.target, direction, report, peer_saw_masked) {
            self.record(masked).await;
        }
    }
}

/// Counts what was masked, and says so in a record; None when nothing was.
fn masked_record(
    target: &str,
    direction: Direction,
    report: MaskReport,
    peer_saw_masked: bool,
) -> Option<RecordBody> {
    if report.is_empty() {
        return None;
    }
    for (detector, count) in &report.0 {
        SecretsMasked {
            target,
            direction,
            detector,
            count: *count,
        }
        .emit();
    }
    Some(RecordBody::Masked(MaskedBody {
        direction,
        detectors: report,
        peer_saw_masked,
    }))
}

/// Headers as recorded: credentials are redacted whole, other values masked.
fn recordable_headers(
    masker: &Masker,
    record_raw: bool,
    headers: &HeaderMap,
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "authorization" | "proxy-authorization" | "cookie" | "set-cookie" => {
                    "[REDACTED]".to_string()
                }
                _ => {
                    let mut text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    if !record_raw {
                        masker.mask_string(&mut text, &mut MaskReport::default());
                    }
                    text
                }
            };
            (name.to_string(), value)
        })
        .collect()
}
