//! The built-in detectors: one regex each (all compiled into one multi-pattern automaton) and
//! an optional validator that cuts false positives. Patterns are byte-oriented and ASCII-only
//! so the lazy DFA never has to fall back to a slower engine.
use base64::Engine as _;

/// How a candidate match is confirmed. `None` means the regex alone decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Validator {
    None,
    /// Payment card: Luhn checksum and a known issuer prefix.
    Luhn,
    /// IBAN: ISO 13616 mod-97 checksum and the country's length.
    Iban,
    /// US SSN: no 000/666/9xx area, no 00 group, no 0000 serial.
    Ssn,
    /// JWT: the header decodes to a JSON object with `alg`.
    Jwt,
    /// HTTP Basic credentials: base64 of `user:password`.
    BasicAuth,
    /// A keyword-introduced value that looks like a secret: long enough and random enough.
    Entropy {
        min_len: usize,
        min_bits_per_char: f64,
    },
    /// A password value: anything except JSON literals and empties.
    NotLiteral,
    /// A formatted phone number with 8 to 15 digits (E.164).
    Phone,
}

/// Told apart from other JWTs by the JWT validator, so it has no pattern of its own.
pub const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes_service_account_token";

#[derive(Debug, Clone, Copy)]
pub struct BuiltinDetector {
    pub name: &'static str,
    /// When the pattern has a capture group, only group 1 is the secret (the rest is context).
    pub pattern: &'static str,
    pub validator: Validator,
}

pub const BUILTIN: &[BuiltinDetector] = &[
    BuiltinDetector {
        name: "pem_private_key",
        pattern: r"-----BEGIN [A-Z0-9 ]{0,20}PRIVATE KEY(?: BLOCK)?-----(?s:.)*?-----END [A-Z0-9 ]{0,20}PRIVATE KEY(?: BLOCK)?-----",
        validator: Validator::None,
    },
    BuiltinDetector {
        // A key whose end is not in view (cut off, or longer than the buffer): mask what is.
        name: "pem_private_key",
        pattern: r"-----BEGIN [A-Z0-9 ]{0,20}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s\\:,-]*",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "aws_access_key_id",
        pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|AGPA)[A-Z2-7]{16})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "aws_secret_access_key",
        pattern: r#"(?i:aws_?secret_?(?:access_?)?key)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9/+]{40})\b"#,
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "aws_session_token",
        pattern: r#"(?i:aws_?session_?token|aws_?security_?token)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9/+=]{100,})"#,
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "github_token",
        pattern: r"\b(gh[pousr]_[A-Za-z0-9]{36,})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "github_fine_grained_token",
        pattern: r"\b(github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "gitlab_token",
        pattern: r"\b(gl(?:pat|dt|rt|ptt|cbt|oas)-[A-Za-z0-9_-]{20,64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "slack_token",
        pattern: r"\b(xox[abposr]-(?:[0-9]+-)?[A-Za-z0-9-]{10,})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "slack_webhook_url",
        pattern: r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "stripe_key",
        pattern: r"\b((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "anthropic_api_key",
        pattern: r"\b(sk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_-]{80,})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "openai_api_key",
        pattern: r"\b(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "google_api_key",
        pattern: r"\b(AIza[0-9A-Za-z_-]{35})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "google_oauth_client_secret",
        pattern: r"\b(GOCSPX-[A-Za-z0-9_-]{28})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "npm_token",
        pattern: r"\b(npm_[A-Za-z0-9]{36})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "pypi_token",
        pattern: r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "sendgrid_api_key",
        pattern: r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "twilio_api_key",
        pattern: r"\b(SK[0-9a-f]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "huggingface_token",
        pattern: r"\b(hf_[A-Za-z]{34})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "digitalocean_token",
        pattern: r"\b(do[opr]_v1_[a-f0-9]{64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "shopify_token",
        pattern: r"\b(shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "azure_storage_key",
        pattern: r"(?i:AccountKey)=([A-Za-z0-9+/]{86}==)",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "age_secret_key",
        pattern: r"\b(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        // Kubernetes service-account tokens are JWTs too; the validator tells them apart.
        name: "jwt",
        pattern: r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
        validator: Validator::Jwt,
    },
    BuiltinDetector {
        name: "bearer_token",
        pattern: r"\b(?i:bearer)[ \t]+([A-Za-z0-9._~+/-]{16,}=*)",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "basic_auth",
        pattern: r"\b(?i:basic)[ \t]+([A-Za-z0-9+/]{8,}={0,2})",
        validator: Validator::BasicAuth,
    },
    BuiltinDetector {
        name: "url_password",
        pattern: r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s:/@\x22'\\]{1,128}:([^\s@/\x22'\\]{1,128})@",
        validator: Validator::NotLiteral,
    },
    BuiltinDetector {
        name: "connection_string_password",
        pattern: r"(?i:;[ \t]*(?:password|pwd)[ \t]*=)([^;\s\x22'\\]{1,256})",
        validator: Validator::NotLiteral,
    },
    BuiltinDetector {
        name: "password_assignment",
        pattern: r#"\b(?i:(?:[a-z0-9_.-]{0,40}[_.-])?(?:pass(?:word|wd|phrase)?|pwd))["']?[ \t]*[:=][ \t]*["']?([^\s\x22'\\,;&\[\]{}()<>]{3,})"#,
        validator: Validator::NotLiteral,
    },
    BuiltinDetector {
        name: "generic_secret",
        pattern: r#"\b(?i:(?:[a-z0-9_.-]{0,40}[_.-])?(?:secret(?:[_.-]?key)?|token|api[_.-]?key|apikey|access[_.-]?key|private[_.-]?key|auth[_.-]?key|credential)s?)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9+/=_.~-]{12,512})"#,
        validator: Validator::Entropy {
            min_len: 12,
            min_bits_per_char: 3.0,
        },
    },
    BuiltinDetector {
        name: "credit_card",
        pattern: r"\b([3-6][0-9]{3}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7})\b",
        validator: Validator::Luhn,
    },
    BuiltinDetector {
        name: "iban",
        pattern: r"\b([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b",
        validator: Validator::Iban,
    },
    BuiltinDetector {
        name: "us_ssn",
        pattern: r"\b([0-9]{3}-[0-9]{2}-[0-9]{4})\b",
        validator: Validator::Ssn,
    },
    BuiltinDetector {
        name: "email_address",
        pattern: r"\b([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        // Only formatted numbers: bare digit runs are ids and timestamps far more often.
        name: "phone_number",
        pattern: r"(?:\+[1-9][0-9]{0,2}[ .-]?(?:\(?[0-9]{1,4}\)?[ .-]?){1,4}[0-9]{2,4}\b|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}\b|\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}\b)",
        validator: Validator::Phone,
    },
];

