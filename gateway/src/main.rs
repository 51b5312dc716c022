//! The `interlock` CLI.
use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use interlock::{commands, config::Config, ebpf, telemetry};

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
    /// Validate a config file.
    CheckConfig { file: PathBuf },
    /// Recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCmd,
    },
    /// Print one session's records in order.
    Replay {
        session_id: String,
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove programs and maps that a `fail_mode: closed` gateway left pinned.
    Detach {
        #[arg(long, env = "INTERLOCK_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SessionsCmd {
    List {
        #[arg(long, env = "INTERLOCK_CONFIG", default_value = "interlock.yaml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Cmd::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: ok ({} targets)", file.display(), config.targets.len());
        }
        Cmd::Sessions {
            command: SessionsCmd::List { config, json },
        } => {
            commands::sessions::list(&Config::load(&config)?.recording.dir, json)?;
        }
        Cmd::Replay {
            session_id,
            config,
            json,
        } => {
            commands::sessions::replay(&Config::load(&config)?.recording.dir, &session_id, json)?;
        }
        Cmd::Detach { config } => ebpf::detach_pinned(&Config::load(&config)?.bpffs_dir)?,
    }
    Ok(0)
}
