//! Patterns that configuration writes to match names and values: globs (`*`, `?`) unless
//! written `re:<regex>`; both match the whole value. Policy and masking both use them.
use std::fmt;

use regex_automata::meta::Regex;
use serde::{Deserialize, Deserializer, de};

/// A glob or `re:` regex, compiled once, matching whole values.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    /// The regex, before anchoring, so it can be embedded in a larger one.
    body: String,
    regex: Regex,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        let body = match source.strip_prefix("re:") {
            Some(re) => re.to_string(),
            None => glob_to_regex(source),
        };
        let regex = Regex::new(&format!("^(?:{body})$"))
            .map_err(|e| format!("`{source}` is not a valid pattern: {e}"))?;
        Ok(Pattern {
            source: source.to_string(),
            body,
            regex,
        })
    }

    pub fn regex_body(&self) -> &str {
        &self.body
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

fn glob_to_regex(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&regex_syntax::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(de::Error::custom)
    }
}
