//! One struct per internal event; `emit` logs it with structured fields and counts it.
use std::{net::SocketAddr, time::Duration};

use tracing::{debug, error, info, warn};

use super::{LimitLabels, OutcomeLabels, TargetLabels, metrics};

pub trait InternalEvent {
    fn emit(self);
}

pub struct SessionStarted<'a> {
    pub session_id: &'a str,
    pub target: &'a str,
    pub client: SocketAddr,
    pub original_dst: SocketAddr,
    pub pid: u32,
    pub process: &'a str,
}

impl InternalEvent for SessionStarted<'_> {
    fn emit(self) {
        info!(
            session_id = self.session_id,
            target = self.target,
            client = %self.client,
            original_dst = %self.original_dst,
            pid = self.pid,
            process = self.process,
            "session started"
        );
        let m = metrics();
        m.sessions_started
            .get_or_create(&TargetLabels {
                target: self.target.into(),
            })
            .inc();
        m.sessions_active.inc();
    }
}

pub struct SessionEnded<'a> {
    pub session_id: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration: Duration,
}

impl InternalEvent for SessionEnded<'_> {
    fn emit(self) {
        info!(
            session_id = self.session_id,
            target = self.target,
            outcome = self.outcome,
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = self.duration.as_millis() as u64,
            "session ended"
        );
        let m = metrics();
        let target = TargetLabels {
            target: self.target.into(),
        };
        m.bytes_up.get_or_create(&target).inc_by(self.bytes_up);
        m.bytes_down.get_or_create(&target).inc_by(self.bytes_down);
        m.sessions_ended
            .get_or_create(&OutcomeLabels {
                target: self.target.into(),
                outcome: self.outcome.into(),
            })
            .inc();
        m.sessions_active.dec();
    }
}

pub struct UpstreamConnectFailed<'a> {
    pub session_id: &'a str,
    pub target: &'a str,
    pub upstream: SocketAddr,
    pub error: &'a std::io::Error,
}

impl InternalEvent for UpstreamConnectFailed<'_> {
    fn emit(self) {
        // Counted through the session's `upstream_*` outcome.
        warn!(
            session_id = self.session_id,
            target = self.target,
            upstream = %self.upstream,
            error = %self.error,
            "upstream connect failed; the client's connection is reset. Check that the target \
             is up and reachable from the node"
        );
    }
}

pub struct ClientTlsFailed<'a> {
    pub session_id: &'a str,
    pub target: &'a str,
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for ClientTlsFailed<'_> {
    fn emit(self) {
        // Counted through the session's outcome (`tls_rejected_by_client`, `refused`, `error`);
        // the error says what to do.
        warn!(
            session_id = self.session_id,
            target = self.target,
            error = %self.error,
            "TLS with the client failed; nothing was relayed"
        );
    }
}

pub struct OriginNotFound {
    pub peer: SocketAddr,
}

impl InternalEvent for OriginNotFound {
    fn emit(self) {
        warn!(
            peer = %self.peer,
            "connection on the proxy port has no eBPF origin record; closed unserved. Clients \
             must not dial the proxy port directly"
        );
        metrics().origin_lookup_misses.inc();
    }
}

pub struct RecordsWritten {
    pub records: u64,
    pub bytes: u64,
    pub synced: bool,
}

impl InternalEvent for RecordsWritten {
    fn emit(self) {
        debug!(
            records = self.records,
            bytes = self.bytes,
            synced = self.synced,
            "records written"
        );
        let m = metrics();
        m.records_written.inc_by(self.records);
        m.record_bytes_written.inc_by(self.bytes);
        if self.synced {
            m.fsyncs.inc();
        }
    }
}

pub struct RecordWriteFailed<'a> {
    pub error: &'a std::io::Error,
    pub dir: &'a std::path::Path,
    /// Records in the batch that could not be written.
    pub records: u64,
}

impl InternalEvent for RecordWriteFailed<'_> {
    fn emit(self) {
        error!(
            error = %self.error,
            dir = %self.dir.display(),
            records_lost = self.records,
            "writing the record store failed; new sessions are refused until it works again, \
             and the affected sessions will show missing records. Check free space and \
             permissions of recording.dir"
        );
        let m = metrics();
        m.record_write_errors.inc();
        m.records_lost.inc_by(self.records);
    }
}

