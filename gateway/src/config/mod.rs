//! Gateway configuration: YAML (it lives in a ConfigMap), strict, with defaults for every
//! optional key. Errors name the file, line, column and key, and say how to fix them. Each
//! section's types live with the module they configure; this module assembles them.
pub mod values;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::kubernetes::config::{AWAIT_TARGET, KubernetesConfig};
use crate::protocols::target::{Protocol, Target};
use crate::{
    recording::config::{FsyncPolicy, Spool},
    sinks::kinesis::config::Kinesis,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The proxy listener for IPv4 targets (and for host processes).
    #[serde(default = "defaults::listen", deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
    /// The proxy listener for IPv6 targets; `null` disables IPv6 interception.
    #[serde(
        default = "defaults::listen_v6",
        deserialize_with = "values::optional_socket_addr"
    )]
    pub listen_v6: Option<SocketAddr>,
    /// Health, readiness and metrics.
    #[serde(default = "defaults::admin", deserialize_with = "values::socket_addr")]
    pub admin: SocketAddr,
    /// Unix socket through which root registers wrapped cgroups.
    #[serde(default = "defaults::control_socket")]
    pub control_socket: PathBuf,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// bpffs directory for programs and maps pinned in `fail_mode: closed`.
    #[serde(default = "defaults::bpffs_dir")]
    pub bpffs_dir: PathBuf,
    /// Recorded in every session; defaults to $NODE_NAME, then the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "values::duration"
    )]
    pub upstream_connect_timeout: Duration,
    /// Threads that sessions run on, each session on one from start to end; by default one
    /// per CPU the gateway may use.
    #[serde(default, deserialize_with = "values::worker_count")]
    pub workers: Option<std::num::NonZeroUsize>,
    /// How long SIGTERM waits for open sessions before cutting them.
    #[serde(
        default = "defaults::drain_timeout",
        deserialize_with = "values::duration"
    )]
    pub drain_timeout: Duration,
    /// MCP sessions without traffic for this long are forgotten (clients need not DELETE).
    #[serde(
        default = "defaults::mcp_session_idle",
        deserialize_with = "values::duration"
    )]
    pub mcp_session_idle: Duration,
    #[serde(default, deserialize_with = "crate::protocols::target::targets")]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub recording: Recording,
    /// What MCP operations are allowed; reloaded on SIGHUP or when this file changes.
    #[serde(default)]
    pub policy: crate::policy::Policy,
    /// Secret detectors and replacement; applies to `http` and `mcp` targets.
    #[serde(default)]
    pub masking: crate::masking::MaskingConfig,
    /// Who decides held requests, and how holds wait.
    #[serde(default)]
    pub approvals: crate::approvals::ApprovalsConfig,
    /// Node mode: the pods of this node that a selection chooses are intercepted.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// Node mode: how bearer service-account tokens are checked against the pod.
    #[serde(default)]
    pub identity: crate::tokens::IdentityConfig,
    /// The CA that signs what the gateway presents to pods for the API server.
    #[serde(default)]
    pub interception_ca: crate::interception_ca::InterceptionCaConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Programs detach with the gateway: workloads connect directly, unrecorded.
    #[default]
    Open,
    /// Programs and maps stay pinned: connections to targets are refused until it is back.
    Closed,
}

