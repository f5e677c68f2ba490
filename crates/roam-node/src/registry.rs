//! The registry of nodes. The cloud keeps a table of the edges that registered with it,
//! refreshed by their heartbeats; an edge started with a cloud URL registers at start and
//! keeps a heartbeat, reconnecting with backoff whenever the cloud is away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roam_proto::{Event, Frame, NodeInfo, NodeRegistration};
use tokio::sync::watch;

use crate::link::{connect, Wire};
use crate::server::until_stopped;
use crate::server::Node;
use crate::transfer::now_unix_ms;

/// How often an edge tells the cloud it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// A node not heard from for this long is left out of the list.
const FORGET_AFTER_MS: u64 = 10_000;

/// The cloud's table of registered nodes, by node id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    nodes: Mutex<HashMap<String, NodeInfo>>,
}

impl Registry {
    /// Adds or replaces a node.
    pub(crate) fn register(&self, node: NodeRegistration) {
        let id = node.node_id.clone();
        let info = NodeInfo {
            node,
            last_seen_ms: now_unix_ms(),
        };
        self.nodes.lock().expect("registry").insert(id, info);
    }

    /// Refreshes a registered node's load.
    pub(crate) fn heartbeat(&self, node_id: &str, workers: u32, free_memory: u64) {
        if let Some(info) = self.nodes.lock().expect("registry").get_mut(node_id) {
            info.node.workers = workers;
            info.node.free_memory = free_memory;
            info.last_seen_ms = now_unix_ms();
        }
    }

    /// The nodes heard from recently; the others are forgotten.
    pub(crate) fn list(&self) -> Vec<NodeInfo> {
        let now = now_unix_ms();
        let mut nodes = self.nodes.lock().expect("registry");
        nodes.retain(|_, info| now.saturating_sub(info.last_seen_ms) < FORGET_AFTER_MS);
        let mut list: Vec<NodeInfo> = nodes.values().cloned().collect();
        list.sort_by(|a, b| a.node.node_id.cmp(&b.node.node_id));
        list
    }
}

/// Bytes of memory still available, from `/proc/meminfo` (0 where there is none).
pub(crate) fn free_memory() -> u64 {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// What this node says about itself when it registers.
fn registration(node: &Node) -> NodeRegistration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    NodeRegistration {
        node_id: node.config.name.clone(),
        url: node.config.public_url.clone(),
        role: node.config.role,
        cores: cores.min(u16::MAX as usize) as u16,
        speed: node.speed(),
        free_memory: free_memory(),
        workers: node.hosting.count() as u32,
        location: node.config.location.clone(),
    }
}

/// Keeps this edge registered with the cloud at `cloud` until shutdown: registers, sends
/// a heartbeat every 2 s, and reconnects with backoff when the cloud is away.
pub(crate) async fn keep_registered(
    node: Arc<Node>,
    cloud: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let session = stay_registered(&node, &cloud);
        tokio::select! {
            result = session => {
                match result {
                    Ok(()) => tracing::info!(%cloud, "the cloud closed the registry connection"),
                    Err(e) => tracing::warn!(%cloud, "cannot stay registered with the cloud: {e}"),
                }
            }
            () = until_stopped(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = until_stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One registry connection: Register, then heartbeats, until it fails.
async fn stay_registered(node: &Node, cloud: &str) -> Result<(), String> {
    let mut link = connect(cloud, &node.config, node.metrics.clone())
        .await
        .map_err(|e| e.to_string())?;
    link.send(Frame::Register(registration(node)))
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%cloud, "registered with the cloud");
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                link.send(Frame::Heartbeat {
                    workers: node.hosting.count() as u32,
                    free_memory: free_memory(),
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            received = link.wire.receive() => {
                let Some(frame) = link.decode(received).await.map_err(|e| e.to_string())? else {
                    continue;
                };
                match link.machine.on_frame(&frame) {
                    Ok(Event::Ping { nonce }) => {
                        link.send(Frame::Pong { nonce }).await.map_err(|e| e.to_string())?;
                    }
                    Ok(Event::PeerError { code, message, .. }) => {
                        return Err(format!("the cloud refused ({code}): {message}"));
                    }
                    Ok(Event::Goodbye { .. }) => return Ok(()),
                    Ok(_) => {}
                    Err(refusal) => {
                        let _ = link.refuse(&refusal).await;
                    }
                }
                if link.machine.is_closed() {
                    return Ok(());
                }
            }
        }
    }
}
