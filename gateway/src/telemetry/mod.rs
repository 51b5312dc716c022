//! Metrics and internal events. Each internal event is one struct whose `emit` writes both its
//! structured log line and its counters, so logs and metrics never drift apart.
pub mod events;

use std::sync::OnceLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub target: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaskLabels {
    pub target: String,
    pub direction: String,
    pub detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub sessions_started: Family<TargetLabels, Counter>,
    pub sessions_ended: Family<OutcomeLabels, Counter>,
    pub sessions_active: Gauge,
    pub bytes_up: Family<TargetLabels, Counter>,
    pub bytes_down: Family<TargetLabels, Counter>,
    pub origin_lookup_misses: Counter,
    pub records_written: Counter,
    pub record_bytes_written: Counter,
    pub record_write_errors: Counter,
    pub records_lost: Counter,
    pub mcp_sessions_active: Gauge,
    pub mcp_sessions_ended: Family<HowLabels, Counter>,
    pub sessions_refused_spool_full: Counter,
    pub sessions_refused_at_limit: Family<LimitLabels, Counter>,
    pub sessions_unrecorded: Counter,
    pub spool_bytes: Gauge,
    pub records_shipped: Counter,
    pub ship_retries: Counter,
    pub records_resent: Counter,
    pub oldest_unshipped_seconds: Gauge,
    pub fsyncs: Counter,
    pub control_rejections: Counter,
    pub cgroups_registered: Counter,
    pub cgroups_unregistered: Counter,
    pub cgroups_adopted: Counter,
    pub bpf_map_entries: Family<MapLabels, Gauge>,
    pub secrets_masked: Family<MaskLabels, Counter>,
    pub holds_pending: Gauge,
    pub holds_decided: Family<OutcomeLabels, Counter>,
    pub approval_rejections: Family<HowLabels, Counter>,
    pub webhook_failures: Counter,
    pub cluster_decisions_rejected: Family<HowLabels, Counter>,
    pub cluster_hold_sync_failures: Counter,
    pub pods_intercepted: Gauge,
    pub pod_registrations: Counter,
    pub pod_unregistrations: Counter,
    pub pod_registration_seconds: Histogram,
    pub kube_watch_errors: Family<ResourceLabels, Counter>,
    pub kube_synced: Gauge,
    pub token_checks: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("interlock"),
            sessions_started: Family::default(),
            sessions_ended: Family::default(),
            sessions_active: Gauge::default(),
            bytes_up: Family::default(),
            bytes_down: Family::default(),
            origin_lookup_misses: Counter::default(),
            records_written: Counter::default(),
            record_bytes_written: Counter::default(),
            record_write_errors: Counter::default(),
            records_lost: Counter::default(),
            mcp_sessions_active: Gauge::default(),
            mcp_sessions_ended: Family::default(),
            sessions_refused_spool_full: Counter::default(),
            sessions_refused_at_limit: Family::default(),
            sessions_unrecorded: Counter::default(),
            spool_bytes: Gauge::default(),
            records_shipped: Counter::default(),
            ship_retries: Counter::default(),
            records_resent: Counter::default(),
            oldest_unshipped_seconds: Gauge::default(),
            fsyncs: Counter::default(),
            control_rejections: Counter::default(),
            cgroups_registered: Counter::default(),
            cgroups_unregistered: Counter::default(),
            cgroups_adopted: Counter::default(),
            bpf_map_entries: Family::default(),
            secrets_masked: Family::default(),
            holds_pending: Gauge::default(),
            holds_decided: Family::default(),
            approval_rejections: Family::default(),
            webhook_failures: Counter::default(),
            cluster_decisions_rejected: Family::default(),
            cluster_hold_sync_failures: Counter::default(),
            pods_intercepted: Gauge::default(),
            pod_registrations: Counter::default(),
            pod_unregistrations: Counter::default(),
            // 1 ms to about 16 s.
            pod_registration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            kube_watch_errors: Family::default(),
            kube_synced: Gauge::default(),
            token_checks: Family::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "sessions_started",
            "Sessions opened",
            m.sessions_started.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions closed, by outcome",
            m.sessions_ended.clone(),
        );
        registry.register(
            "sessions_active",
            "Sessions open now",
            m.sessions_active.clone(),
        );
        registry.register(
            "bytes_up",
            "Bytes relayed client to upstream",
            m.bytes_up.clone(),
        );
        registry.register(
            "bytes_down",
            "Bytes relayed upstream to client",
            m.bytes_down.clone(),
        );
        registry.register(
            "origin_lookup_misses",
            "Accepted connections with no eBPF origin record (closed unserved)",
            m.origin_lookup_misses.clone(),
        );
        registry.register(
            "records_written",
            "Records written to the store",
            m.records_written.clone(),
        );
        registry.register(
            "record_bytes_written",
            "Bytes written to the store, framing included",
            m.record_bytes_written.clone(),
        );
        registry.register(
            "record_write_errors",
            "Failed writes to the record store",
            m.record_write_errors.clone(),
        );
        registry.register(
            "fsyncs",
            "fsync calls on the record store",
            m.fsyncs.clone(),
        );
        registry.register(
            "records_lost",
            "Records dropped by failed writes",
            m.records_lost.clone(),
        );
        registry.register(
            "sessions_refused_spool_full",
            "New sessions refused because the spool was full or failing (fail_closed)",
            m.sessions_refused_spool_full.clone(),
        );
        registry.register(
            "sessions_refused_at_limit",
            "Sessions refused at limits.max_sessions (limit=node) or max_sessions_per_workload (limit=workload)",
            m.sessions_refused_at_limit.clone(),
        );
        registry.register(
            "sessions_unrecorded",
            "Sessions let through unrecorded because the spool was full (fail_open)",
            m.sessions_unrecorded.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in the spool's segment files",
            m.spool_bytes.clone(),
        );
        registry.register(
            "records_shipped",
            "Records acknowledged by the Kinesis stream",
            m.records_shipped.clone(),
        );
        registry.register(
            "ship_retries",
            "PutRecords calls retried",
            m.ship_retries.clone(),
        );
        registry.register(
            "records_resent",
            "Records resent after a partial PutRecords failure",
            m.records_resent.clone(),
        );
        registry.register(
            "oldest_unshipped_seconds",
            "Age of the oldest record not yet acknowledged by the stream",
            m.oldest_unshipped_seconds.clone(),
        );
        registry.register(
            "control_rejections",
            "Control-socket requests refused (not root, malformed, or invalid)",
            m.control_rejections.clone(),
        );
        registry.register(
            "cgroups_registered",
            "cgroups registered for interception by `interlock wrap`",
            m.cgroups_registered.clone(),
        );
        registry.register(
            "cgroups_unregistered",
            "wrap registrations ended",
            m.cgroups_unregistered.clone(),
        );
        registry.register(
            "cgroups_adopted",
            "live wrap cgroups of a previous gateway registered again at start",
            m.cgroups_adopted.clone(),
        );
        registry.register(
            "bpf_map_entries",
            "Entries in the eBPF tracking maps; SOCK_ORIGINS and FLOWS return to 0 when idle",
            m.bpf_map_entries.clone(),
        );
        registry.register(
            "mcp_sessions_active",
            "MCP sessions (by Mcp-Session-Id) seen and not yet ended or expired",
            m.mcp_sessions_active.clone(),
        );
        registry.register(
            "mcp_sessions_ended",
            "MCP sessions ended, by how (deleted or idle)",
            m.mcp_sessions_ended.clone(),
        );
        registry.register(
            "secrets_masked",
            "Secrets masked, by target, direction and detector",
            m.secrets_masked.clone(),
        );
        registry.register(
            "holds_pending",
            "Requests held and waiting for an approval decision",
            m.holds_pending.clone(),
        );
        registry.register(
            "holds_decided",
            "Holds ended, by target and outcome (approved, denied, timed_out, interrupted)",
            m.holds_decided.clone(),
        );
        registry.register(
            "approval_rejections",
            "Approval API calls refused, by why (missing_token, invalid_token, not_allowed, self_approval, not_found)",
            m.approval_rejections.clone(),
        );
        registry.register(
            "cluster_decisions_rejected",
            "Decisions found on InterlockHolds and ignored, by why (bad_signature, other_hold, other_request, not_a_decision, self_approval)",
            m.cluster_decisions_rejected.clone(),
        );
        registry.register(
            "cluster_hold_sync_failures",
            "InterlockHolds this gateway could not create or delete (the hold still waits, decidable on the admin listener)",
            m.cluster_hold_sync_failures.clone(),
        );
        registry.register(
            "approval_webhook_failures",
            "Hold announcements the webhook did not accept (holds stay pending)",
            m.webhook_failures.clone(),
        );
        registry.register(
            "pods_intercepted",
            "Pods of this node whose cgroup is registered (node mode)",
            m.pods_intercepted.clone(),
        );
        registry.register(
            "pod_registrations",
            "Pod cgroups registered for interception",
            m.pod_registrations.clone(),
        );
        registry.register(
            "pod_unregistrations",
            "Pod cgroups unregistered (pod gone or no longer selected)",
            m.pod_unregistrations.clone(),
        );
        registry.register(
            "pod_registration_seconds",
            "From the gateway seeing a selected pod to its cgroup in the map",
            m.pod_registration_seconds.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Failed list or watch calls to the API server, by resource (retried with backoff)",
            m.kube_watch_errors.clone(),
        );
        registry.register(
            "token_checks",
            "Bearer service-account tokens checked against the connecting pod, by target and outcome",
            m.token_checks.clone(),
        );
        registry.register(
            "kube_synced",
            "1 once the first list of every watched resource is in and registrations are applied",
            m.kube_synced.clone(),
        );
        m
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Sets up `tracing` on stderr. The level comes from RUST_LOG (default `info`); aya-log lines
/// from the eBPF programs arrive through the `log` bridge.
pub fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = builder.try_init();
}