/// Caps that keep one workload from exhausting the gateway. Sessions over a cap are refused
/// (recorded with outcome `refused`), and other workloads keep being served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open sessions across the node; by default what the file descriptor limit allows
    /// (two descriptors a session), less a reserve for the gateway itself.
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Open sessions of one workload: a pod (all its containers together), or the cgroup of
    /// a `wrap`.
    #[serde(default = "defaults::max_sessions_per_workload")]
    pub max_sessions_per_workload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: None,
            max_sessions_per_workload: defaults::max_sessions_per_workload(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// The embedded record store. Relative paths are relative to the config file.
    #[serde(default = "defaults::recording_dir")]
    pub dir: PathBuf,
    /// A segment file is closed and a new one started past this size.
    #[serde(
        default = "defaults::segment_bytes",
        deserialize_with = "values::byte_size"
    )]
    pub segment_bytes: u64,
    /// ed25519 PKCS#8 PEM key that seals sessions (in Kubernetes, a Secret). When not set,
    /// `<dir>/signing.key` is used and generated on first start.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// `always`: fsync every batch. `interval`: fsync every `fsync_interval`.
    /// `session_start` and `session_end` are synced before they are acknowledged either way.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    #[serde(
        default = "defaults::fsync_interval",
        deserialize_with = "values::duration"
    )]
    pub fsync_interval: Duration,
    #[serde(default)]
    pub spool: Spool,
    /// Ship records to a Kinesis data stream. Without it, only the file store is used.
    #[serde(default)]
    pub kinesis: Option<Kinesis>,
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            dir: defaults::recording_dir(),
            segment_bytes: defaults::segment_bytes(),
            signing_key: None,
            fsync: FsyncPolicy::default(),
            fsync_interval: defaults::fsync_interval(),
            spool: Spool::default(),
            kinesis: None,
        }
    }
}

impl Recording {
    /// The signing key path, and whether it may be generated (only the default may).
    pub fn signing_key_path(&self) -> (PathBuf, bool) {
        match &self.signing_key {
            Some(path) => (path.clone(), false),
            None => (self.dir.join("signing.key"), true),
        }
    }
}

mod defaults {
    use super::*;
    pub fn listen() -> SocketAddr {
        "127.0.0.1:15001".parse().expect("valid literal")
    }
    pub fn listen_v6() -> Option<SocketAddr> {
        Some("[::1]:15001".parse().expect("valid literal"))
    }
    pub fn admin() -> SocketAddr {
        "127.0.0.1:15000".parse().expect("valid literal")
    }
    pub fn control_socket() -> PathBuf {
        PathBuf::from("/run/interlock/control.sock")
    }
    pub fn bpffs_dir() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/interlock")
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_sessions_per_workload() -> usize {
        1024
    }
    pub fn recording_dir() -> PathBuf {
        PathBuf::from("./interlock-records")
    }
    pub fn segment_bytes() -> u64 {
        64 << 20
    }
    pub fn fsync_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn mcp_session_idle() -> Duration {
        Duration::from_secs(30 * 60)
    }
}