/// Building a deferred record panicked: a bug, and the session's records are incomplete.
pub struct RecordBuildFailed<'a> {
    pub session_id: &'a str,
}

impl InternalEvent for RecordBuildFailed<'_> {
    fn emit(self) {
        error!(
            session_id = self.session_id,
            "building a record panicked and it was dropped; the session's records are \
             incomplete. This is a bug in Interlock: report it with this log"
        );
        metrics().records_lost.inc();
    }
}

/// The record writer could not change its scheduling priority.
pub struct WriterPriorityUnchanged<'a> {
    pub idle: bool,
    pub error: &'a std::io::Error,
}

impl InternalEvent for WriterPriorityUnchanged<'_> {
    fn emit(self) {
        if self.idle {
            warn!(
                error = %self.error,
                "could not lower the record writer to idle priority; records are still \
                 written, but encoding them competes with the data path for CPU"
            );
        } else {
            warn!(
                error = %self.error,
                "could not raise the record writer from idle priority for a backlog or a \
                 record someone waits on; give the gateway CAP_SYS_NICE (it runs as root on \
                 nodes) so that other load cannot delay recording"
            );
        }
    }
}

pub struct SpoolGapRecorded {
    pub sessions: u64,
}

impl InternalEvent for SpoolGapRecorded {
    fn emit(self) {
        error!(
            sessions = self.sessions,
            "the spool has room again; a spool_gap record now says how many sessions went \
             through unrecorded (when_full: fail_open)"
        );
    }
}

pub struct SessionRefusedSpoolFull {
    pub peer: SocketAddr,
    pub spool_bytes: u64,
    pub max_bytes: u64,
    pub let_through: bool,
}

impl InternalEvent for SessionRefusedSpoolFull {
    fn emit(self) {
        let m = metrics();
        if self.let_through {
            error!(
                peer = %self.peer,
                spool_bytes = self.spool_bytes,
                max_bytes = self.max_bytes,
                "spool full or failing: session let through UNRECORDED (when_full: fail_open)"
            );
            m.sessions_unrecorded.inc();
        } else {
            error!(
                peer = %self.peer,
                spool_bytes = self.spool_bytes,
                max_bytes = self.max_bytes,
                "spool full or failing: new session refused (when_full: fail_closed); \
                 established sessions continue. Free space, raise recording.spool.max_bytes, \
                 or check the sink that drains the spool"
            );
            m.sessions_refused_spool_full.inc();
        }
    }
}

pub struct CgroupRegistered<'a> {
    pub cgroup_id: u64,
    pub path: &'a std::path::Path,
    pub proxy: Option<SocketAddr>,
}

impl InternalEvent for CgroupRegistered<'_> {
    fn emit(self) {
        info!(
            cgroup_id = self.cgroup_id,
            path = %self.path.display(),
            proxy = ?self.proxy,
            "cgroup registered for interception"
        );
        metrics().cgroups_registered.inc();
    }
}

/// A session refused because its workload or the node is at a session cap.
pub struct SessionRefusedAtLimit<'a> {
    pub session_id: &'a str,
    pub peer: SocketAddr,
    pub cgroup_id: u64,
    pub process: &'a str,
    pub refusal: crate::vocabulary::Refusal,
}

impl InternalEvent for SessionRefusedAtLimit<'_> {
    fn emit(self) {
        warn!(
            session_id = self.session_id,
            %self.peer,
            cgroup_id = self.cgroup_id,
            process = self.process,
            limit = self.refusal.kind(),
            "session refused: {}", self.refusal.describe()
        );
        metrics()
            .sessions_refused_at_limit
            .get_or_create(&LimitLabels {
                limit: self.refusal.kind(),
            })
            .inc();
    }
}

/// A registration of a previous gateway's, taken over at start.
pub struct CgroupAdopted<'a> {
    pub cgroup_id: u64,
    pub path: &'a std::path::Path,
    pub proxy: Option<SocketAddr>,
}

