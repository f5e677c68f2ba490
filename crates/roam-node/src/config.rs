//! How a node is set up: its role, where it is reached, where it keeps its files, the key
//! it shares with the other nodes of its cluster, and the caps it enforces.

use std::collections::BTreeMap;
use std::path::PathBuf;

use roam_proto::FrameLimits;
use roam_runtime::WorkerLimits;

use crate::chunks::DEFAULT_CHUNK_STORE_BYTES;
use crate::precopy::PrecopySettings;

pub use roam_proto::NodeRole;

/// The cluster key a node uses when it was given none: development mode.
///
/// Tokens are still issued and checked with it, so a forged token is still refused, but
/// anyone who reads this source can sign one: never run a reachable node without a key.
pub const DEV_CLUSTER_KEY: &[u8] = b"roam development cluster key: not a secret";

/// Everything [`run`](crate::run) needs to know about the node it runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Edge or cloud.
    pub role: NodeRole,
    /// The `ws://host:port` URL clients and other nodes reach this node at. Move tokens
    /// name it as their destination, so it must be the URL the other nodes use.
    pub public_url: String,
    /// The cloud's URL, for an edge that registers with it.
    pub cloud: Option<String>,
    /// Where the module cache, the compiled modules and the saved workers live.
    pub data_dir: PathBuf,
    /// The key shared by every node of the cluster, to sign and verify move tokens;
    /// `None` runs in development mode with [`DEV_CLUSTER_KEY`].
    pub cluster_key: Option<Vec<u8>>,
    /// Limits every hosted worker runs under.
    pub limits: WorkerLimits,
    /// Caps on the frames this node accepts.
    pub frame_limits: FrameLimits,
    /// The node's name, unique in the cluster.
    pub name: String,
    /// Where the node is, free text a placement policy may match.
    pub location: String,
    /// Most connections served at once; more are refused with a Busy error.
    pub max_connections: usize,
    /// Most compressed bytes of chunk bodies kept for deltas (0 keeps none).
    pub chunk_store_bytes: usize,
    /// When pre-copy stops, for workers this node sends while they run.
    pub precopy: PrecopySettings,
    /// Dial routes: a node's URL → the URL this node connects to instead (a proxy, a
    /// tunnel, an emulated link). Only where the socket connects changes: the node is
    /// still named by its own URL in move tokens, `Moved` frames and the registry.
    pub routes: BTreeMap<String, String>,
    /// The speed this node registers with (relative to the reference core); `None`
    /// measures it at start ([`roam_runtime::calibrate`]).
    pub speed: Option<f32>,
}

impl NodeConfig {
    /// A configuration with default limits for a node of `role` reached at `public_url`
    /// and keeping its files in `data_dir`; no cloud, development mode.
    pub fn new(
        role: NodeRole,
        public_url: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        let public_url = public_url.into();
        NodeConfig {
            role,
            name: format!("{role}@{}", public_url.trim_start_matches("ws://")),
            public_url,
            cloud: None,
            data_dir: data_dir.into(),
            cluster_key: None,
            limits: WorkerLimits::default(),
            frame_limits: FrameLimits::default(),
            location: String::new(),
            max_connections: 1024,
            chunk_store_bytes: DEFAULT_CHUNK_STORE_BYTES,
            precopy: PrecopySettings::default(),
            routes: BTreeMap::new(),
            speed: None,
        }
    }

    /// Whether the node runs without a cluster key.
    pub fn dev_mode(&self) -> bool {
        self.cluster_key.is_none()
    }

    /// Where to connect to reach the node at `url`: its route, if it has one, else `url`.
    pub fn dial_url<'a>(&'a self, url: &'a str) -> &'a str {
        route(&self.routes, url)
    }

    /// The key move tokens are signed and verified with.
    pub fn token_key(&self) -> &[u8] {
        self.cluster_key.as_deref().unwrap_or(DEV_CLUSTER_KEY)
    }
}

/// The route for `url` in `routes` (a trailing `/` does not matter), or `url` itself.
fn route<'a>(routes: &'a BTreeMap<String, String>, url: &'a str) -> &'a str {
    let key = url.trim_end_matches('/');
    routes
        .iter()
        .find(|(from, _)| from.trim_end_matches('/') == key)
        .map_or(url, |(_, to)| to.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_changes_where_a_node_dials_not_what_it_is_called() {
        let mut config = NodeConfig::new(NodeRole::Edge, "ws://127.0.0.1:7001", "/tmp/x");
        config
            .routes
            .insert("ws://127.0.0.1:7002".into(), "ws://127.0.0.1:9002".into());
        assert_eq!(
            config.dial_url("ws://127.0.0.1:7002/"),
            "ws://127.0.0.1:9002"
        );
        assert_eq!(
            config.dial_url("ws://127.0.0.1:7003"),
            "ws://127.0.0.1:7003"
        );
        assert_eq!(config.public_url, "ws://127.0.0.1:7001");
    }
}
