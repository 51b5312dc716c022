//! Masking throughput per core: the one-pass multi-pattern engine against a naive loop that
//! runs each of the same patterns over the body with the `regex` crate, in one run; with the
//! core detectors alone, and with the vendor token formats added (the full set).
use std::time::{Duration, Instant};

use anyhow::Result;
use interlock::masking::{
    Masker, MaskingConfig,
    detectors::{self, BUILTIN, VENDOR_TOKENS},
};

const BODY_BYTES: usize = 1 << 20;

/// A JSON array of resource entries, like a large `resources/list` result.
fn clean_json(escaped_newlines: bool) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < BODY_BYTES {
        let description = if escaped_newlines {
            "Quarterly report for the platform team,\\nwith charts and notes"
        } else {
            "Quarterly report for the platform team, with charts and notes"
        };
        out.push_str(&format!(
            r#"{{"uri":"file:///srv/reports/{i}.md","name":"report-{i}","mimeType":"text/markdown","size":{},"description":"{description}"}},"#,
            i * 37 % 100_000
        ));
        i += 1;
    }
    out.pop();
    out.push(']');
    out.into_bytes()
}

/// The clean body with one secret in every KiB.
fn with_secrets() -> Vec<u8> {
    let secrets = [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "4111 1111 1111 1111",
        "alice@example.com",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    ];
    let clean = String::from_utf8(clean_json(false)).unwrap();
    let mut out = String::with_capacity(clean.len() + 64 * 1024);
    let mut next_secret_at = 1024;
    let mut n = 0;
    for entry in clean.split_inclusive("},") {
        out.push_str(entry);
        if out.len() >= next_secret_at {
            out.push_str(&format!(
                r#"{{"note":"key {}"}},"#,
                secrets[n % secrets.len()]
            ));
            n += 1;
            next_secret_at += 1024;
        }
    }
    out.into_bytes()
}

/// Bytes per second over repeated passes, at least `min` long in total.
fn throughput(bytes: usize, min: Duration, mut pass: impl FnMut()) -> f64 {
    pass(); // warm caches and the lazy DFA
    let start = Instant::now();
    let mut passes = 0;
    while start.elapsed() < min {
        pass();
        passes += 1;
    }
    (bytes * passes) as f64 / start.elapsed().as_secs_f64()
}

pub fn run() -> Result<()> {
    let core = MaskingConfig {
        disable: VENDOR_TOKENS.iter().map(|d| d.name.to_string()).collect(),
        ..MaskingConfig::default()
    };
    measure("core detectors", &core, BUILTIN.iter().collect())?;
    measure(
        "full set",
        &MaskingConfig::default(),
        detectors::all().collect(),
    )
}

fn measure(
    set: &str,
    config: &MaskingConfig,
    builtins: Vec<&detectors::BuiltinDetector>,
) -> Result<()> {
    let masker = Masker::new(config).map_err(anyhow::Error::msg)?;
    let naive: Vec<regex::bytes::Regex> = builtins
        .iter()
        .map(|d| {
            regex::bytes::RegexBuilder::new(d.pattern)
                .unicode(false)
                .build()
                .expect("built-in patterns compile")
        })
        .collect();
    println!(
        "masking, {set}: {} detectors ({} patterns), single thread",
        masker.detector_names().len(),
        builtins.len()
    );
    println!(
        "| body | Interlock (one pass) | naive loop (regex, per pattern) | Interlock / naive | masked |"
    );
    println!("|---|---|---|---|---|");
    let bodies = [
        ("(a) 1 MiB JSON, no secrets", clean_json(false)),
        ("(a') same, with escaped newlines", clean_json(true)),
        ("(b) 1 MiB JSON, one secret per KiB", with_secrets()),
    ];
    for (label, body) in bodies {
        let mut report = interlock::masking::MaskReport::default();
        let masked_len = masker
            .mask_body(&body, &mut report)
            .map_or(body.len(), |m| m.len());
        let ours = throughput(body.len(), Duration::from_secs(2), || {
            let mut report = interlock::masking::MaskReport::default();
            std::hint::black_box(masker.mask_body(&body, &mut report));
        });
        let theirs = throughput(body.len(), Duration::from_secs(2), || {
            let mut found = 0;
            for regex in &naive {
                found += regex.find_iter(&body).count();
            }
            std::hint::black_box(found);
        });
        let total: u64 = report.0.values().sum();
        println!(
            "| {label} | {:.0} MB/s | {:.0} MB/s | {:.1}× | {total} secrets, {} → {} bytes |",
            ours / 1e6,
            theirs / 1e6,
            ours / theirs,
            body.len(),
            masked_len
        );
    }
    Ok(())
}
