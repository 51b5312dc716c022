//! JSON-aware masking: a tokenizer walks the body, each string value is decoded, masked and
//! re-encoded, and everything else is kept byte for byte. Key rules mask the values of
//! matching keys; path rules mask values under a path, optionally only in objects of a kind
//! (the `data` of a Kubernetes Secret, which is only known once the object is read).
use std::{borrow::Cow, collections::BTreeMap};

use super::{MaskReport, Masker, NotJson, config::MaskingConfig};
use crate::patterns::Pattern;

pub struct JsonRules {
    keys: Vec<Pattern>,
    paths: Vec<PathRule>,
}

struct PathRule {
    segments: Vec<String>,
    kind: Option<String>,
}

impl JsonRules {
    pub fn new(config: &MaskingConfig) -> JsonRules {
        JsonRules {
            keys: config.json_keys.iter().map(|k| k.0.clone()).collect(),
            paths: config
                .json_paths
                .iter()
                .map(|rule| PathRule {
                    segments: rule.segments().into_iter().map(str::to_string).collect(),
                    kind: rule.kind.clone(),
                })
                .collect(),
        }
    }

    /// Regexes over raw JSON that show a rule might apply, for the one-pass fast path.
    pub fn trigger_patterns(&self) -> Vec<String> {
        let key = |body: &str| format!(r#""(?i:{body})"[ \t\r\n]*:"#);
        let mut patterns: Vec<String> = self.keys.iter().map(|k| key(k.regex_body())).collect();
        for rule in &self.paths {
            patterns.push(match &rule.kind {
                Some(kind) => format!(
                    r#""kind"[ \t\r\n]*:[ \t\r\n]*"{}""#,
                    regex_syntax::escape(kind)
                ),
                None => key(&regex_syntax::escape(&rule.segments[0])),
            });
        }
        patterns
    }

    pub fn key_is_secret(&self, key: &str) -> bool {
        let lower = key.to_ascii_lowercase();
        self.keys.iter().any(|k| k.is_match(&lower))
    }
}

/// One open object or array.
struct Frame<'a> {
    object: bool,
    /// Objects: the key whose value comes next (or came last).
    key: Option<Cow<'a, str>>,
    /// Whether a key rule masks that key's value.
    key_is_secret: bool,
    expect_key: bool,
    /// The object's `kind`, once seen.
    kind: Option<String>,
    /// String tokens under this object that kind-conditioned path rules want masked.
    pending: Vec<(usize, usize, usize)>,
}

/// Whether the body's first non-blank byte can start a JSON value.
pub fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| {
            matches!(
                b,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            )
        })
}

/// What the one pass over the raw body found: candidate spans (before validation) and
/// whether a key or path rule may apply.
#[derive(Default)]
pub struct RawHits {
    pub spans: Vec<(usize, usize)>,
    pub rules: bool,
}

/// Masks a JSON body. Strings are scanned only when they have escapes (the raw pass could
/// not see inside them) or overlap a raw candidate; every secret in a string without
/// escapes overlaps one, since the raw pass reports leftmost matches without gaps.
pub fn mask(
    masker: &Masker,
    body: &[u8],
    hits: &RawHits,
    root_kind: Option<&str>,
    report: &mut MaskReport,
) -> Result<Option<Vec<u8>>, NotJson> {
    let mut next_hit = 0;
    let mut overlaps_hit = |start: usize, end: usize| {
        while next_hit < hits.spans.len() && hits.spans[next_hit].1 <= start {
            next_hit += 1;
        }
        hits.spans.get(next_hit).is_some_and(|&(s, _)| s < end)
    };
    if !looks_like_json(body) {
        return Err(NotJson);
    }
    let rules = &masker.json_rules;
    // Replacements of whole string tokens, by start: (end, new token).
    let mut edits: BTreeMap<usize, (usize, Vec<u8>)> = BTreeMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut values_at_top = 0;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'{' | b'[' => {
                let root = stack.is_empty();
                if root {
                    values_at_top += 1;
                }
                stack.push(Frame {
                    object: b == b'{',
                    key: None,
                    key_is_secret: false,
                    expect_key: b == b'{',
                    // A body known to be an object of a kind that does not say so (a patch).
                    kind: root.then(|| root_kind.map(str::to_string)).flatten(),
                    pending: Vec::new(),
                });
                i += 1;
            }
            b'}' | b']' => {
                let frame = stack.pop().ok_or(NotJson)?;
                if frame.object != (b == b'}') {
                    return Err(NotJson);
                }
                for (start, end, rule) in frame.pending {
                    if rules.paths[rule].kind == frame.kind
                        && let Some(token) = path_mask(masker, &body[start..end], report)?
                    {
                        edits.insert(start, (end, token));
                    }
                }
                i += 1;
            }
            b':' => {
                let frame = stack.last_mut().ok_or(NotJson)?;
                if !frame.object || frame.expect_key {
                    return Err(NotJson);
                }
                i += 1;
            }
            b',' => {
                let frame = stack.last_mut().ok_or(NotJson)?;
                frame.expect_key = frame.object;
                i += 1;
            }
            b'"' => {
                let end = string_end(body, i)?;
                let token = &body[i..end];
                if stack.is_empty() {
                    values_at_top += 1;
                }
                match stack.last_mut() {
                    Some(frame) if frame.object && frame.expect_key => {
                        let key = decode(token)?;
                        frame.key_is_secret =
                            (hits.rules || token.contains(&b'\\')) && rules.key_is_secret(&key);
                        frame.key = Some(key);
                        frame.expect_key = false;
                    }
                    _ => {
                        let scan = Scan {
                            detectors: token.contains(&b'\\') || overlaps_hit(i, end),
                            paths: hits.rules,
                        };
                        string_value(masker, &mut stack, body, i, end, scan, &mut edits, report)?;
                    }
                }
                i = end;
            }
            _ => {
                // A number or a literal: skip to the next delimiter.
                if stack.is_empty() {
                    values_at_top += 1;
                }
                let len = body[i..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                    .unwrap_or(body.len() - i);
                if !matches!(b, b'-' | b'0'..=b'9' | b't' | b'f' | b'n') {
                    return Err(NotJson);
                }
                i += len;
            }
        }
    }
    if !stack.is_empty() || values_at_top != 1 {
        return Err(NotJson);
    }
    if edits.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut last = 0;
    for (start, (end, token)) in edits {
        out.extend_from_slice(&body[last..start]);
        out.extend_from_slice(&token);
        last = end;
    }
    out.extend_from_slice(&body[last..]);
    Ok(Some(out))
}

