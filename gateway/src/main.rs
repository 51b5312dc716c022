//! The `interlock` CLI.
use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use interlock::{
    commands::{self, sessions::Source},
    config::Config,
    ebpf, telemetry,
};

#[derive(Parser)]
#[command(
    name = "interlock",
    version,
    about = "Transparent, recording, eBPF-redirected gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node gateway in the foreground.
    Run {
        #[arg(long, env = "INTERLOCK_CONFIG")]
        config: PathBuf,
    },
    /// Run a command in a new cgroup intercepted by the running gateway (root only).
    Wrap {
        #[arg(long, env = "INTERLOCK_CONFIG")]
        config: PathBuf,
        /// For commands that enter another network namespace: the node's address on the
        /// host side of that namespace's link, where the proxy is reached.
        #[arg(long)]
        pod_proxy: Option<IpAddr>,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// In a pod's first init container: wait until this pod is intercepted (node mode).
    #[command(name = "await")]
    Await {
        /// The gateway's reserved await address (kubernetes.await_address).
        #[arg(long, default_value_t = interlock::kubernetes::config::DEFAULT_AWAIT_ADDRESS)]
        address: std::net::SocketAddr,
        /// Give up, and fail the pod's start, after this long.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Validate a config file.
    CheckConfig { file: PathBuf },
    /// Print the CA bundle pods must trust for the API server: the cluster CA, then the
    /// interception CA (generating its key if absent).
    CaBundle {
        #[arg(long, env = "INTERLOCK_CONFIG")]
        config: PathBuf,
        /// The cluster's CA certificate (PEM).
        #[arg(long, default_value = interlock::interception_ca::IN_CLUSTER_CA)]
        cluster_ca: PathBuf,
    },
    /// Make the record-signing key and the interception CA key for a cluster install, as
    /// files and as the Secret manifests the DaemonSet mounts.
    Init {
        /// A new directory for the keys and secrets.yaml.
        #[arg(long, default_value = "interlock-keys")]
        out: PathBuf,
        /// The namespace the Secrets go in (the DaemonSet's).
        #[arg(long, default_value = "interlock")]
        namespace: String,
    },
    /// List the built-in secret detectors (names for `masking.disable`).
    Detectors,
    /// Recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCmd,
    },
    /// Print one session's records in order.
    Replay {
        session_id: String,
        /// SESSION_ID is an MCP session id (Mcp-Session-Id): show that conversation.
        #[arg(long, conflicts_with = "asciicast")]
        mcp: bool,
        /// Write the session's kubectl exec or attach stream as asciicast v2 (asciinema).
        #[arg(long, conflicts_with = "json")]
        asciicast: bool,
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "file")]
        from: Source,
        #[arg(long)]
        json: bool,
    },
    /// Check sessions for tampering, missing records and missing seals; exits 1 on any problem.
    Verify {
        session_id: Option<String>,
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "file")]
        from: Source,
        /// Verify with this PEM public key instead of the config's signing key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stream records from Kinesis as JSON lines (a SIEM consumer example).
    Tail {
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long, value_enum)]
        from: Source,
        /// Start at the newest records instead of the oldest.
        #[arg(long)]
        latest: bool,
    },
    /// Pending approval holds: list them, approve or deny one (needs an approver's ID token).
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCmd,
        /// The gateway's admin address (host:port or URL); by default the config's `admin`.
        #[arg(long, global = true)]
        admin: Option<String>,
        #[arg(
            long,
            global = true,
            env = "INTERLOCK_CONFIG",
            default_value = "interlock.yaml"
        )]
        config: PathBuf,
        /// File holding your OIDC ID token; otherwise INTERLOCK_APPROVER_TOKEN.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
    },
    /// Serve the approval API for the whole cluster: list every node's InterlockHolds and
    /// write signed decisions (deploy/base/approvals-service.yaml runs it).
    ApprovalsService {
        #[arg(long, env = "INTERLOCK_APPROVALS_CONFIG")]
        config: PathBuf,
    },
    /// Remove programs and maps that a `fail_mode: closed` gateway left pinned.
    Detach {
        #[arg(long, env = "INTERLOCK_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Pending holds: who, what (masked arguments), when, and the rule.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Let a held request through, unchanged.
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Refuse a held request; the client gets a JSON-RPC error with the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum SessionsCmd {
    List {
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "file")]
        from: Source,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Run { .. } | Cmd::Wrap { .. }) {
        // A reader that stops early (`| head`) ends the command quietly, as for any Unix
        // tool. The gateway and wrap keep Rust's default (ignored, EPIPE), which sockets need.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    telemetry::init_logging();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> anyhow::Result<i32> {
    match command {
        Cmd::Run { config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::run::run(&config))?;
        }
        Cmd::Wrap {
            config,
            pod_proxy,
            command,
        } => {
            let config = Config::load(&config)?;
            return commands::wrap::wrap(&config.control_socket, pod_proxy, &command);
        }
        Cmd::Detectors => {
            let masker =
                interlock::masking::Masker::new(&Default::default()).map_err(anyhow::Error::msg)?;
            for name in masker.detector_names() {
                println!("{name}");
            }
        }
        Cmd::Await { address, timeout } => {
            commands::await_interception::await_interception(address, timeout)?;
        }
        Cmd::CaBundle { config, cluster_ca } => {
            print!(
                "{}",
                commands::ca_bundle::ca_bundle(&Config::load(&config)?, &cluster_ca)?
            );
        }
        Cmd::Init { out, namespace } => {
            for path in commands::init::init(&out, &namespace)? {
                println!("{}", path.display());
            }
            eprintln!("{}", commands::init::CUSTODY);
        }
        Cmd::CheckConfig { file } => {
            let config = Config::load(&file)?;
            for warning in config.warnings() {
                eprintln!("warning: {}: {warning}", file.display());
            }
            println!("{}: ok ({} targets)", file.display(), config.targets.len());
        }
        Cmd::Sessions {
            command: SessionsCmd::List { config, from, json },
        } => {
            commands::sessions::list(&Config::load(&config)?, from, json)?;
        }
        Cmd::Replay {
            session_id,
            mcp,
            asciicast,
            config,
            from,
            json,
        } => {
            use commands::sessions::ReplayForm;
            let form = match (asciicast, json) {
                (true, _) => ReplayForm::Asciicast,
                (_, true) => ReplayForm::Json,
                _ => ReplayForm::Text,
            };
            commands::sessions::replay(&Config::load(&config)?, from, &session_id, mcp, form)?;
        }
        Cmd::Verify {
            session_id,
            config,
            from,
            public_key,
            json,
        } => {
            let config = Config::load(&config)?;
            let intact = commands::sessions::verify(
                &config,
                from,
                session_id.as_deref(),
                public_key.as_deref(),
                json,
            )?;
            return Ok(if intact { 0 } else { 1 });
        }
        Cmd::Tail {
            config,
            from,
            latest,
        } => {
            if from != Source::Kinesis {
                anyhow::bail!("tail reads the stream: use --from kinesis");
            }
            commands::sessions::tail(&Config::load(&config)?, latest)?;
        }
        Cmd::Approvals {
            command,
            admin,
            config,
            token_file,
        } => {
            let admin = match admin {
                Some(admin) => admin,
                None => Config::load(&config)
                    .context("pass --admin HOST:PORT, or --config with the gateway's config")?
                    .admin
                    .to_string(),
            };
            let client = commands::approvals::ApiClient::new(&admin, token_file.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                match command {
                    ApprovalsCmd::List { json } => {
                        let holds = client.list().await?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&holds)?);
                        } else {
                            commands::approvals::print_holds(&holds);
                        }
                    }
                    ApprovalsCmd::Approve { id, reason } => {
                        client.decide(&id, true, &reason).await?;
                        println!("approved {id}");
                    }
                    ApprovalsCmd::Deny { id, reason } => {
                        client.decide(&id, false, &reason).await?;
                        println!("denied {id}");
                    }
                }
                anyhow::Ok(())
            })?;
        }
        Cmd::ApprovalsService { config } => {
            let config = commands::approvals_service::ServiceConfig::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(commands::approvals_service::serve(config))?;
        }
        Cmd::Detach { config } => ebpf::detach_pinned(&Config::load(&config)?.bpffs_dir)?,
    }
    Ok(0)
}
