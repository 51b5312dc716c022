//! The test Kubernetes API server (see `interlock_e2e::kube`), for the end-to-end tests and
//! the demo.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use interlock_e2e::kube::{KeyAlgorithm, Options, run};

#[derive(Parser)]
#[command(about = "A Kubernetes API server for tests: real wire protocol, objects in memory")]
struct Args {
    /// Address to serve on (port 0 picks one; kubeconfig names it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for ca.crt, ca.key, admin.token and kubeconfig (written last, once serving).
    /// A CA key and admin token already there are kept: a restart keeps its clients' trust.
    #[arg(long)]
    state_dir: PathBuf,
    /// YAML files of objects to start with.
    #[arg(long = "fixture")]
    fixtures: Vec<PathBuf>,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// The service-account token issuer (an EKS one looks like
    /// https://oidc.eks.REGION.amazonaws.com/id/ID).
    #[arg(long, default_value = "https://kubernetes.default.svc")]
    issuer: String,
    #[arg(long, value_enum, default_value = "RS256")]
    key_algorithm: KeyAlgorithm,
    /// The ClusterIP of the default/kubernetes Service.
    #[arg(long, default_value = "10.100.0.1")]
    service_ip: String,
    /// How often a watch that allows bookmarks gets one.
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    bookmark_interval: Duration,
    /// A user (`system:serviceaccount:NS:NAME`) allowed exec, attach and port-forward, as a
    /// RoleBinding would allow them; the admin always is.
    #[arg(long = "allow-connect")]
    allow_connect: Vec<String>,
    /// A user (`system:serviceaccount:NS:NAME`) allowed to create, update, patch and delete, as
    /// a RoleBinding would allow them; service accounts may only read otherwise.
    #[arg(long = "allow-write")]
    allow_write: Vec<String>,
    /// A service account (`system:serviceaccount:NS:NAME`) allowed to write status
    /// subresources; repeat for more.
    #[arg(long = "allow-status-write")]
    allow_status_write: Vec<String>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?}: expected seconds, like 5s or 0.5s"))?;
    Ok(Duration::from_secs_f64(seconds))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = Options {
        listen: args.listen,
        state_dir: args.state_dir,
        fixtures: args.fixtures,
        sans: args.sans,
        issuer: args.issuer,
        key_algorithm: args.key_algorithm,
        service_ip: args.service_ip,
        bookmark_interval: args.bookmark_interval,
        allow_connect: args.allow_connect,
        allow_write: args.allow_write,
        allow_status_write: args.allow_status_write,
    };
    if let Err(e) = run(options).await {
        eprintln!("kube-testserver: {e}");
        std::process::exit(1);
    }
}