impl InternalEvent for CgroupAdopted<'_> {
    fn emit(self) {
        info!(
            cgroup_id = self.cgroup_id,
            path = %self.path.display(),
            proxy = ?self.proxy,
            "live wrap cgroup adopted: its next connections are intercepted again"
        );
        metrics().cgroups_adopted.inc();
    }
}

pub struct CgroupUnregistered {
    pub cgroup_id: u64,
}

impl InternalEvent for CgroupUnregistered {
    fn emit(self) {
        info!(cgroup_id = self.cgroup_id, "cgroup unregistered");
        metrics().cgroups_unregistered.inc();
    }
}

pub struct ControlRequestRejected<'a> {
    pub reason: &'a str,
    pub uid: Option<u32>,
}

impl InternalEvent for ControlRequestRejected<'_> {
    fn emit(self) {
        warn!(reason = self.reason, uid = ?self.uid, "control request rejected");
        metrics().control_rejections.inc();
    }
}

pub struct McpSessionEnded<'a> {
    pub id: &'a str,
    pub target: &'a str,
    /// `deleted` by the client, or expired after being `idle`.
    pub how: &'a str,
    pub active: usize,
}

impl InternalEvent for McpSessionEnded<'_> {
    fn emit(self) {
        info!(
            mcp_session_id = self.id,
            target = self.target,
            how = self.how,
            "MCP session ended"
        );
        let m = metrics();
        m.mcp_sessions_active.set(self.active as i64);
        m.mcp_sessions_ended
            .get_or_create(&super::HowLabels {
                how: self.how.into(),
            })
            .inc();
    }
}

pub struct SecretsMasked<'a> {
    pub target: &'a str,
    pub direction: crate::vocabulary::Direction,
    pub detector: &'a str,
    pub count: u64,
}

impl InternalEvent for SecretsMasked<'_> {
    fn emit(self) {
        let direction = match self.direction {
            crate::vocabulary::Direction::Up => "request",
            crate::vocabulary::Direction::Down => "response",
        };
        debug!(
            target_name = self.target,
            direction,
            detector = self.detector,
            count = self.count,
            "secrets masked"
        );
        metrics()
            .secrets_masked
            .get_or_create(&super::MaskLabels {
                target: self.target.into(),
                direction: direction.into(),
                detector: self.detector.into(),
            })
            .inc_by(self.count);
    }
}

pub struct HoldOpened<'a> {
    pub target: &'a str,
    pub hold_id: &'a str,
    pub rule: Option<&'a str>,
    pub timeout: Duration,
}

impl InternalEvent for HoldOpened<'_> {
    fn emit(self) {
        info!(
            target_name = self.target,
            hold_id = self.hold_id,
            rule = self.rule.unwrap_or("default"),
            timeout = ?self.timeout,
            "request held for approval; decide with `interlock approvals approve|deny`"
        );
        metrics().holds_pending.inc();
    }
}

pub struct HoldDecided<'a> {
    pub target: &'a str,
    pub hold_id: &'a str,
    pub outcome: crate::vocabulary::HoldOutcome,
    pub waited: Duration,
}

impl InternalEvent for HoldDecided<'_> {
    fn emit(self) {
        let outcome = self.outcome.as_str();
        info!(
            target_name = self.target,
            hold_id = self.hold_id,
            outcome,
            waited = ?self.waited,
            "hold ended"
        );
        metrics().holds_pending.dec();
        metrics()
            .holds_decided
            .get_or_create(&OutcomeLabels {
                target: self.target.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

pub struct ApprovalRejected<'a> {
    /// missing_token, invalid_token, not_allowed, self_approval or not_found.
    pub why: &'static str,
    pub error: &'a str,
}

impl InternalEvent for ApprovalRejected<'_> {
    fn emit(self) {
        warn!(
            why = self.why,
            error = self.error,
            "approval API call refused"
        );
        metrics()
            .approval_rejections
            .get_or_create(&super::HowLabels {
                how: self.why.into(),
            })
            .inc();
    }
}

/// A decision on one of this node's InterlockHolds that is not acted on.
pub struct ClusterDecisionRejected<'a> {
    pub hold_id: &'a str,
    /// bad_signature, other_hold, other_request, not_a_decision or self_approval.
    pub why: &'static str,
    pub error: &'a str,
}

