//! The masking engine: every detector in one multi-pattern lazy DFA, so a body is scanned
//! once whatever the number of detectors. Validators then confirm candidates (Luhn, entropy,
//! …). JSON is masked inside decoded string values and re-encoded; SSE per event; other text
//! as a stream with a hold-back window so secrets split across reads are still seen whole.
pub mod config;
pub mod detectors;
mod json;
pub mod stream;

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use hmac::{KeyInit, Mac};
use regex_automata::{
    Anchored, Input,
    meta::{self, Regex},
    util::syntax,
};
use serde_json::Value;

pub use self::config::{MaskApply, MaskingConfig, ReplacementStyle};
use self::detectors::{SERVICE_ACCOUNT_TOKEN, Validator};

/// The body is not JSON (it is masked as text instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

/// Which detectors fired, and how often. Never the values.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskReport(pub BTreeMap<String, u64>);

impl MaskReport {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, detector: &str) {
        *self.0.entry(detector.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: MaskReport) {
        for (name, count) in other.0 {
            *self.0.entry(name).or_default() += count;
        }
    }
}

struct Detector {
    name: Arc<str>,
    validator: Validator,
    /// The pattern has a capture group: only it is masked, the rest is context.
    has_secret_group: bool,
}

pub struct Masker {
    /// All enabled detectors, pattern id = index into `detectors`.
    detectors_regex: Regex,
    detectors: Vec<Detector>,
    /// Detectors plus the JSON key and path triggers: one pass tells whether a JSON body
    /// without escapes can hold anything to mask.
    json_trigger: Regex,
    /// The key and path triggers alone.
    rules_trigger: Regex,
    json_rules: json::JsonRules,
    replacement: Replacement,
    pub max_buffer: usize,
    pub holdback: usize,
    /// Service-account tokens are JWTs; turning their detector off labels them `jwt`.
    label_service_account_tokens: bool,
}

enum Replacement {
    Label,
    Last4,
    Hmac(Vec<u8>),
}

fn syntax_config() -> syntax::Config {
    // Bytes, ASCII classes and ASCII word boundaries: what the lazy DFA runs fastest.
    syntax::Config::new().unicode(false).utf8(false)
}

fn build(patterns: &[String]) -> Result<Regex, String> {
    meta::Builder::new()
        .syntax(syntax_config())
        .configure(
            meta::Config::new()
                .utf8_empty(false)
                .hybrid_cache_capacity(8 << 20),
        )
        .build_many(patterns)
        .map_err(|e| e.to_string())
}

impl Masker {
    pub fn new(config: &MaskingConfig) -> Result<Masker, String> {
        for name in &config.disable {
            if !detectors::all().any(|d| d.name == name) && name != SERVICE_ACCOUNT_TOKEN {
                return Err(format!(
                    "masking.disable names `{name}`, which is not a built-in detector; run `interlock detectors` for the list"
                ));
            }
        }
        let mut patterns = Vec::new();
        let mut detectors = Vec::new();
        for custom in &config.custom {
            build(std::slice::from_ref(&custom.regex)).map_err(|e| {
                format!(
                    "masking.custom `{}`: the regex does not compile ({e}); detectors match bytes, ASCII classes only",
                    custom.name
                )
            })?;
            patterns.push(custom.regex.clone());
            detectors.push(Detector {
                name: custom.name.as_str().into(),
                validator: Validator::None,
                has_secret_group: false,
            });
        }
        for builtin in detectors::all().filter(|d| !config.disable.iter().any(|n| n == d.name)) {
            patterns.push(builtin.pattern.to_string());
            detectors.push(Detector {
                name: builtin.name.into(),
                validator: builtin.validator,
                has_secret_group: false,
            });
        }
        let detectors_regex = build(&patterns)?;
        for (id, detector) in detectors.iter_mut().enumerate() {
            detector.has_secret_group = detectors_regex
                .group_info()
                .group_len(regex_automata::PatternID::must(id))
                > 1;
        }
        let json_rules = json::JsonRules::new(config);
        let triggers = json_rules.trigger_patterns();
        let rules_trigger = build(&triggers)?;
        patterns.extend(triggers);
        let json_trigger = build(&patterns)?;
        let replacement = match config.replacement {
            ReplacementStyle::Label => Replacement::Label,
            ReplacementStyle::Last4 => Replacement::Last4,
            ReplacementStyle::Hmac => {
                let path = config.hmac_key_file.as_ref().ok_or(
                    "masking.replacement is hmac but masking.hmac_key_file is not set; point it at a file of random bytes (e.g. `head -c 32 /dev/urandom`)",
                )?;
                let key = std::fs::read(path)
                    .map_err(|e| format!("masking.hmac_key_file {}: {e}", path.display()))?;
                if key.is_empty() {
                    return Err(format!("masking.hmac_key_file {} is empty", path.display()));
                }
                Replacement::Hmac(key)
            }
        };
        Ok(Masker {
            detectors_regex,
            detectors,
            json_trigger,
            rules_trigger,
            json_rules,
            replacement,
            max_buffer: config.max_buffer as usize,
            holdback: config.holdback as usize,
            label_service_account_tokens: !config
                .disable
                .iter()
                .any(|n| n == SERVICE_ACCOUNT_TOKEN),
        })
    }

