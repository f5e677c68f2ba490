//! `roam serve`: runs an edge or cloud node on one address (WebSocket, `/healthz`,
//! `/metrics`) until SIGTERM or SIGINT, then shuts it down gracefully, saving every
//! hosted worker to the data directory.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use roam_node::{NodeConfig, NodeRole, PostCopyUse};

/// What a node is for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An edge server near the devices: hosts offloaded workers, registers with a cloud.
    Edge,
    /// The cloud: hosts workers on fallback, relays state, keeps the registry of edges.
    Cloud,
}

impl From<Role> for NodeRole {
    fn from(role: Role) -> NodeRole {
        match role {
            Role::Edge => NodeRole::Edge,
            Role::Cloud => NodeRole::Cloud,
        }
    }
}

/// The options of `roam serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Edge or cloud.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Address to listen on, e.g. 127.0.0.1:7000 (port 0 picks a free port; the line
    /// printed on start says which).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The cloud's URL (ws://HOST:PORT): an edge registers there and keeps a heartbeat.
    #[arg(long, value_name = "URL")]
    pub cloud: Option<String>,
    /// Where the module cache, compiled modules and saved workers live (kept across
    /// restarts); a temporary directory when not given.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A file holding the key every node of the cluster shares, to sign and check move
    /// tokens. Without one the node runs in development mode.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// The node's name in the cluster (default: its role and address).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the node is, free text a placement policy may match.
    #[arg(long, value_name = "LABEL", default_value = "")]
    pub location: String,
    /// The URL other nodes and clients reach this node at (default: ws://ADDR as bound).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Pre-copy stops when the chunks changed since the last round would cross the link
    /// within this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub downtime_target_ms: u64,
    /// Most pre-copy rounds after the first; 0 moves workers stop-and-copy.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub precopy_rounds: u32,
    /// When a handoff sends the state changed during its pause post-copy (the destination
    /// runs the worker at once and fetches what it touches): auto, never or always.
    #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = parse_post_copy)]
    pub post_copy: PostCopyUse,
    /// MiB of chunk bodies kept so that transfers send only what this node lacks.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub chunk_store_mib: usize,
    /// Dial another node through a different URL (a proxy, a tunnel, an emulated link):
    /// `--route ws://B:7002=ws://127.0.0.1:9002`. Repeatable. The node is still named by
    /// its own URL; only where this node's connections to it go changes.
    #[arg(long = "route", value_name = "URL=URL", value_parser = parse_route)]
    pub routes: Vec<(String, String)>,
    /// The speed this node tells the cloud and clients (how many times the reference core
    /// it runs wasm); measured at start when not given.
    #[arg(long, value_name = "FACTOR", value_parser = parse_speed)]
    pub speed: Option<f32>,
}

/// Parses a speed factor: a finite number above zero.
fn parse_speed(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!("`{text}` is not a speed above zero")),
    }
}

/// Parses `FROM=TO`, two WebSocket URLs.
fn parse_route(text: &str) -> Result<(String, String), String> {
    let (from, to) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not URL=URL"))?;
    for url in [from, to] {
        if !url.starts_with("ws://") && !url.starts_with("wss://") {
            return Err(format!("`{url}` in `{text}` is not a ws:// URL"));
        }
    }
    Ok((from.to_string(), to.to_string()))
}

/// Reads a cluster key file: its bytes, without trailing whitespace (so `echo` works).
fn read_cluster_key(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut key = std::fs::read(path)
        .with_context(|| format!("cannot read the cluster key file {}", path.display()))?;
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    anyhow::ensure!(
        key.len() >= 16,
        "the cluster key in {} is shorter than 16 bytes",
        path.display()
    );
    Ok(key)
}

/// Runs `roam serve` until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cluster_key = args
        .cluster_key_file
        .as_ref()
        .map(read_cluster_key)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let role = NodeRole::from(args.role);
        let public_url = args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{addr}"));
        // The temporary directory lives as long as the node.
        let (data_dir, _temporary) = match &args.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::tempdir().context("cannot create a data directory")?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let mut config = NodeConfig::new(role, public_url, data_dir);
        config.cluster_key = cluster_key;
        config.cloud = args.cloud.clone();
        config.location = args.location.clone();
        config.precopy.downtime_target = std::time::Duration::from_millis(args.downtime_target_ms);
        config.precopy.max_rounds = args.precopy_rounds;
        config.precopy.post_copy = args.post_copy;
        config.chunk_store_bytes = args.chunk_store_mib << 20;
        config.speed = args.speed;
        config.routes = args.routes.iter().cloned().collect();
        if let Some(name) = &args.name {
            config.name = name.clone();
        }
        println!("roam node ({role}) listening on ws://{addr}");
        std::io::stdout().flush()?;
        roam_node::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_post_copy(text: &str) -> Result<PostCopyUse, String> {
    match text {
        "auto" => Ok(PostCopyUse::Auto),
        "never" => Ok(PostCopyUse::Never),
        "always" => Ok(PostCopyUse::Always),
        other => Err(format!("`{other}` is not one of auto, never, always")),
    }
}