impl InternalEvent for ClusterDecisionRejected<'_> {
    fn emit(self) {
        warn!(
            hold_id = self.hold_id,
            why = self.why,
            error = self.error,
            "a decision on an InterlockHold was ignored; the hold stays pending (who wrote it is in the API server's audit log)"
        );
        metrics()
            .cluster_decisions_rejected
            .get_or_create(&super::HowLabels {
                how: self.why.into(),
            })
            .inc();
    }
}

pub struct ClusterHoldSyncFailed<'a> {
    pub hold_id: &'a str,
    /// create or delete.
    pub action: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ClusterHoldSyncFailed<'_> {
    fn emit(self) {
        warn!(
            hold_id = self.hold_id,
            action = self.action,
            error = %self.error,
            "could not write this InterlockHold; the hold still waits and can be decided on this gateway's admin listener"
        );
        metrics().cluster_hold_sync_failures.inc();
    }
}

pub struct WebhookFailed<'a> {
    pub hold_id: &'a str,
    pub error: &'a str,
}

impl InternalEvent for WebhookFailed<'_> {
    fn emit(self) {
        warn!(
            hold_id = self.hold_id,
            error = self.error,
            "approvals webhook failed; the hold stays pending (list it with `interlock approvals list`)"
        );
        metrics().webhook_failures.inc();
    }
}

/// A selected pod's cgroup went into the map.
pub struct PodRegistered<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub cgroup_id: u64,
    pub selections: &'a [String],
    /// Since the gateway first saw the pod selected.
    pub latency: Duration,
}

impl InternalEvent for PodRegistered<'_> {
    fn emit(self) {
        info!(
            namespace = self.namespace,
            pod = self.pod,
            uid = self.uid,
            cgroup_id = self.cgroup_id,
            selections = ?self.selections,
            latency_ms = self.latency.as_secs_f64() * 1e3,
            "pod intercepted"
        );
        let m = metrics();
        m.pod_registrations.inc();
        m.pod_registration_seconds
            .observe(self.latency.as_secs_f64());
    }
}

/// A pod's cgroup left the map: the pod is gone or no longer selected.
pub struct PodUnregistered<'a> {
    pub uid: &'a str,
    pub cgroup_id: u64,
}

impl InternalEvent for PodUnregistered<'_> {
    fn emit(self) {
        info!(
            uid = self.uid,
            cgroup_id = self.cgroup_id,
            "pod no longer intercepted"
        );
        metrics().pod_unregistrations.inc();
    }
}

/// A list or watch call to the API server failed; the watcher retries with backoff.
pub struct KubeWatchFailed<'a> {
    pub resource: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for KubeWatchFailed<'_> {
    fn emit(self) {
        warn!(
            resource = self.resource,
            error = %self.error,
            "watching the API server failed; retrying with backoff (check the API server \
             address, the gateway's credentials, and RBAC: get, list and watch on this resource)"
        );
        metrics()
            .kube_watch_errors
            .get_or_create(&super::ResourceLabels {
                resource: self.resource,
            })
            .inc();
    }
}

/// A request's bearer token was checked against the pod the kernel attests.
pub struct TokenChecked<'a> {
    pub target: &'a str,
    pub outcome: &'a str,
    pub allowed: bool,
    pub reason: Option<&'a str>,
}

impl InternalEvent for TokenChecked<'_> {
    fn emit(self) {
        if self.allowed {
            debug!(
                target_name = self.target,
                outcome = self.outcome,
                "bearer token checked"
            );
        } else {
            warn!(
                target_name = self.target,
                outcome = self.outcome,
                reason = self.reason.unwrap_or(""),
                "request refused: its bearer token is not the connecting pod's"
            );
        }
        metrics()
            .token_checks
            .get_or_create(&OutcomeLabels {
                target: self.target.into(),
                outcome: self.outcome.into(),
            })
            .inc();
    }
}
