//! The detector corpus (positives and near-misses), JSON and SSE behaviour, and properties.
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::json;

use super::{
    MaskReport, Masker, MaskingConfig, ReplacementStyle,
    stream::{BodyKind, BodyMasker},
};

/// Built once: compiling the automaton dominates a debug-build test otherwise.
fn masker() -> &'static Masker {
    static MASKER: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    MASKER.get_or_init(|| Masker::new(&MaskingConfig::default()).unwrap())
}

fn b64url(value: serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn jwt(claims: serde_json::Value) -> String {
    format!(
        "{}.{}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        b64url(json!({"alg": "RS256", "typ": "JWT"})),
        b64url(claims)
    )
}

/// (detector, text with a secret, the secret itself).
fn positives() -> Vec<(&'static str, String, String)> {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq9yZx2\nQ0Jf8mT1Vb4=\n-----END RSA PRIVATE KEY-----";
    let session = format!("FwoGZXIvYXdzE{}", "Ab3dEf6hIj9kLm".repeat(8));
    let k8s =
        jwt(json!({"iss": "kubernetes/serviceaccount", "kubernetes.io": {"namespace": "default"}}));
    let plain_jwt = jwt(json!({"sub": "1234567890", "name": "Alice"}));
    let cases: Vec<(&str, String, String)> = vec![
        ("pem_private_key", format!("key:\n{pem}\nend"), pem.into()),
        (
            "aws_access_key_id",
            "id AKIAIOSFODNN7EXAMPLE here".into(),
            "AKIAIOSFODNN7EXAMPLE".into(),
        ),
        (
            "aws_secret_access_key",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        ),
        (
            "aws_session_token",
            format!("AWS_SESSION_TOKEN={session}"),
            session.clone(),
        ),
        (
            "github_token",
            "token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".into(),
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".into(),
        ),
        (
            "github_fine_grained_token",
            format!("github_pat_{}_{}", "A1b2C3d4E5f6G7h8I9j0K1", "x".repeat(59)),
            format!("github_pat_{}_{}", "A1b2C3d4E5f6G7h8I9j0K1", "x".repeat(59)),
        ),
        (
            "gitlab_token",
            "glpat-xYz123AbC456dEf789gH".into(),
            "glpat-xYz123AbC456dEf789gH".into(),
        ),
        (
            "slack_token",
            "xoxb-1234567890-abcdefghijklmnop".into(),
            "xoxb-1234567890-abcdefghijklmnop".into(),
        ),
        (
            "slack_webhook_url",
            "post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXX".into(),
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXX".into(),
        ),
        (
            "stripe_key",
            "use sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
        ),
        (
            "anthropic_api_key",
            format!("sk-ant-api03-{}", "Ab9_".repeat(24)),
            format!("sk-ant-api03-{}", "Ab9_".repeat(24)),
        ),
        (
            "openai_api_key",
            format!("sk-proj-{}", "Zq8-Lm3x".repeat(6)),
            format!("sk-proj-{}", "Zq8-Lm3x".repeat(6)),
        ),
        (
            "google_api_key",
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe".into(),
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe".into(),
        ),
        (
            "google_oauth_client_secret",
            "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".into(),
            "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".into(),
        ),
        (
            "npm_token",
            "npm_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".into(),
            "npm_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".into(),
        ),
        (
            "pypi_token",
            format!("pypi-AgEIcHlwaS5vcmc{}", "Qx7_".repeat(15)),
            format!("pypi-AgEIcHlwaS5vcmc{}", "Qx7_".repeat(15)),
        ),
        (
            "sendgrid_api_key",
            format!("SG.{}.{}", "a".repeat(22), "B".repeat(43)),
            format!("SG.{}.{}", "a".repeat(22), "B".repeat(43)),
        ),
        (
            "twilio_api_key",
            "SK0123456789abcdef0123456789abcdef".into(),
            "SK0123456789abcdef0123456789abcdef".into(),
        ),
        (
            "huggingface_token",
            "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH".into(),
            "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH".into(),
        ),
        (
            "digitalocean_token",
            format!("dop_v1_{}", "0a1b2c3d".repeat(8)),
            format!("dop_v1_{}", "0a1b2c3d".repeat(8)),
        ),
        (
            "shopify_token",
            "shpat_0123456789abcdef0123456789abcdef".into(),
            "shpat_0123456789abcdef0123456789abcdef".into(),
        ),
        (
            "azure_storage_key",
            format!(
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey={}==",
                "Ab1+".repeat(21) + "Zq"
            ),
            "Ab1+".repeat(21) + "Zq==",
        ),
        (
            "age_secret_key",
            format!("AGE-SECRET-KEY-1{}", "QPZRY9X8GF".repeat(5) + "2TVDW0S3"),
            format!("AGE-SECRET-KEY-1{}", "QPZRY9X8GF".repeat(5) + "2TVDW0S3"),
        ),
        ("slack_app_token", "xapp-1-A0123456789-1234567890123-0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into(), "xapp-1-A0123456789-1234567890123-0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into()),
        ("mailgun_api_key", "key-0a1b2c3d4e5f67890a1b2c3d4e5f6789".into(), "key-0a1b2c3d4e5f67890a1b2c3d4e5f6789".into()),
        ("mailchimp_api_key", "0a1b2c3d4e5f67890a1b2c3d4e5f6789-us21".into(), "0a1b2c3d4e5f67890a1b2c3d4e5f6789-us21".into()),
        ("postman_api_key", "PMAK-0a1b2c3d4e5f67890a1b2c3d-0a1b2c3d4e5f67890a1b2c3d4e5f67890a".into(), "PMAK-0a1b2c3d4e5f67890a1b2c3d-0a1b2c3d4e5f67890a1b2c3d4e5f67890a".into()),
        ("databricks_token", "dapi0a1b2c3d4e5f67890a1b2c3d4e5f6789".into(), "dapi0a1b2c3d4e5f67890a1b2c3d4e5f6789".into()),
        ("doppler_token", "dp.pt.aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into(), "dp.pt.aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into()),
        ("linear_api_key", "lin_api_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7a".into(), "lin_api_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7a".into()),
        ("hashicorp_vault_token", "hvs.CAESIaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9m".into(), "hvs.CAESIaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9m".into()),
        ("terraform_cloud_token", "aB3dE5gH7jK9mN.atlasv1.aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7y".into(), "aB3dE5gH7jK9mN.atlasv1.aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7y".into()),
        ("pulumi_access_token", "pul-0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d".into(), "pul-0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d".into()),
        ("grafana_service_account_token", "glsa_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF_0a1b2c3d".into(), "glsa_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF_0a1b2c3d".into()),
        ("grafana_cloud_token", "glc_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5".into(), "glc_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5".into()),
        ("new_relic_key", "NRAK-ABCD1234EFGH5678IJKL9012MNO".into(), "NRAK-ABCD1234EFGH5678IJKL9012MNO".into()),
        ("dynatrace_token", "dt0c01.ABCD1234EFGH5678IJKL9012.ABCD1234EFGH5678IJKL9012MNOPABCD1234EFGH5678IJKL9012MNOPABCD1234".into(), "dt0c01.ABCD1234EFGH5678IJKL9012.ABCD1234EFGH5678IJKL9012MNOPABCD1234EFGH5678IJKL9012MNOPABCD1234".into()),
        ("sentry_user_token", "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".into(), "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".into()),
        ("sentry_org_token", "sntrys_eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5".into(), "sntrys_eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5".into()),
        ("atlassian_api_token", "ATATT3aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1".into(), "ATATT3aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1".into()),
        ("square_token", "sq0atp-aB3dE5gH7jK9mN1pQ3sT5v".into(), "sq0atp-aB3dE5gH7jK9mN1pQ3sT5v".into()),
        ("discord_webhook_url", "https://discord.com/api/webhooks/123456789012345678/aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9".into(), "https://discord.com/api/webhooks/123456789012345678/aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9".into()),
        ("telegram_bot_token", "123456789:AAaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3".into(), "123456789:AAaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3".into()),
        ("alibaba_access_key_id", "LTAIaB3dE5gH7jK9mN1pQ3sT".into(), "LTAIaB3dE5gH7jK9mN1pQ3sT".into()),
        ("flyio_token", "fo1_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into(), "fo1_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into()),
        ("planetscale_token", "pscale_tkn_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7a".into(), "pscale_tkn_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7a".into()),
        ("rubygems_api_key", "rubygems_0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into(), "rubygems_0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into()),
        ("nuget_api_key", "oy2abc123defgabc123defgabc123defgabc123defgabc".into(), "oy2abc123defgabc123defgabc123defgabc123defgabc".into()),
        ("dockerhub_pat", "dckr_pat_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9".into(), "dckr_pat_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9".into()),
        ("groq_api_key", "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".into(), "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".into()),
        ("replicate_api_token", "r8_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5k".into(), "r8_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5k".into()),
        ("perplexity_api_key", "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".into(), "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".into()),
        ("easypost_api_key", "EZAKaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1".into(), "EZAKaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1".into()),
        ("azure_ad_client_secret", "abc8Q~aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF".into(), "abc8Q~aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF".into()),
        ("clickup_api_key", "pk_1234567_ABCD1234EFGH5678IJKL9012MNOPABCD".into(), "pk_1234567_ABCD1234EFGH5678IJKL9012MNOPABCD".into()),
        ("notion_token", "ntn_12345678901aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ".into(), "ntn_12345678901aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ".into()),
        ("airtable_pat", "pataB3dE5gH7jK9mN.0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into(), "pataB3dE5gH7jK9mN.0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d4e5f6789".into()),
        ("contentful_token", "CFPAT-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into(), "CFPAT-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into()),
        ("shippo_api_token", "shippo_live_0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d".into(), "shippo_live_0a1b2c3d4e5f67890a1b2c3d4e5f67890a1b2c3d".into()),
        ("prefect_api_key", "pnu_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5".into(), "pnu_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5".into()),
        ("readme_api_key", "rdme_abc123defgabc123defgabc123defgabc123defgabc123defgabc123defgabc123defg".into(), "rdme_abc123defgabc123defgabc123defgabc123defgabc123defgabc123defgabc123defg".into()),
        ("brevo_api_key", "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".into(), "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".into()),
        ("typeform_token", "tfp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT".into(), "tfp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT".into()),
        ("duffel_api_token", "duffel_live_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into(), "duffel_live_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into()),
        ("flutterwave_secret_key", "FLWSECK_TEST-a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4-X".into(), "FLWSECK_TEST-a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4-X".into()),
        ("infracost_api_token", "ico-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF".into(), "ico-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF".into()),
        ("octopus_deploy_api_key", "API-ABCD1234EFGH5678IJKL9012MN".into(), "API-ABCD1234EFGH5678IJKL9012MN".into()),
        ("openshift_user_token", "sha256~aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into(), "sha256~aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3d".into()),
        ("harness_token", "pat.aB3dE5gH7jK9mN1pQ3sT5v.0a1b2c3d4e5f67890a1b2c3d.aB3dE5gH7jK9mN1pQ3sT".into(), "pat.aB3dE5gH7jK9mN1pQ3sT5v.0a1b2c3d4e5f67890a1b2c3d.aB3dE5gH7jK9mN1pQ3sT".into()),
        ("onepassword_service_account_token", "ops_eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3".into(), "ops_eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3".into()),
        ("frameio_api_token", "fio-u-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7y".into(), "fio-u-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5vW7y".into()),
        ("scalingo_api_token", "tk-us-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7".into(), "tk-us-aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7".into()),
        ("mapbox_secret_token", "sk.eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5.aB3dE5gH7jK9mN1pQ3sT5v".into(), "sk.eyJaB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7aB3dE5gH7jK9mN1pQ3sT5.aB3dE5gH7jK9mN1pQ3sT5v".into()),
        ("jwt", format!("id_token {plain_jwt}"), plain_jwt),
        (
            "kubernetes_service_account_token",
            format!("sa: {k8s}"),
            k8s,
        ),
        (
            "bearer_token",
            "Authorization: Bearer abcdef0123456789ABCDEF".into(),
            "abcdef0123456789ABCDEF".into(),
        ),
        (
            "basic_auth",
            "Authorization: Basic dXNlcjpwYXNzd29yZA==".into(),
            "dXNlcjpwYXNzd29yZA==".into(),
        ),
        (
            "url_password",
            "postgres://admin:s3cr3tpass@db.example.com:5432/app".into(),
            "s3cr3tpass".into(),
        ),
        (
            "connection_string_password",
            "Server=db;Database=app;Password=Sup3rS3cret!;".into(),
            "Sup3rS3cret!".into(),
        ),
        (
            "password_assignment",
            "DB_PASSWORD=hunter2".into(),
            "hunter2".into(),
        ),
        (
            "generic_secret",
            "api_key=Zx9Qm2Lr8Tv4Wn6Yp3Ks".into(),
            "Zx9Qm2Lr8Tv4Wn6Yp3Ks".into(),
        ),
        (
            "credit_card",
            "card 4111 1111 1111 1111 ok".into(),
            "4111 1111 1111 1111".into(),
        ),
        (
            "credit_card",
            "amex 378282246310005".into(),
            "378282246310005".into(),
        ),
        (
            "iban",
            "IBAN DE89 3704 0044 0532 0130 00".into(),
            "DE89 3704 0044 0532 0130 00".into(),
        ),
        (
            "iban",
            "GB82WEST12345698765432".into(),
            "GB82WEST12345698765432".into(),
        ),
        ("us_ssn", "ssn 123-45-6789".into(), "123-45-6789".into()),
        (
            "email_address",
            "mail alice.smith+x@example.co.uk now".into(),
            "alice.smith+x@example.co.uk".into(),
        ),
        (
            "phone_number",
            "call +1 415 555 2671".into(),
            "+1 415 555 2671".into(),
        ),
        (
            "phone_number",
            "call (415) 555-2671".into(),
            "(415) 555-2671".into(),
        ),
    ];
    cases
}

#[test]
fn every_builtin_detector_has_a_positive_case() {
    let names: std::collections::BTreeSet<&str> = positives().iter().map(|c| c.0).collect();
    for name in masker().detector_names() {
        assert!(names.contains(name), "no corpus case for {name}");
    }
    assert!(names.len() >= 80, "{} detectors", names.len());
}

#[test]
fn positives_are_masked_by_their_detector() {
    let m = masker();
    for (detector, text, secret) in positives() {
        let mut report = MaskReport::default();
        let masked = m
            .mask_text(text.as_bytes(), &mut report)
            .unwrap_or_else(|| panic!("{detector}: nothing masked in {text:?}"));
        let masked = String::from_utf8(masked).unwrap();
        assert!(
            !masked.contains(&secret),
            "{detector}: {secret:?} survived in {masked:?}"
        );
        assert!(
            masked.contains(&format!("[MASKED:{detector}]")),
            "{detector}: {masked:?}"
        );
        assert_eq!(report.0.get(detector), Some(&1), "{detector}: {report:?}");
    }
}

#[test]
fn near_misses_are_left_alone() {
    let m = masker();
    let near_misses = [
        "AKIAIOSFODNN7EXAMPL",                   // one character short
        "AKIAIOSFODNN7EXAMPLEX",                 // one too many
        "akiaiosfodnn7example",                  // lower case
        "ghp_short123",                          // too short for a GitHub token
        "sk_live_short",                         // too short for Stripe
        "4111 1111 1111 1112",                   // Luhn fails
        "1234567812345678",                      // no issuer
        "order 1732156800 at 2026-11-21",        // a timestamp and a date
        "DE89 3704 0044 0532 0130 01",           // IBAN checksum fails
        "000-12-3456 666-12-3456 923-45-6789",   // impossible SSNs
        "alice@localhost",                       // no domain
        "password: true",                        // a literal, not a password
        "password_required: false",              // a flag about passwords
        "passwords must be long",                // prose
        "api_key=aaaaaaaaaaaaaaaa",              // no entropy
        "token: 12",                             // too short
        "basic information about tokens",        // words
        "eyJnotreally.eyJxxxxxxxxxx.yyyyyyyyyy", // not a JWT header
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----",
        "https://example.com:8443/path", // a port, not a password
        "version 1.2.3 build 42",
        "call +1",
        "\"progressToken\": \"abc-123-def-456-ghi\"",
        "xapp-1-A012-1-abc",
        "key-0123456789abcdef",
        "0123456789abcdef-us21",
        "PMAK-abc-def",
        "dapi0123456789abcdef",
        "dp.pt.short",
        "lin_api_short",
        "hvs.short123",
        "abc.atlasv1.short",
        "pul-0a1b2c",
        "glsa_short_0a1b2c3d",
        "glc_short",
        "NRAK-ABC123",
        "dt0c01.SHORT.SHORT",
        "sntryu_0a1b",
        "sntrys_short",
        "ATATT3xFfGF0short",
        "sq0atp-short",
        "https://discord.com/api/webhooks/123/abc",
        "123456789:AAshort",
        "LTAIshort",
        "fo1_short",
        "pscale_tkn_short",
        "rubygems_0a1b",
        "oy2abc",
        "dckr_pat_short",
        "gsk_short",
        "r8_short",
        "pplx-short",
        "EZAKshort",
        "abc8Q~short",
        "pk_123_ABC",
        "ntn_123short",
        "patAbc.0a1b",
        "CFPAT-short",
        "shippo_live_0a1b",
        "pnu_short",
        "rdme_short",
        "xkeysib-0a1b-short",
        "tfp_short",
        "duffel_live_short",
        "FLWSECK_TEST-abc-X",
        "ico-short",
        "API-KEY",
        "sha256~short",
        "pat.short.abc.def",
        "ops_eyJshort",
        "fio-u-short",
        "tk-us-short",
        "sk.eyJshort.abc",
    ];
    for text in near_misses {
        let mut report = MaskReport::default();
        assert_eq!(
            m.mask_text(text.as_bytes(), &mut report),
            None,
            "{text:?} was masked: {report:?}"
        );
    }
}

#[test]
fn detectors_can_be_turned_off_and_custom_ones_added() {
    let m = Masker::new(&MaskingConfig {
        disable: vec!["email_address".into()],
        custom: vec![super::config::CustomDetector {
            name: "employee_id".into(),
            regex: r"\bEMP-[0-9]{6}\b".into(),
        }],
        ..MaskingConfig::default()
    })
    .unwrap();
    let mut report = MaskReport::default();
    let out = m
        .mask_text(b"alice@example.com is EMP-123456", &mut report)
        .unwrap();
    assert_eq!(out, b"alice@example.com is [MASKED:employee_id]");
    let bad = Masker::new(&MaskingConfig {
        disable: vec!["emails".into()],
        ..MaskingConfig::default()
    });
    assert!(bad.err().unwrap().contains("interlock detectors"));
}

#[test]
fn replacement_styles() {
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), b"0123456789abcdef0123456789abcdef").unwrap();
    let style = |replacement| {
        Masker::new(&MaskingConfig {
            replacement,
            hmac_key_file: Some(key_file.path().into()),
            ..MaskingConfig::default()
        })
        .unwrap()
    };
    let text = b"a AKIAIOSFODNN7EXAMPLE b AKIAIOSFODNN7EXAMPLE c AKIAI44QH7DHBEXAMPLE";
    let mut r = MaskReport::default();
    let last4 = String::from_utf8(
        style(ReplacementStyle::Last4)
            .mask_text(text, &mut r)
            .unwrap(),
    )
    .unwrap();
    assert!(
        last4.starts_with("a [MASKED:aws_access_key_id:****MPLE] b"),
        "{last4}"
    );
    let hmac = String::from_utf8(
        style(ReplacementStyle::Hmac)
            .mask_text(text, &mut r)
            .unwrap(),
    )
    .unwrap();
    let tags: Vec<&str> = hmac
        .split(' ')
        .filter(|w| w.starts_with("[MASKED"))
        .collect();
    assert_eq!(tags.len(), 3);
    assert_eq!(tags[0], tags[1], "equal secrets give equal tags");
    assert_ne!(tags[0], tags[2]);
    assert!(tags[0].contains(":hmac="));
    assert!(
        Masker::new(&MaskingConfig {
            replacement: ReplacementStyle::Hmac,
            ..MaskingConfig::default()
        })
        .err()
        .unwrap()
        .contains("hmac_key_file")
    );
}

#[test]
fn json_values_are_decoded_masked_and_reencoded() {
    let m = masker();
    // The secret hides behind escapes; the rest of the document keeps its bytes.
    let body = br#"{"a": 1,  "text": "key \u0041KIAIOSFODNN7EXAMPLE\nnext", "n": [1.50, true]}"#;
    let mut report = MaskReport::default();
    let out = m.mask_json(body, &mut report).unwrap().unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        r#"{"a": 1,  "text": "key [MASKED:aws_access_key_id]\nnext", "n": [1.50, true]}"#
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
}

#[test]
fn json_key_and_kind_rules() {
    let m = masker();
    let secret = json!({
        "apiVersion": "v1",
        "data": {"username": "YWRtaW4=", "password": "c2VjcmV0"},
        "kind": "Secret",
        "metadata": {"name": "db", "annotations": {"client_secret": "plain words here"}},
    });
    let config_map = json!({"kind": "ConfigMap", "data": {"mode": "fast"}});
    let mut report = MaskReport::default();
    let out: serde_json::Value = serde_json::from_slice(
        &m.mask_json(secret.to_string().as_bytes(), &mut report)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["data"]["username"], "[MASKED:json_path]");
    assert!(
        out["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("[MASKED:json_")
    );
    assert_eq!(
        out["metadata"]["annotations"]["client_secret"],
        "[MASKED:json_key]"
    );
    assert_eq!(out["metadata"]["name"], "db");
    assert!(report.0.contains_key("json_path"));
    assert_eq!(
        m.mask_json(config_map.to_string().as_bytes(), &mut report),
        Ok(None)
    );
    let list = json!({"kind": "SecretList", "items": [secret]});
    let out = m
        .mask_json(list.to_string().as_bytes(), &mut report)
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("c2VjcmV0"));
}

#[test]
fn the_applied_copy_of_a_secret_is_masked_too() {
    const APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let applied = json!({"kind": "Secret", "stringData": {"token": "plain-value-1"}}).to_string();
    let annotations = json!({APPLIED: applied, "kubernetes.io/service-account.name": "agent"});
    let secret = json!({"kind": "Secret", "metadata": {"name": "s", "annotations": annotations}});
    let mut report = MaskReport::default();
    let out = masker()
        .mask_json(secret.to_string().as_bytes(), &mut report)
        .unwrap()
        .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let kept = &out["metadata"]["annotations"];
    // Still JSON, so the next `kubectl apply` can read it, with the values masked inside.
    let copy: serde_json::Value = serde_json::from_str(kept[APPLIED].as_str().unwrap()).unwrap();
    assert_eq!(copy["stringData"]["token"], "[MASKED:json_path]");
    assert_eq!(copy["kind"], "Secret");
    assert_eq!(kept["kubernetes.io/service-account.name"], "agent");
    // Another kind's applied copy holds no Secret's values, and stays readable.
    let config_map = json!({"kind": "ConfigMap", "metadata": {"annotations": {APPLIED: "{}"}}});
    assert_eq!(
        masker().mask_json(config_map.to_string().as_bytes(), &mut report),
        Ok(None)
    );
}

#[test]
fn a_patch_of_a_secret_is_masked_as_a_secret() {
    // A merge patch names no kind; the request's resource says it is a Secret's.
    let patch = json!({"data": {"pin": "MTIzNA=="}, "metadata": {"labels": {"tier": "db"}}});
    let mut report = MaskReport::default();
    let body = patch.to_string();
    assert_eq!(masker().mask_json(body.as_bytes(), &mut report), Ok(None));
    let out = masker()
        .mask_json_as(body.as_bytes(), Some("Secret"), &mut report)
        .unwrap()
        .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["data"]["pin"], "[MASKED:json_path]");
    assert_eq!(out["metadata"]["labels"]["tier"], "db");
}

#[test]
fn a_json_patch_of_a_secret_masks_each_value_where_it_lands() {
    // kubectl patch --type=json: operations, each with a pointer and a value.
    let patch = json!([
        {"op": "replace", "path": "/data/pin", "value": "MTIzNA=="},
        {"op": "add", "path": "/stringData", "value": {"token": "open-sesame"}},
        {"op": "add", "path": "/metadata/labels/tier", "value": "db"},
        {"op": "remove", "path": "/data/old"},
    ]);
    let mut report = MaskReport::default();
    let out = masker()
        .mask_json_as(patch.to_string().as_bytes(), Some("Secret"), &mut report)
        .unwrap()
        .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out[0]["value"], "[MASKED:json_path]");
    assert_eq!(out[0]["path"], "/data/pin");
    assert_eq!(out[1]["value"]["token"], "[MASKED:json_path]");
    assert_eq!(out[2]["value"], "db");
    assert_eq!(out[3], json!({"op": "remove", "path": "/data/old"}));
    // Nothing of a Secret's in it: left as sent.
    let labels = json!([{"op": "add", "path": "/metadata/labels/tier", "value": "db"}]);
    assert_eq!(
        masker().mask_json_as(labels.to_string().as_bytes(), Some("Secret"), &mut report),
        Ok(None)
    );
}