impl Validator {
    /// Whether `secret` really is one; for JWTs, also which kind.
    pub fn check(self, secret: &[u8]) -> Option<Option<&'static str>> {
        let ok = match self {
            Validator::None => true,
            Validator::Luhn => luhn_card(secret),
            Validator::Iban => iban(secret),
            Validator::Ssn => ssn(secret),
            Validator::Jwt => return jwt_kind(secret).map(Some),
            Validator::BasicAuth => basic_auth(secret),
            Validator::Entropy {
                min_len,
                min_bits_per_char,
            } => secret.len() >= min_len && shannon_bits_per_char(secret) >= min_bits_per_char,
            Validator::NotLiteral => !matches!(
                secret.to_ascii_lowercase().as_slice(),
                b"true" | b"false" | b"null" | b"none" | b"undefined"
            ),
            Validator::Phone => (8..=15).contains(&digits(secret).count()),
        };
        ok.then_some(None)
    }
}

fn digits(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
}

fn luhn_card(secret: &[u8]) -> bool {
    let digits: Vec<u8> = digits(secret).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    // Issuer prefixes: Visa, Mastercard (51-55, 2221-2720), Amex, Discover, JCB, Diners.
    let prefix = |n: usize| digits[..n].iter().fold(0u32, |acc, &d| acc * 10 + d as u32);
    let issuer = digits[0] == 4
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 36 | 38 | 65)
        || prefix(4) == 6011
        || (3528..=3589).contains(&prefix(4))
        || (300..=305).contains(&prefix(3));
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = d as u32;
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    issuer && sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry, the common ones).
fn iban_length(country: &[u8]) -> Option<usize> {
    Some(match country {
        b"AD" => 24,
        b"AT" => 20,
        b"BE" => 16,
        b"CH" => 21,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"ES" => 24,
        b"FI" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GR" => 27,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IT" => 27,
        b"LU" => 20,
        b"NL" => 18,
        b"NO" => 15,
        b"PL" => 28,
        b"PT" => 25,
        b"RO" => 24,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        _ => return None,
    })
}

