//! Announces new holds with a POST of JSON: Slack-compatible `text`, plus the hold itself
//! under `interlock` for other receivers. A failing webhook is logged and counted; it never
//! decides a hold.
use serde_json::json;

use super::config::WebhookConfig;
use crate::{
    recording::record::Hold,
    telemetry::events::{InternalEvent, WebhookFailed},
};

pub struct Webhook {
    config: WebhookConfig,
    http: reqwest::Client,
    /// The gateway's main runtime: holds open on session workers, and an announcement must
    /// not be dropped with a worker that stops.
    runtime: tokio::runtime::Handle,
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Result<Webhook, String> {
        reqwest::Url::parse(&config.url)
            .map_err(|e| format!("approvals.webhook.url `{}`: {e}", config.url))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("HTTP client for the approvals webhook: {e}"))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| format!("the approvals webhook needs the gateway's runtime: {e}"))?;
        Ok(Webhook {
            config,
            http,
            runtime,
        })
    }

    /// Sends in the background: a hold never waits for its announcement.
    pub fn announce(&self, hold: &Hold) {
        let what = hold.tool.as_deref().unwrap_or(&hold.method);
        let body = json!({
            "text": format!(
                "Interlock is holding `{what}` on target `{}` from `{}` (pid {}) by rule `{}`. Decide with `interlock approvals approve {id} --reason …` or `deny`; it is denied at {}.",
                hold.target,
                hold.workload.process,
                hold.workload.pid,
                hold.rule.as_deref().unwrap_or("default"),
                hold.expires_at,
                id = hold.hold_id,
            ),
            "interlock": hold,
        });
        let (http, url, hold_id) = (
            self.http.clone(),
            self.config.url.clone(),
            hold.hold_id.clone(),
        );
        self.runtime.spawn(async move {
            let result = http.post(&url).json(&body).send().await;
            let error = match result {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => format!("the receiver answered {}", response.status()),
                Err(e) => e.to_string(),
            };
            WebhookFailed {
                hold_id: &hold_id,
                error: &error,
            }
            .emit();
        });
    }
}
