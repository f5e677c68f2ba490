//! The server: one axum router on the listen address with the WebSocket endpoint
//! (`GET /`), `GET /healthz` and `GET /metrics`; the connection limit; start-up (reloading
//! saved workers, joining the cloud) and graceful shutdown (Goodbye to every session,
//! every worker captured and saved).

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use roam_proto::NodeRole;
use roam_runtime::{Runtime, RuntimeConfig, RuntimeError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::cache::ModuleCache;
use crate::chunks::ChunkStore;
use crate::config::NodeConfig;
use crate::hosting::Hosting;
use crate::link::socket_limit;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// the data directory {path} cannot be used: {source}
    #[error("the data directory {path} cannot be used: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// the worker runtime cannot start: {0}
    #[error("the worker runtime cannot start: {0}")]
    Runtime(#[from] RuntimeError),
    /// the server failed: {0}
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything the connections of one node share.
pub(crate) struct Node {
    pub config: NodeConfig,
    pub hosting: Arc<Hosting>,
    pub cache: ModuleCache,
    pub chunks: ChunkStore,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub shutdown: watch::Receiver<bool>,
    /// How fast this node runs wasm relative to the reference core (its calibration).
    pub speed: f32,
    connections: Arc<Semaphore>,
}

#[derive(Clone)]
struct App {
    node: Arc<Node>,
    /// Every session holds a clone; when all are dropped, every session has ended.
    alive: mpsc::Sender<()>,
}

/// Runs a node on `listener` until `shutdown` resolves, then shuts it down gracefully:
/// stops taking connections, says Goodbye to every session, lets every worker finish the
/// message it is handling, and saves every worker to `data_dir/workers` (reloaded at the
/// next start).
pub async fn run(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if config.dev_mode() {
        tracing::warn!(
            "no cluster key given: development mode. Move tokens are signed with a key anyone can read; give every node the same --cluster-key-file outside a demo"
        );
    }
    let dir = |name: &str| {
        let path = config.data_dir.join(name);
        std::fs::create_dir_all(&path)
            .map(|()| path.clone())
            .map_err(|source| ServeError::DataDir { path, source })
    };
    let modules_dir = dir("modules")?;
    let compiled_dir = dir("compiled")?;
    let workers_dir = dir("workers")?;
    let cache = ModuleCache::open(&modules_dir).map_err(|source| ServeError::DataDir {
        path: modules_dir.clone(),
        source,
    })?;
    // A worker's replies must fit in Reply frames: a worker that posts more per message
    // than a frame may carry fails here, as it would locally over its limit, rather than
    // sending a frame its client must refuse.
    let mut limits = config.limits.clone();
    limits.max_reply_bytes = limits
        .max_reply_bytes
        .min(config.frame_limits.max_payload as usize);
    let runtime = Runtime::new(RuntimeConfig {
        limits,
        cache_dir: Some(compiled_dir),
        ..RuntimeConfig::default()
    })?;
    let metrics = Arc::new(Metrics::default());
    let hosting = Arc::new(Hosting::new(runtime.clone(), metrics.clone()));

    let saved = {
        let (dir, runtime, cache) = (workers_dir.clone(), runtime.clone(), cache.clone());
        tokio::task::spawn_blocking(move || crate::persist::load_all(&dir, &runtime, &cache))
            .await
            .unwrap_or_default()
    };
    for saved in saved {
        match hosting
            .adopt(
                saved.worker,
                saved.owner,
                saved.module,
                saved.snapshot,
                None,
            )
            .await
        {
            Ok((last_seq, _)) => {
                tracing::info!(worker = %format!("{:032x}", saved.worker), last_seq, "reloaded a saved worker");
                let _ = std::fs::remove_file(&saved.file);
            }
            Err(e) => {
                tracing::warn!(file = %saved.file.display(), "cannot restore a saved worker: {e}")
            }
        }
    }

    let speed = match config.speed {
        Some(speed) => speed,
        None => match tokio::task::spawn_blocking(|| roam_runtime::calibrate(3)).await {
            Ok(Ok(calibration)) => {
                tracing::info!(
                    speed = calibration.speed,
                    run_ms = calibration.run.as_secs_f64() * 1e3,
                    "calibrated"
                );
                calibration.speed as f32
            }
            Ok(Err(e)) => {
                tracing::warn!("{e}; registering speed 1");
                1.0
            }
            Err(e) => {
                tracing::warn!("cannot calibrate: {e}; registering speed 1");
                1.0
            }
        },
    };

    let (stop, stopping) = watch::channel(false);
    let node = Arc::new(Node {
        speed,
        connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
        chunks: ChunkStore::new(config.chunk_store_bytes),
        config,
        hosting,
        cache,
        metrics,
        registry: Registry::default(),
        shutdown: stopping.clone(),
    });
    if let (NodeRole::Edge, Some(cloud)) = (node.config.role, node.config.cloud.clone()) {
        tokio::spawn(crate::registry::keep_registered(
            node.clone(),
            cloud,
            stopping.clone(),
        ));
    }

    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    let router = Router::new()
        .route("/", get(websocket))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/probe", get(probe_down).post(probe_up))
        .with_state(App {
            node: node.clone(),
            alive,
        });
    let listener = listener.tap_io(|stream| {
        // Frames are small and latency matters more than packing them.
        let _ = stream.set_nodelay(true);
    });
    let mut server_stopping = stopping.clone();
    let server = tokio::spawn(
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { until_stopped(&mut server_stopping).await })
        .into_future(),
    );
    tracing::info!(role = %node.config.role, url = %node.config.public_url, "node running");

    tokio::pin!(shutdown);
    let mut server = server;
    let served = tokio::select! {
        () = &mut shutdown => None,
        result = &mut server => Some(result),
    };
    if let Some(result) = served {
        // The server stopped on its own: only an accept failure does that.
        let _ = stop.send(true);
        return match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Serve(e)),
            Err(e) => Err(ServeError::Serve(std::io::Error::other(e.to_string()))),
        };
    }
    tracing::info!("shutting down: saying goodbye to every session");
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(10), &mut server)
        .await
        .is_err()
    {
        tracing::warn!("the server did not stop within 10 s: stopping it");
        server.abort();
    }
    // The router (and its sender) went with the server: wait for the sessions.
    if tokio::time::timeout(Duration::from_secs(10), all_ended.recv())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after 10 s: saving the workers anyway");
    }

    save_workers(&node, &workers_dir).await;
    Ok(())
}