#[test]
fn json_path_keys_with_dots_go_in_brackets() {
    let rule = crate::masking::config::JsonPathRule {
        path: "metadata.annotations[example.com/key].deeper".into(),
        kind: None,
    };
    assert_eq!(
        rule.segments(),
        ["metadata", "annotations", "example.com/key", "deeper"]
    );
    let plain = crate::masking::config::JsonPathRule {
        path: "data".into(),
        kind: None,
    };
    assert_eq!(plain.segments(), ["data"]);
}

#[test]
fn not_json_is_masked_as_text() {
    let m = masker();
    let mut report = MaskReport::default();
    assert_eq!(
        m.mask_json(b"{\"a\": AKIAIOSFODNN7EXAMPLE", &mut report),
        Err(super::NotJson)
    );
    assert_eq!(
        m.mask_body(b"{\"a\": AKIAIOSFODNN7EXAMPLE", &mut report)
            .unwrap(),
        b"{\"a\": [MASKED:aws_access_key_id]"
    );
}

fn stream_through(kind: BodyKind, chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let m = masker();
    let mut body = BodyMasker::new(m, kind);
    let (mut raw, mut masked) = (Vec::new(), Vec::new());
    let mut pieces = Vec::new();
    for chunk in chunks {
        pieces.extend(body.feed(chunk));
    }
    pieces.extend(body.finish());
    for piece in pieces {
        raw.extend_from_slice(&piece.raw);
        masked.extend_from_slice(piece.masked_or_raw());
    }
    (raw, masked)
}