fn iban(secret: &[u8]) -> bool {
    let compact: Vec<u8> = secret.iter().copied().filter(|b| *b != b' ').collect();
    if iban_length(&compact[..2]) != Some(compact.len()) {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for &b in rotated {
        let value = match b {
            b'0'..=b'9' => (b - b'0') as u32,
            b'A'..=b'Z' => (b - b'A') as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn ssn(secret: &[u8]) -> bool {
    let text = std::str::from_utf8(secret).unwrap_or("");
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn base64url_json(segment: &[u8]) -> Option<serde_json::Value> {
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.strip_suffix(b"=").unwrap_or(segment))
        .ok()?;
    serde_json::from_slice(&decoded).ok()
}

fn jwt_kind(secret: &[u8]) -> Option<&'static str> {
    let mut parts = secret.split(|b| *b == b'.');
    let header = base64url_json(parts.next()?)?;
    header.get("alg")?;
    let claims = base64url_json(parts.next()?);
    let is_service_account = claims.as_ref().is_some_and(|c| {
        c.get("kubernetes.io").is_some()
            || c.get("iss")
                .and_then(|i| i.as_str())
                .is_some_and(|i| i.contains("kubernetes/serviceaccount"))
    });
    Some(if is_service_account {
        SERVICE_ACCOUNT_TOKEN
    } else {
        "jwt"
    })
}

fn basic_auth(secret: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(secret)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .is_some_and(|text| {
            text.split_once(':')
                .is_some_and(|(user, password)| !user.is_empty() && !password.is_empty())
        })
}

fn shannon_bits_per_char(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / len;
            -p * p.log2()
        })
        .sum()
}

/// Vendor tokens with a fixed prefix or shape, after the rules of gitleaks and Nosey Parker.
/// Kept apart so that the benchmark can compare the engine with and without them.
pub const VENDOR_TOKENS: &[BuiltinDetector] = &[
    BuiltinDetector {
        name: "slack_app_token",
        pattern: r"\b(xapp-[0-9]-[A-Z0-9]{9,12}-[0-9]{10,14}-[a-f0-9]{64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "mailgun_api_key",
        pattern: r"\b(key-[0-9a-f]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "mailchimp_api_key",
        pattern: r"\b([0-9a-f]{32}-us[0-9]{1,2})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "postman_api_key",
        pattern: r"\b(PMAK-[a-f0-9]{24}-[a-f0-9]{34})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "databricks_token",
        pattern: r"\b(dapi[a-f0-9]{32}(?:-[0-9]+)?)\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "doppler_token",
        pattern: r"\b(dp\.(?:pt|st|sa|scim|audit|ct)\.[A-Za-z0-9]{40,44})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "linear_api_key",
        pattern: r"\b(lin_api_[A-Za-z0-9]{40})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "hashicorp_vault_token",
        pattern: r"\b(hv[sb]\.[A-Za-z0-9_-]{90,120})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "terraform_cloud_token",
        pattern: r"\b([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "pulumi_access_token",
        pattern: r"\b(pul-[a-f0-9]{40})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "grafana_service_account_token",
        pattern: r"\b(glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "grafana_cloud_token",
        pattern: r"\b(glc_[A-Za-z0-9+/]{32,400}={0,2})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "new_relic_key",
        pattern: r"\b(NRAK-[A-Z0-9]{27}|NRI[IQ]-[A-Za-z0-9_-]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "dynatrace_token",
        pattern: r"\b(dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "sentry_user_token",
        pattern: r"\b(sntryu_[a-f0-9]{64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "sentry_org_token",
        pattern: r"\b(sntrys_eyJ[A-Za-z0-9+/=_-]{40,})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "atlassian_api_token",
        pattern: r"\b(ATATT3[A-Za-z0-9_=-]{186})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "square_token",
        pattern: r"\b(sq0(?:atp|csp)-[0-9A-Za-z_-]{22,43})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "discord_webhook_url",
        pattern: r"(https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,68})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "telegram_bot_token",
        pattern: r"\b([0-9]{8,10}:AA[0-9A-Za-z_-]{33})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "alibaba_access_key_id",
        pattern: r"\b(LTAI[A-Za-z0-9]{20})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "flyio_token",
        pattern: r"\b(fo1_[A-Za-z0-9_-]{43})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "planetscale_token",
        pattern: r"\b(pscale_(?:tkn|pw|oauth)_[A-Za-z0-9=._-]{32,64})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "rubygems_api_key",
        pattern: r"\b(rubygems_[a-f0-9]{48})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "nuget_api_key",
        pattern: r"\b(oy2[a-z0-9]{43})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "dockerhub_pat",
        pattern: r"\b(dckr_pat_[A-Za-z0-9_-]{27})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "groq_api_key",
        pattern: r"\b(gsk_[A-Za-z0-9]{52})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "replicate_api_token",
        pattern: r"\b(r8_[A-Za-z0-9]{37})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "perplexity_api_key",
        pattern: r"\b(pplx-[A-Za-z0-9]{48})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "easypost_api_key",
        pattern: r"\b(EZ[AT]K[A-Za-z0-9]{54})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "azure_ad_client_secret",
        pattern: r"\b([A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "clickup_api_key",
        pattern: r"\b(pk_[0-9]{6,8}_[0-9A-Z]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "notion_token",
        pattern: r"\b(ntn_[0-9]{11}[A-Za-z0-9]{35})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "airtable_pat",
        pattern: r"\b(pat[A-Za-z0-9]{14}\.[a-f0-9]{64})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "contentful_token",
        pattern: r"\b(CFPAT-[A-Za-z0-9_-]{43})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "shippo_api_token",
        pattern: r"\b(shippo_(?:live|test)_[a-f0-9]{40})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "prefect_api_key",
        pattern: r"\b(pnu_[A-Za-z0-9]{36})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "readme_api_key",
        pattern: r"\b(rdme_[a-z0-9]{70})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "brevo_api_key",
        pattern: r"\b(xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "typeform_token",
        pattern: r"\b(tfp_[A-Za-z0-9_.=-]{59})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "duffel_api_token",
        pattern: r"\b(duffel_(?:test|live)_[A-Za-z0-9_=-]{43})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "flutterwave_secret_key",
        pattern: r"\b(FLWSECK(?:_TEST)?-[a-h0-9]{32}-X)",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "infracost_api_token",
        pattern: r"\b(ico-[A-Za-z0-9]{32})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "octopus_deploy_api_key",
        pattern: r"\b(API-[A-Z0-9]{26})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "openshift_user_token",
        pattern: r"\b(sha256~[A-Za-z0-9_-]{43})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "harness_token",
        pattern: r"\b((?:pat|sat)\.[A-Za-z0-9_-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20})\b",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "onepassword_service_account_token",
        pattern: r"\b(ops_eyJ[A-Za-z0-9+/]{250,}={0,3})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "frameio_api_token",
        pattern: r"\b(fio-u-[A-Za-z0-9_=-]{64})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "scalingo_api_token",
        pattern: r"\b(tk-us-[A-Za-z0-9_-]{48})",
        validator: Validator::None,
    },
    BuiltinDetector {
        name: "mapbox_secret_token",
        pattern: r"\b(sk\.eyJ[A-Za-z0-9_-]{50,}\.[A-Za-z0-9_-]{20,})",
        validator: Validator::None,
    },
];

/// Every built-in detector, in the order the automaton prefers them when two match at the same
/// place: vendor formats first, being the most specific (a Telegram bot token starts with
/// digits a phone number would take).
pub fn all() -> impl Iterator<Item = &'static BuiltinDetector> {
    VENDOR_TOKENS.iter().chain(BUILTIN)
}