/// Captures every hosted worker (each finishes the message in progress first) and saves it.
async fn save_workers(node: &Node, dir: &std::path::Path) {
    for worker in node.hosting.ids() {
        match node.hosting.begin_move(worker).await {
            Ok(captured) => {
                match crate::persist::save(dir, &node.cache, worker, &captured) {
                    Ok(()) => tracing::info!(worker = %format!("{worker:032x}"), "saved"),
                    Err(e) => {
                        tracing::error!(worker = %format!("{worker:032x}"), "cannot save: {e}")
                    }
                }
                node.hosting.end_move(worker, true);
            }
            Err(e) => tracing::error!("cannot save a worker: {e}"),
        }
    }
}

/// Resolves once the node starts shutting down.
pub(crate) async fn until_stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns may not be held across an await: drop it here.
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}

async fn websocket(
    upgrade: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let limit = socket_limit(&app.node.config.frame_limits);
    let permit = app.node.connections.clone().try_acquire_owned().ok();
    let App { node, alive } = app;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            crate::session::serve(node, socket, peer, permit).await;
            drop(alive);
        })
}

/// Most bytes a link probe moves either way.
const MAX_PROBE_BYTES: usize = 1 << 20;

/// `GET /probe?bytes=N`: N bytes (at most 1 MiB) for a client to time its downlink.
async fn probe_down(
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(bytes) = query.get("bytes").and_then(|b| b.parse::<usize>().ok()) else {
        return (axum::http::StatusCode::BAD_REQUEST, "give ?bytes=N\n").into_response();
    };
    if bytes > MAX_PROBE_BYTES {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            format!("a probe moves at most {MAX_PROBE_BYTES} bytes\n"),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        vec![0u8; bytes],
    )
        .into_response()
}

/// `POST /probe`: takes the body (at most 1 MiB) and answers its length, for a client to
/// time its uplink.
async fn probe_up(body: axum::body::Bytes) -> Response {
    format!("{}\n", body.len()).into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    let node = &app.node;
    let body = serde_json::json!({
        "status": "ok",
        "role": node.config.role.to_string(),
        "node_id": node.config.name,
        "url": node.config.public_url,
        "workers": node.hosting.count(),
        "speed": node.speed,
        "dev_mode": node.config.dev_mode(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.node.metrics.render(),
    )
        .into_response()
}