#[test]
fn secrets_split_across_chunks_are_caught() {
    let secret = b"ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    // SSE: the event is split inside the token and inside the separator.
    let event = [
        b"data: {\"t\":\"x ".as_slice(),
        secret,
        b"\"}\n\ndata: {\"u\":1}\n\n",
    ]
    .concat();
    for cut in [10, 20, 30, event.len() - 1] {
        let (raw, masked) = stream_through(BodyKind::Sse, &[&event[..cut], &event[cut..]]);
        assert_eq!(raw, event);
        let masked = String::from_utf8(masked).unwrap();
        assert!(
            masked.contains("[MASKED:github_token]"),
            "cut {cut}: {masked}"
        );
        assert!(masked.ends_with("data: {\"u\":1}\n\n"));
    }
    // Plain text, far longer than the hold-back window, split in the middle of the secret.
    let filler = vec![b'a'; 40_000];
    let text = [filler.as_slice(), b" ", secret, b" ", filler.as_slice()].concat();
    let cut = filler.len() + 10;
    let pieces: Vec<&[u8]> = text[..cut]
        .chunks(1000)
        .chain(text[cut..].chunks(777))
        .collect();
    let (raw, masked) = stream_through(BodyKind::Text, &pieces);
    assert_eq!(raw, text);
    assert!(!masked.windows(secret.len()).any(|w| w == secret));
    assert_eq!(
        masked.len(),
        text.len() - secret.len() + "[MASKED:github_token]".len()
    );
    // JSON split anywhere is masked as a whole body.
    let json = br#"{"k": "AKIAIOSFODNN7EXAMPLE"}"#;
    let (_, masked) = stream_through(BodyKind::Json, &[&json[..12], &json[12..]]);
    assert_eq!(masked, br#"{"k": "[MASKED:aws_access_key_id]"}"#);
}

#[test]
fn watch_events_are_masked_line_by_line_as_they_complete() {
    // Two watch events of Secrets, split inside the second; the first is released whole
    // before the second has arrived, so a watch is never held back past its event.
    let first =
        br#"{"type":"ADDED","object":{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}}"#;
    let second =
        br#"{"type":"MODIFIED","object":{"kind":"ConfigMap","data":{"k":"AKIAIOSFODNN7EXAMPLE"}}}"#;
    let stream = [first.as_slice(), b"\n", second, b"\n"].concat();
    let cut = first.len() + 20;
    let mut body = BodyMasker::new(masker(), BodyKind::JsonLines);
    let released = body.feed(&stream[..cut]);
    assert_eq!(released.len(), 1);
    assert_eq!(&released[0].raw[..], &stream[..first.len() + 1]);
    let first_masked = String::from_utf8(released[0].masked_or_raw().to_vec()).unwrap();
    assert!(!first_masked.contains("aHVudGVyMg=="), "{first_masked}");
    assert!(first_masked.ends_with("}}}\n"));
    let (raw, masked) = stream_through(BodyKind::JsonLines, &[&stream[..cut], &stream[cut..]]);
    assert_eq!(raw, stream);
    let masked = String::from_utf8(masked).unwrap();
    assert_eq!(masked.lines().count(), 2);
    assert!(masked.contains("[MASKED:aws_access_key_id]"), "{masked}");
    for line in masked.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

fn secret_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("AKIAIOSFODNN7EXAMPLE".to_string()),
        Just("4111 1111 1111 1111".to_string()),
        Just("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".to_string()),
        Just("password=hunter2".to_string()),
        Just("\"quoted\" \\ back\nslash\u{e9}".to_string()),
        "[a-z ]{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        secret_fragment().prop_map(serde_json::Value::from),
        prop::collection::vec(secret_fragment(), 1..4).prop_map(|p| p.join(" ").into()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("password".to_string()), "[a-z]{1,8}"],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn masked_json_always_parses(value in json_value(), pretty in any::<bool>()) {
        let m = masker();
        let body = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
        let mut report = MaskReport::default();
        if let Some(out) = m.mask_json(&body, &mut report).unwrap() {
            serde_json::from_slice::<serde_json::Value>(&out).unwrap();
            prop_assert!(!report.is_empty());
        }
    }

    #[test]
    fn text_without_secrets_passes_byte_for_byte(text in "[a-z ,.{}\\[\\]\"\n]{0,400}") {
        let m = masker();
        let mut report = MaskReport::default();
        prop_assert_eq!(m.mask_body(text.as_bytes(), &mut report), None);
        let (raw, masked) = stream_through(BodyKind::Sse, &[text.as_bytes()]);
        prop_assert_eq!(&raw, &masked);
    }

    #[test]
    fn masking_is_idempotent(parts in prop::collection::vec(secret_fragment(), 0..8), as_json in any::<bool>()) {
        let m = masker();
        let text = parts.join(" ");
        let body = if as_json { json!({"text": text, "password": "x1y2z3"}).to_string().into_bytes() } else { text.into_bytes() };
        let mut report = MaskReport::default();
        let once = m.mask_body(&body, &mut report).unwrap_or(body);
        prop_assert_eq!(m.mask_body(&once, &mut report), None);
    }
}
