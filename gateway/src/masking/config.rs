//! `masking:` in the gateway config: which detectors run, how values are replaced, and the
//! JSON rules. Where masking applies (per target, per policy rule) is `MaskApply`.
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, de};

use crate::patterns::Pattern;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Built-in detectors to turn off, by name (`interlock detectors` lists them).
    #[serde(default)]
    pub disable: Vec<String>,
    /// Extra detectors: a regex and a label. They take priority over the built-in ones.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    #[serde(default)]
    pub replacement: ReplacementStyle,
    /// Key for `replacement: hmac` (any bytes; at least 32 recommended). Required for hmac.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// JSON object keys whose string values are always masked (glob or `re:`, case-insensitive).
    #[serde(default = "default_json_keys")]
    pub json_keys: Vec<KeyPattern>,
    /// JSON paths whose string values are always masked, e.g. the `data` of a Secret.
    #[serde(default = "default_json_paths")]
    pub json_paths: Vec<JsonPathRule>,
    /// Largest JSON body or SSE event masked as a whole. Beyond it, the rest of that body is
    /// masked as a text stream (detectors only, no JSON rules).
    #[serde(
        default = "default_max_buffer",
        deserialize_with = "crate::config::values::byte_size"
    )]
    pub max_buffer: u64,
    /// Plain-text streams are held back by this much so that a secret split across reads is
    /// still seen whole. Longer secrets split across reads can be missed.
    #[serde(
        default = "default_holdback",
        deserialize_with = "crate::config::values::byte_size"
    )]
    pub holdback: u64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            disable: Vec::new(),
            custom: Vec::new(),
            replacement: ReplacementStyle::default(),
            hmac_key_file: None,
            json_keys: default_json_keys(),
            json_paths: default_json_paths(),
            max_buffer: default_max_buffer(),
            holdback: default_holdback(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    /// Matched against bytes; a capture group, if any, is the part that is masked.
    pub regex: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplacementStyle {
    /// `[MASKED:<detector>]`
    #[default]
    Label,
    /// `[MASKED:<detector>:****1234]`
    Last4,
    /// `[MASKED:<detector>:hmac=<16 hex>]`: equal secrets give equal tags.
    Hmac,
}

#[derive(Debug, Clone)]
pub struct KeyPattern(pub Pattern);

impl<'de> Deserialize<'de> for KeyPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        key_pattern(&source).map_err(de::Error::custom)
    }
}

fn key_pattern(source: &str) -> Result<KeyPattern, String> {
    // Keys are compared lowercased, so globs are too.
    let source = match source.strip_prefix("re:") {
        Some(re) => format!("re:(?i:{re})"),
        None => source.to_ascii_lowercase(),
    };
    Pattern::new(&source).map(KeyPattern)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPathRule {
    /// Dotted keys from the object the rule applies to; `*` is any key or list index; a key
    /// with dots in it goes in brackets (`metadata.annotations[example.com/key]`).
    pub path: String,
    /// Only in objects whose `kind` is this (e.g. `Secret`); otherwise from the document root.
    #[serde(default)]
    pub kind: Option<String>,
}

impl JsonPathRule {
    pub fn segments(&self) -> Vec<&str> {
        let mut segments = Vec::new();
        let mut rest = self.path.as_str();
        while !rest.is_empty() {
            if let Some(bracketed) = rest.strip_prefix('[') {
                let end = bracketed.find(']').unwrap_or(bracketed.len());
                segments.push(&bracketed[..end]);
                rest = bracketed.get(end + 1..).unwrap_or("");
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                segments.push(&rest[..end]);
                rest = &rest[end..];
            }
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
        segments
    }
}

fn default_json_keys() -> Vec<KeyPattern> {
    // `progressToken` and `nextCursor` stay readable: MCP clients need them back unchanged.
    [r"re:(?:.*[_.-])?(?:password|passwd|pwd|secret|client_?secret|api_?key|private_?key|(?:access|refresh|id|session|auth|bearer|api)_?token|authorization|cookie|credentials?)"]
        .iter()
        .map(|p| key_pattern(p).expect("built-in key pattern compiles"))
        .collect()
}

fn default_json_paths() -> Vec<JsonPathRule> {
    // `kubectl apply` keeps the whole object it applied, values included, in this annotation.
    [
        "data",
        "stringData",
        "metadata.annotations[kubectl.kubernetes.io/last-applied-configuration]",
    ]
    .into_iter()
    .map(|path| JsonPathRule {
        path: path.to_string(),
        kind: Some("Secret".into()),
    })
    .collect()
}

fn default_max_buffer() -> u64 {
    1 << 20
}

fn default_holdback() -> u64 {
    8 << 10
}

/// Where masking applies for a target or a policy rule. Records are masked in every mode
/// unless `record_raw` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskApply {
    /// What the server sends back is masked before the client sees it.
    #[default]
    Responses,
    /// What the client sends is masked before the server sees it.
    Requests,
    Both,
    /// Both peers see clear text; only the records are masked.
    RecordOnly,
}

impl MaskApply {
    pub fn responses(self) -> bool {
        matches!(self, MaskApply::Responses | MaskApply::Both)
    }

    pub fn requests(self) -> bool {
        matches!(self, MaskApply::Requests | MaskApply::Both)
    }
}