    /// The names of the detectors that run.
    pub fn detector_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.detectors.iter().map(|d| &*d.name).collect();
        names.dedup();
        if self.label_service_account_tokens && names.contains(&"jwt") {
            names.push(SERVICE_ACCOUNT_TOKEN);
        }
        names
    }

    /// Confirmed secrets in `text[..end]`, as (start, end, detector) in order.
    fn find(&self, text: &[u8], end: usize) -> Vec<(usize, usize, &str)> {
        let mut found = Vec::new();
        let mut at = 0;
        let mut captures = None;
        while at <= end {
            let Some(m) = self
                .detectors_regex
                .search(&Input::new(text).range(at..end))
            else {
                break;
            };
            at = m.end().max(m.start() + 1);
            let detector = &self.detectors[m.pattern().as_usize()];
            let (start, stop) = if detector.has_secret_group {
                let caps = captures.get_or_insert_with(|| self.detectors_regex.create_captures());
                self.detectors_regex.search_captures(
                    &Input::new(text)
                        .range(m.start()..m.end())
                        .anchored(Anchored::Pattern(m.pattern())),
                    caps,
                );
                match caps.get_group(1) {
                    Some(group) => (group.start, group.end),
                    None => (m.start(), m.end()),
                }
            } else {
                (m.start(), m.end())
            };
            if start == stop {
                continue;
            }
            if let Some(relabel) = detector.validator.check(&text[start..stop]) {
                let label = relabel.filter(|_| self.label_service_account_tokens);
                found.push((start, stop, label.unwrap_or(&detector.name)));
            }
        }
        found
    }

    /// Masks secrets in text; None when there is nothing to mask (the input stands as is).
    pub fn mask_text(&self, text: &[u8], report: &mut MaskReport) -> Option<Vec<u8>> {
        self.mask_text_until(text, text.len(), report)
            .map(|(masked, _)| masked)
    }

    /// Masks `text[..end]` (the rest is context for boundaries only). Returns the output
    /// and how much of the input it covers: a match crossing `end` is left for later.
    fn mask_text_until(
        &self,
        text: &[u8],
        end: usize,
        report: &mut MaskReport,
    ) -> Option<(Vec<u8>, usize)> {
        let found = self.find(text, text.len());
        let mut covered = end;
        if let Some(&(start, _, _)) = found.iter().find(|(s, e, _)| *s < end && *e > end) {
            covered = start;
        }
        let found: Vec<_> = found
            .into_iter()
            .filter(|(_, e, _)| *e <= covered)
            .collect();
        if found.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(covered + 32);
        let mut last = 0;
        for (start, stop, name) in found {
            out.extend_from_slice(&text[last..start]);
            self.replace(name, &text[start..stop], &mut out);
            report.add(name);
            last = stop;
        }
        out.extend_from_slice(&text[last..covered]);
        Some((out, covered))
    }

    fn replace(&self, detector: &str, secret: &[u8], out: &mut Vec<u8>) {
        let mut tag = format!("[MASKED:{detector}");
        match &self.replacement {
            Replacement::Label => {}
            Replacement::Last4 => {
                // Only ASCII survives, so the tag stays valid UTF-8 and JSON-safe.
                let tail: String = secret
                    .iter()
                    .rev()
                    .take(4)
                    .rev()
                    .map(|&b| {
                        if b.is_ascii_alphanumeric() {
                            b as char
                        } else {
                            '*'
                        }
                    })
                    .collect();
                let _ = write!(tag, ":****{tail}");
            }
            Replacement::Hmac(key) => {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(secret);
                let digest = mac.finalize().into_bytes();
                tag.push_str(":hmac=");
                for byte in &digest[..8] {
                    let _ = write!(tag, "{byte:02x}");
                }
            }
        }
        tag.push(']');
        out.extend_from_slice(tag.as_bytes());
    }

    /// Masks a string in place; true when it changed.
    pub fn mask_string(&self, text: &mut String, report: &mut MaskReport) -> bool {
        match self.mask_text(text.as_bytes(), report) {
            Some(masked) => {
                // Matches end on ASCII boundaries; lossy only guards a pathological pattern.
                *text = String::from_utf8(masked)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                true
            }
            None => false,
        }
    }

    /// Masks a JSON body; None when there is nothing to mask, Err when it is not JSON.
    pub fn mask_json(
        &self,
        body: &[u8],
        report: &mut MaskReport,
    ) -> Result<Option<Vec<u8>>, NotJson> {
        self.mask_json_as(body, None, report)
    }

    /// Masks a JSON body whose top object is of `kind` even where it does not say so: a
    /// patch of a Secret names no kind, and its `data` is still the Secret's.
    pub fn mask_json_as(
        &self,
        body: &[u8],
        kind: Option<&str>,
        report: &mut MaskReport,
    ) -> Result<Option<Vec<u8>>, NotJson> {
        if let Some(kind) = kind
            && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
        {
            return self.mask_json_patch(body, kind, report);
        }
        // One pass over the raw body with every detector and rule trigger: without a hit
        // and without escapes, no string can hold anything to mask.
        // A kind given applies its rules without a `kind` in the body to trigger them.
        let hits = if kind.is_some() || self.json_trigger.is_match(body) {
            // A string without escapes is only scanned if a raw candidate overlaps it.
            json::RawHits {
                spans: self
                    .detectors_regex
                    .find_iter(body)
                    .map(|m| (m.start(), m.end()))
                    .collect(),
                rules: kind.is_some() || self.rules_trigger.is_match(body),
            }
        } else if memchr::memchr(b'\\', body).is_some() {
            json::RawHits::default()
        } else {
            return Ok(None);
        };
        json::mask(self, body, &hits, kind, report)
    }

    /// A JSON Patch (RFC 6902) of an object of `kind`: each operation's `value` is masked as
    /// it would sit in the object at its `path`, so `replace /data/password` of a Secret is
    /// masked by the Secret's rules. The patch is written out again when anything changed.
    fn mask_json_patch(
        &self,
        body: &[u8],
        kind: &str,
        report: &mut MaskReport,
    ) -> Result<Option<Vec<u8>>, NotJson> {
        let mut operations: Vec<Value> = serde_json::from_slice(body).map_err(|_| NotJson)?;
        let mut changed = false;
        for operation in &mut operations {
            let Some(path) = operation.get("path").and_then(Value::as_str) else {
                continue;
            };
            // RFC 6901 pointer segments, unescaped.
            let segments: Vec<String> = path
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            let Some(value) = operation.get_mut("value") else {
                continue;
            };
            let mut placed = value.take();
            for segment in segments.iter().rev() {
                placed = Value::Object([(segment.clone(), placed)].into_iter().collect());
            }
            let placed = serde_json::to_vec(&placed).map_err(|_| NotJson)?;
            let masked = match self.mask_json_as(&placed, Some(kind), report)? {
                Some(masked) => {
                    changed = true;
                    serde_json::from_slice::<Value>(&masked).map_err(|_| NotJson)?
                }
                None => serde_json::from_slice(&placed).map_err(|_| NotJson)?,
            };
            *value = segments
                .iter()
                .try_fold(masked, |mut object, segment| {
                    object.get_mut(segment).map(Value::take)
                })
                .unwrap_or(Value::Null);
        }
        match changed {
            true => Ok(Some(serde_json::to_vec(&operations).map_err(|_| NotJson)?)),
            false => Ok(None),
        }
    }

    /// A complete body of the given content type; None when nothing changed.
    pub fn mask_body(&self, body: &[u8], report: &mut MaskReport) -> Option<Vec<u8>> {
        self.mask_body_as(body, None, report)
    }

    /// Like `mask_body`, a JSON body's top object taken to be of `kind`.
    pub fn mask_body_as(
        &self,
        body: &[u8],
        kind: Option<&str>,
        report: &mut MaskReport,
    ) -> Option<Vec<u8>> {
        match self.mask_json_as(body, kind, report) {
            Ok(masked) => masked,
            Err(NotJson) => self.mask_text(body, report),
        }
    }

    /// Masks a parsed JSON value in place (for summaries kept in records).
    pub fn mask_value(&self, value: &mut Value, report: &mut MaskReport) {
        match value {
            Value::String(text) => {
                self.mask_string(text, report);
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_value(v, report)),
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if let Value::String(text) = value
                        && self.json_rules.key_is_secret(key)
                        && !text.is_empty()
                        && !text.starts_with("[MASKED:")
                    {
                        let mut out = Vec::new();
                        self.replace("json_key", text.as_bytes(), &mut out);
                        *text = String::from_utf8(out).expect("tags are ASCII");
                        report.add("json_key");
                    } else {
                        self.mask_value(value, report);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
