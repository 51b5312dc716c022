//! `interlock approvals list|approve|deny`: the approval API from a terminal. The approver's
//! OIDC ID token comes from `--token-file` or `INTERLOCK_APPROVER_TOKEN`.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::recording::record::Hold;

pub const TOKEN_ENV: &str = "INTERLOCK_APPROVER_TOKEN";

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token_file: Option<&Path>) -> Result<ApiClient> {
        let token = match token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the approver token from {}", path.display()))?,
            None => std::env::var(TOKEN_ENV).map_err(|_| {
                anyhow::anyhow!(
                    "no approver token: pass --token-file FILE or set {TOKEN_ENV} to your OIDC ID token"
                )
            })?,
        };
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{base}")
        };
        Ok(ApiClient {
            base,
            token: token.trim().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}; is the gateway running, and is --admin right?", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("no details");
            bail!("{status}: {error}");
        }
        Ok(body)
    }

    pub async fn list(&self) -> Result<Vec<Hold>> {
        let body = self
            .call(self.http.get(format!("{}/approvals", self.base)))
            .await?;
        Ok(serde_json::from_value(body["holds"].clone())?)
    }

    pub async fn decide(&self, id: &str, approve: bool, reason: &str) -> Result<Value> {
        let verb = if approve { "approve" } else { "deny" };
        self.call(
            self.http
                .post(format!("{}/approvals/{id}/{verb}", self.base))
                .json(&json!({ "reason": reason })),
        )
        .await
    }
}

pub fn print_holds(holds: &[Hold]) {
    if holds.is_empty() {
        println!("no pending holds");
        return;
    }
    for hold in holds {
        let requester = hold
            .requester
            .as_ref()
            .and_then(|r| r.email.clone().or(r.subject.clone()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{id}  {what} on {target}  by {process} (pid {pid}, cgroup {cgroup}, token {requester})\n    rule {rule}: {reason}\n    held since {created}, denied at {expires}\n    arguments: {args}",
            id = hold.hold_id,
            what = hold.tool.as_deref().unwrap_or(&hold.method),
            target = hold.target,
            process = hold.workload.process,
            pid = hold.workload.pid,
            cgroup = hold.workload.cgroup.as_deref().unwrap_or("?"),
            rule = hold.rule.as_deref().unwrap_or("default"),
            reason = hold.reason.as_deref().unwrap_or("-"),
            created = hold.created_at,
            expires = hold.expires_at,
            args = hold
                .arguments
                .as_ref()
                .map_or_else(|| "-".into(), Value::to_string),
        );
    }
}