/// Which checks a string value needs.
#[derive(Clone, Copy)]
struct Scan {
    detectors: bool,
    paths: bool,
}

/// A string in value position: key rules, path rules, `kind`, then the detectors.
#[allow(clippy::too_many_arguments)]
fn string_value(
    masker: &Masker,
    stack: &mut [Frame<'_>],
    body: &[u8],
    start: usize,
    end: usize,
    scan: Scan,
    edits: &mut BTreeMap<usize, (usize, Vec<u8>)>,
    report: &mut MaskReport,
) -> Result<(), NotJson> {
    let rules = &masker.json_rules;
    let token = &body[start..end];
    if let Some(frame) = stack.last_mut()
        && frame.object
        && let Some(key) = &frame.key
    {
        if key == "kind" {
            frame.kind = Some(decode(token)?.into_owned());
        }
        if frame.key_is_secret {
            if let Some(masked) = whole_mask(masker, token, "json_key", report)? {
                edits.insert(start, (end, masked));
            }
            return Ok(());
        }
    }
    if scan.paths {
        for (index, rule) in rules.paths.iter().enumerate() {
            for depth in 0..stack.len() {
                if rule.kind.is_none() && depth > 0 {
                    break;
                }
                // The value's path below this frame, e.g. data.password, against the rule.
                let below = &stack[depth..];
                let applies = stack[depth].object
                    && below.len() >= rule.segments.len()
                    && rule.segments.iter().zip(below).all(|(want, frame)| {
                        want == "*" || (frame.object && frame.key.as_deref() == Some(want))
                    });
                if applies {
                    match rule.kind {
                        Some(_) => stack[depth].pending.push((start, end, index)),
                        None => {
                            if let Some(masked) = path_mask(masker, token, report)? {
                                edits.insert(start, (end, masked));
                            }
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    if !scan.detectors {
        return Ok(());
    }
    let content = &token[1..token.len() - 1];
    let mut local = MaskReport::default();
    let masked = if content.contains(&b'\\') {
        let mut text = decode(token)?.into_owned();
        masker.mask_string(&mut text, &mut local).then_some(text)
    } else {
        match masker.mask_text(content, &mut local) {
            Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| NotJson)?),
            None => None,
        }
    };
    if let Some(text) = masked {
        let encoded = serde_json::to_vec(&text).map_err(|_| NotJson)?;
        edits.insert(start, (end, encoded));
        report.merge(local);
    }
    Ok(())
}

/// The whole value replaced by a tag; None for empty and already-masked values.
/// A value a path rule names: a string holding a JSON object (`kubectl apply`'s copy of a
/// Secret) is masked inside, so it stays JSON its readers can parse; any other is masked whole.
fn path_mask(
    masker: &Masker,
    token: &[u8],
    report: &mut MaskReport,
) -> Result<Option<Vec<u8>>, NotJson> {
    let value = decode(token)?;
    if value.trim_start().starts_with('{') {
        match masker.mask_json(value.as_bytes(), report) {
            Ok(Some(masked)) => {
                let text = String::from_utf8_lossy(&masked);
                return Ok(serde_json::to_vec(&text).ok());
            }
            Ok(None) => return Ok(None),
            Err(NotJson) => {}
        }
    }
    whole_mask(masker, token, "json_path", report)
}

fn whole_mask(
    masker: &Masker,
    token: &[u8],
    label: &str,
    report: &mut MaskReport,
) -> Result<Option<Vec<u8>>, NotJson> {
    let value = decode(token)?;
    if value.is_empty() || value.starts_with("[MASKED:") {
        return Ok(None);
    }
    let mut tag = Vec::new();
    masker.replace(label, value.as_bytes(), &mut tag);
    report.add(label);
    let mut out = Vec::with_capacity(tag.len() + 2);
    out.push(b'"');
    out.extend_from_slice(&tag);
    out.push(b'"');
    Ok(Some(out))
}

/// The index just past the closing quote of the string starting at `start`.
fn string_end(body: &[u8], start: usize) -> Result<usize, NotJson> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', body.get(i..).ok_or(NotJson)?).ok_or(NotJson)?;
        if body[i] == b'\\' {
            i += 2;
        } else {
            return Ok(i + 1);
        }
    }
}

/// A string token's value; borrowed when it has no escapes.
fn decode(token: &[u8]) -> Result<Cow<'_, str>, NotJson> {
    let content = &token[1..token.len() - 1];
    if !content.contains(&b'\\') {
        return std::str::from_utf8(content)
            .map(Cow::Borrowed)
            .map_err(|_| NotJson);
    }
    serde_json::from_slice(token)
        .map(Cow::Owned)
        .map_err(|_| NotJson)
}