impl Config {
    /// Reads and validates a config file, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: path.to_path_buf(),
            error,
        })?;
        let mut config = Self::parse(&text).map_err(|e| e.in_file(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let recording = &mut config.recording;
        for dir in [
            &mut recording.dir,
            &mut config.control_socket,
            &mut config.interception_ca.key,
        ]
        .into_iter()
        .chain(recording.signing_key.as_mut())
        .chain(config.masking.hmac_key_file.as_mut())
        .chain(
            config
                .kubernetes
                .as_mut()
                .and_then(|k| k.kubeconfig.as_mut()),
        )
        .chain(
            config
                .targets
                .iter_mut()
                .filter_map(|t| t.upstream_ca.as_mut()),
        ) {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        // Built once here so that check-config reports what the gateway would refuse.
        crate::masking::Masker::new(&config.masking).map_err(|message| ConfigError::Invalid {
            file: Some(path.to_path_buf()),
            location: None,
            key: Some("masking".into()),
            message,
        })?;
        config
            .approvals
            .validate(config.policy.can_hold())
            .map_err(|message| ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                location: None,
                key: Some("approvals".into()),
                message,
            })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config = Self::deserialize(text)?;
        config.check_targets()?;
        config.check_kubernetes()?;
        config.check_identity()?;
        // The webhook's certificate comes from the interception CA, whose name constraints
        // must then permit its Service's name.
        if let Some(name) = config
            .kubernetes
            .as_ref()
            .and_then(|k| k.webhook.as_ref())
            .and_then(|w| w.server_name())
            && !config.interception_ca.names.contains(&name)
        {
            config.interception_ca.names.push(name);
        }
        if let Some(kubernetes) = &config.kubernetes {
            // Answers `interlock await` from every selected pod (kubernetes::config).
            let yaml = format!(
                "name: {AWAIT_TARGET}\naddress: \"{}\"\n",
                kubernetes.await_address
            );
            let target = serde_yaml_ng::from_str(&yaml).map_err(|e| ConfigError::Invalid {
                file: None,
                location: None,
                key: Some("kubernetes.await_address".into()),
                message: e.to_string(),
            })?;
            config.targets.push(target);
        }
        Ok(config)
    }

    /// Trusted OIDC issuers are well formed, and a target that requires a token can get one.
    fn check_identity(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: None,
            location: None,
            key: Some(key),
            message,
        };
        for (index, issuer) in self.identity.oidc.iter().enumerate() {
            let key = format!("identity.oidc[{index}].issuer");
            crate::tokens::oidc::validate_issuer_url(&key, &issuer.issuer)
                .map_err(|e| invalid(key, e))?;
            if issuer.audiences.iter().all(|a| a.is_empty()) {
                return Err(invalid(
                    format!("identity.oidc[{index}].audiences"),
                    "name the audience (`aud`) tokens from this issuer must carry to be \
                     accepted here, for example the MCP server's resource URL"
                        .into(),
                ));
            }
        }
        for (index, target) in self.targets.iter().enumerate() {
            if target.require_oidc_token && target.require_bound_token {
                return Err(invalid(
                    format!("targets[{index}].require_oidc_token"),
                    "a target requires either the pod's own service-account token or an OIDC \
                     token, not both: choose one"
                        .into(),
                ));
            }
            if target.require_oidc_token && self.identity.oidc.is_empty() {
                return Err(invalid(
                    format!("targets[{index}].require_oidc_token"),
                    "no OIDC issuer is trusted, so no token could pass: list the issuers in \
                     `identity.oidc` (issuer, audiences)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Node mode names targets that exist, and service targets need node mode.
    fn check_kubernetes(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: None,
            location: None,
            key: Some(key),
            message,
        };
        let Some(kubernetes) = &self.kubernetes else {
            return match self.targets.iter().position(|t| t.service.is_some()) {
                Some(index) => Err(invalid(
                    format!("targets[{index}].service"),
                    "a service target needs node mode: add a `kubernetes:` section, or give \
                     the target an `address`"
                        .into(),
                )),
                None => Ok(()),
            };
        };
        if let Some(index) = self.targets.iter().position(|t| t.name == AWAIT_TARGET) {
            return Err(invalid(
                format!("targets[{index}].name"),
                format!(
                    "`{AWAIT_TARGET}` is the gateway's own target in node mode; rename this one"
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (index, selection) in kubernetes.selections.iter().enumerate() {
            if !names.insert(&selection.name) {
                return Err(invalid(
                    format!("kubernetes.selections[{index}].name"),
                    format!("duplicate selection name `{}`", selection.name),
                ));
            }
            if selection.targets.is_empty() {
                return Err(invalid(
                    format!("kubernetes.selections[{index}].targets"),
                    "a selection intercepts pods for the targets it names: name at least one"
                        .into(),
                ));
            }
            for name in &selection.targets {
                if !self.targets.iter().any(|t| &t.name == name) {
                    let known: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
                    return Err(invalid(
                        format!("kubernetes.selections[{index}].targets"),
                        format!(
                            "selection `{}` names target `{name}`, which is not in `targets` \
                             (known: {})",
                            selection.name,
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What is allowed but probably not meant, with the reason: `check-config` prints these
    /// and the gateway logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let addressed = || self.targets.iter().filter_map(|t| Some((t, t.address?)));
        for (exact, exact_address) in addressed().filter(|(_, a)| a.port() != 0) {
            let covering = addressed().find(|(_, whole)| {
                whole.port() == 0 && same_listener_host(whole.ip(), exact_address.ip())
            });
            if let Some((whole, whole_address)) = covering {
                warnings.push(format!(
                    "target `{}` ({}) lies inside `{}` ({}): port {} goes to `{}` (its protocol and \
                     masking), every other port to `{}`",
                    exact.name,
                    exact_address,
                    whole.name,
                    whole_address.ip(),
                    exact_address.port(),
                    exact.name,
                    whole.name
                ));
            }
        }
        warnings
    }

    /// Targets that cannot mean what they say.
    fn check_targets(&self) -> Result<(), ConfigError> {
        let own = [
            ("listen", Some(self.listen)),
            ("listen_v6", self.listen_v6),
            ("admin", Some(self.admin)),
        ];
        for (index, target) in self.targets.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                file: None,
                location: None,
                key: Some(format!("targets[{index}].{field}")),
                message,
            };
            for (key, addr) in own.iter().filter_map(|(k, a)| Some((k, (*a)?))) {
                // A whole-host target leaves the gateway's own ports alone (ebpf::target_keys).
                if let Some(address) = target.address
                    && address.port() == addr.port()
                    && same_listener_host(address.ip(), addr.ip())
                {
                    return Err(invalid(
                        "address",
                        format!(
                            "target `{}` ({}) is the gateway's own `{key}` ({addr}) on this \
                             host: its traffic would be sent back to the gateway; give the \
                             service's address, or move `{key}`",
                            target.name,
                            target.destination()
                        ),
                    ));
                }
            }
            if target.protocol == Protocol::Tcp && target.mask.is_some() {
                return Err(invalid(
                    "mask",
                    format!(
                        "target `{}` is tcp, whose bytes are relayed unchanged: `mask` applies \
                         to http and mcp targets; remove it or set `protocol`",
                        target.name
                    ),
                ));
            }
            if target.protocol != Protocol::Kubernetes && target.upstream_ca.is_some() {
                return Err(invalid(
                    "upstream_ca",
                    format!(
                        "target `{}` is {}: `upstream_ca` verifies the API server of a \
                         kubernetes target; remove it or set `protocol: kubernetes`",
                        target.name, target.protocol
                    ),
                ));
            }
        }
        Ok(())
    }

    fn deserialize(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            let key = (key != ".").then_some(key);
            let mut message = strip_location(&inner.to_string());
            // serde_yaml_ng prefixes its own (shorter) path; the key is reported separately.
            if let (Some(key), Some((prefix, rest))) = (&key, message.split_once(": "))
                && key.starts_with(prefix)
            {
                message = rest.to_string();
            }
            ConfigError::Invalid {
                file: None,
                location: location.map(|l| refine_location(text, l, key.as_deref())),
                key,
                message,
            }
        })
    }

    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| self.kubernetes.as_ref()?.node_name())
            .or_else(|| std::env::var("NODE_NAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `source`: the message already says it, and `{:#}` would print it twice.
    #[error("cannot read config file {}: {error}; check the path passed to --config", file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{}", describe_invalid(file.as_deref(), *location, key.as_deref(), message))]
    Invalid {
        file: Option<PathBuf>,
        location: Option<(usize, usize)>,
        key: Option<String>,
        message: String,
    },
}

impl ConfigError {
    fn in_file(self, path: &Path) -> Self {
        match self {
            ConfigError::Invalid {
                location,
                key,
                message,
                ..
            } => ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                location,
                key,
                message,
            },
            other => other,
        }
    }
}

fn describe_invalid(
    file: Option<&Path>,
    location: Option<(usize, usize)>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = file
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "<config>".into());
    if let Some((line, column)) = location {
        out.push_str(&format!(":{line}:{column}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(": key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

/// Errors raised while deserializing a value (a bad address, say) are reported by
/// serde_yaml_ng at the start of the enclosing mapping. Move them to the key's own line when
/// it can be found inside that mapping.
fn refine_location(
    text: &str,
    (line, column): (usize, usize),
    key: Option<&str>,
) -> (usize, usize) {
    let Some(field) = key
        .and_then(|k| k.rsplit('.').next())
        .filter(|f| !f.ends_with(']'))
    else {
        return (line, column);
    };
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
    let Some(first) = lines.get(line.saturating_sub(1)) else {
        return (line, column);
    };
    let base = indent(first);
    for (i, l) in lines.iter().enumerate().skip(line.saturating_sub(1)) {
        if i + 1 > line && !l.trim().is_empty() && indent(l) < base {
            break;
        }
        let body = l.trim_start_matches([' ', '-']);
        if body
            .strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
        {
            return (i + 1, indent(l) + 1);
        }
    }
    (line, column)
}

/// serde_yaml_ng appends " at line L column C"; the location is reported separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Whether a listener on `a` may be the one on `b`: the same address, or both on this host's
/// loopback or wildcard (a listener there is reached through all of them).
fn same_listener_host(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(a), canonical(b));
    let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    a == b || (local(a) && local(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::config::WhenFull;

    fn error_of(yaml: &str) -> String {
        Config::parse(yaml)
            .expect_err("config must be rejected")
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("targets: []\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(c.admin, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(c.fail_mode, FailMode::Open);
        assert_eq!(c.recording.dir, PathBuf::from("./interlock-records"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interlock.yaml");
        std::fs::write(
            &path,
            "interception_ca: { key: ./ca.key }\nkubernetes: { kubeconfig: kube/config, selections: [] }\n\
             targets:\n  - name: kube\n    address: 127.0.0.1:6443\n    protocol: kubernetes\n    upstream_ca: cluster.crt\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let kubeconfig = c.kubernetes.as_ref().and_then(|k| k.kubeconfig.clone());
        assert_eq!(c.interception_ca.key, dir.path().join("./ca.key"));
        assert_eq!(kubeconfig, Some(dir.path().join("kube/config")));
        assert_eq!(
            c.targets[0].upstream_ca,
            Some(dir.path().join("cluster.crt"))
        );
        assert_eq!(c.recording.dir, dir.path().join("./interlock-records"));
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            "listen: 127.0.0.1:15001\nadmin: 127.0.0.1:15000\nfail_mode: closed\ntargets:\n  - name: demo\n    address: 127.0.0.1:8080\n    protocol: tcp\n  - name: v6\n    address: \"[::1]:8080\"\nrecording:\n  dir: ./records\n",
        )
        .unwrap();
        assert_eq!(c.fail_mode, FailMode::Closed);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[1].address, Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = error_of("listen: 127.0.0.1:1\nlisten_adress: 1\n");
        assert!(e.contains(":2:"), "{e}");
        assert!(e.contains("unknown field `listen_adress`"), "{e}");
    }

    #[test]
    fn bad_address_names_key_and_fix() {
        let e = error_of("targets:\n  - name: a\n    address: localhost:80\n");
        assert!(e.contains("key `targets[0].address`"), "{e}");
        assert!(e.contains(":3:5:"), "{e}");
        assert!(e.contains("literal IP"), "{e}");
        assert!(!e.contains(": targets[0]:"), "no repeated path: {e}");
    }

    #[test]
    fn targets_on_the_gateways_own_listeners_and_mask_on_tcp_are_refused() {
        let own = error_of(
            "listen: 127.0.0.1:15001\ntargets:\n  - { name: loop, address: \"[::1]:15001\" }\n",
        );
        assert!(own.contains("key `targets[0].address`"), "{own}");
        assert!(
            own.contains("is the gateway's own `listen` (127.0.0.1:15001)"),
            "{own}"
        );
        let admin = error_of(
            "admin: 127.0.0.1:9000\ntargets:\n  - { name: api, address: \"[::1]:9000\" }\n",
        );
        assert!(admin.contains("is the gateway's own `admin`"), "{admin}");
        let mask = error_of("targets:\n  - { name: db, address: \"10.0.0.5:5432\", mask: both }\n");
        assert!(
            mask.contains("key `targets[0].mask`") && mask.contains("applies to http and mcp"),
            "{mask}"
        );
        Config::parse(
            "targets:\n  - { name: web, address: \"10.0.0.5:80\", protocol: http, mask: both }\n",
        )
        .unwrap();
    }

    #[test]
    fn a_port_inside_a_whole_host_target_is_a_warning_that_says_who_wins() {
        let c = Config::parse(
            "targets:\n  - { name: any, address: \"127.0.0.1:*\" }\n  - { name: exact, address: \"[::1]:80\" }\n  \
             - { name: elsewhere, address: \"10.0.0.5:80\" }\n",
        )
        .unwrap();
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(
                "`exact` ([::1]:80) lies inside `any` (127.0.0.1): port 80 goes to `exact`"
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn node_mode_selections_name_known_targets_and_service_targets_need_node_mode() {
        let node = "kubernetes:\n  selections:\n    - name: agents\n      pods: {matchLabels: {app: agent}}\n      targets: [api]\n";
        let c = Config::parse(&format!(
            "targets:\n  - name: api\n    service: default/kubernetes\n    port: 443\n{node}"
        ))
        .unwrap();
        let service = c.targets[0].service.as_ref().unwrap();
        assert_eq!(
            (service.namespace.as_str(), service.name.as_str()),
            ("default", "kubernetes")
        );
        assert_eq!(
            c.targets[0].destination(),
            "service default/kubernetes port 443"
        );
        assert_eq!(c.kubernetes.unwrap().selections[0].targets, ["api"]);

        let e =
            error_of("targets:\n  - name: api\n    service: default/kubernetes\n    port: 443\n");
        assert!(e.contains("a service target needs node mode"), "{e}");
        let e = error_of(&format!(
            "targets:\n  - name: other\n    address: 10.0.0.1:80\n{node}"
        ));
        assert!(
            e.contains("names target `api`, which is not in `targets` (known: other)"),
            "{e}"
        );
        let e = error_of("targets:\n  - name: api\n    service: default/kubernetes\n");
        assert!(e.contains("names a service but no `port`"), "{e}");
        let e = error_of("targets:\n  - name: api\n    service: kubernetes\n    port: 443\n");
        assert!(e.contains("is not NAMESPACE/NAME"), "{e}");
        let e = error_of("targets:\n  - name: api\n");
        assert!(e.contains("needs either `address` or `service`"), "{e}");
        let e = error_of(&format!(
            "targets:\n  - name: api\n    address: 10.0.0.1:80\n{}",
            node.replace("matchLabels", "matchLabel")
        ));
        assert!(e.contains("unknown field `matchLabel`"), "{e}");
    }

    #[test]
    fn duplicate_target_names_and_addresses() {
        let e = error_of(
            "targets:\n  - name: a\n    address: 127.0.0.1:1\n  - name: a\n    address: 127.0.0.1:2\n",
        );
        assert!(e.contains("duplicate target name `a`"), "{e}");
        assert!(e.contains("targets[1]"), "{e}");
        let e = error_of(
            "targets:\n  - name: a\n    address: 127.0.0.1:1\n  - name: b\n    address: 127.0.0.1:1\n",
        );
        assert!(e.contains("duplicate target address"), "{e}");
    }

    #[test]
    fn workers_default_to_one_per_cpu_and_zero_is_refused() {
        assert_eq!(Config::parse("targets: []\n").unwrap().workers, None);
        let c = Config::parse("workers: 3\n").unwrap();
        assert_eq!(c.workers.map(|n| n.get()), Some(3));
        let e = error_of("workers: 0\n");
        assert!(e.contains("key `workers`"), "{e}");
        assert!(e.contains("at least 1, or null for one per CPU"), "{e}");
    }

    #[test]
    fn malformed_yaml_has_location() {
        let e = error_of("targets: [\n  - name: a\n");
        assert!(e.starts_with("<config>:"), "{e}");
        assert!(e.chars().filter(|c| *c == ':').count() >= 2, "{e}");
    }

    #[test]
    fn upstream_ca_belongs_to_kubernetes_targets() {
        let c = Config::parse(
            "targets:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: kubernetes\n    \
             upstream_ca: /etc/ca.crt\n",
        )
        .unwrap();
        assert_eq!(c.targets[0].protocol, Protocol::Kubernetes);
        let e = error_of(
            "targets:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: http\n    \
             upstream_ca: /etc/ca.crt\n",
        );
        assert!(e.contains("`upstream_ca` verifies the API server"), "{e}");
    }

    #[test]
    fn policy_is_validated_with_the_config() {
        let e = error_of(
            "policy:\n  rules:\n    - name: x\n      match: { tool: \"re:(\" }\n      action: deny\n",
        );
        assert!(e.contains("key `policy.rules[0].match.tool`"), "{e}");
        assert!(error_of("policy:\n  default: maybe\n").contains("unknown variant"));
    }

    #[test]
    fn recording_section_with_spool_and_kinesis() {
        let c = Config::parse(
            "recording:\n  dir: /var/lib/interlock\n  spool: { max_bytes: 10GiB, when_full: fail_open }\n  kinesis: { stream: s, region: us-east-1, endpoint: \"http://127.0.0.1:4567\" }\n  signing_key: /etc/interlock/signing.key\n",
        )
        .unwrap();
        assert_eq!(c.recording.spool.max_bytes, 10 << 30);
        assert_eq!(c.recording.spool.when_full, WhenFull::FailOpen);
        assert_eq!(
            c.recording.kinesis.as_ref().unwrap().max_record_bytes,
            1 << 20
        );
        assert!(
            !c.recording.signing_key_path().1,
            "a configured key is never generated"
        );
        assert!(error_of("recording:\n  spool: { max_bytes: lots }\n").contains("not a size"));
    }

    #[test]
    fn whole_host_targets_are_written_ip_star() {
        let c = Config::parse("targets:\n  - name: any\n    address: \"10.0.0.5:*\"\n").unwrap();
        assert_eq!(c.targets[0].address, Some("10.0.0.5:0".parse().unwrap()));
        assert!(error_of("targets:\n  - name: a\n    address: \"localhost:*\"\n").contains("ip:*"));
    }

    #[test]
    fn bad_duration_and_fail_mode() {
        assert!(error_of("drain_timeout: soon\n").contains("not a duration"));
        assert!(error_of("fail_mode: maybe\n").contains("key `fail_mode`"));
    }

    #[test]
    fn trusted_issuers_and_token_requirements_are_checked() {
        let target = "targets:\n  - name: mcp\n    address: 127.0.0.1:9000\n    protocol: mcp\n    require_oidc_token: true\n";
        let e = error_of(target);
        assert!(e.contains("no OIDC issuer is trusted"), "{e}");
        let issuer = |url: &str, audiences: &str| {
            format!(
                "identity:\n  oidc:\n    - issuer: {url}\n      audiences: {audiences}\n{target}"
            )
        };
        let c = Config::parse(&issuer("https://idp.example", "[mcp]")).unwrap();
        assert_eq!(c.identity.oidc[0].groups_claim, "groups");
        let e = error_of(&issuer("http://idp.example", "[mcp]"));
        assert!(e.contains("must be an https URL"), "{e}");
        let e = error_of(&issuer("https://idp.example", "[]"));
        assert!(e.contains("name the audience"), "{e}");
        let both = issuer("https://idp.example", "[mcp]") + "    require_bound_token: true\n";
        let e = error_of(&both);
        assert!(e.contains("not both"), "{e}");
    }
}
