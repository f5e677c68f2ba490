//! The server: one axum router on the listen address with the WebSocket endpoint
//! (`GET /`), `GET /healthz`, `GET /metrics` and the link probes (`GET` and `POST
//! /probe`; these and the health report are readable from any origin, for the browser
//! SDK); the connection limit; start-up (reloading saved workers, joining the cloud) and
//! graceful shutdown (Goodbye to every session, every worker captured and saved).

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use roam_proto::{ModuleHash, NodeRole};
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
    /// How fast this node runs wasm relative to the reference core (its calibration), as
    /// `f32` bits: measured again every [`RECALIBRATE_EVERY`] unless set by hand, so a
    /// node that gets crowded reports it.
    speed: std::sync::atomic::AtomicU32,
    connections: Arc<Semaphore>,
}

/// How often a node that calibrated itself measures its speed again (one run of the loop,
/// about 34 ms of one core on the reference machine).
const RECALIBRATE_EVERY: Duration = Duration::from_secs(10);

impl Node {
    /// How fast this node runs wasm relative to the reference core, as last measured.
    pub fn speed(&self) -> f32 {
        f32::from_bits(self.speed.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Measures the node's speed again every [`RECALIBRATE_EVERY`] until it stops.
async fn recalibrate(node: Arc<Node>, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = until_stopped(&mut stopping) => return,
            () = tokio::time::sleep(RECALIBRATE_EVERY) => {}
        }
        if let Ok(Ok(calibration)) =
            tokio::task::spawn_blocking(|| roam_runtime::calibrate(1)).await
        {
            let speed = calibration.speed as f32;
            tracing::debug!(speed, "calibrated again");
            node.speed
                .store(speed.to_bits(), std::sync::atomic::Ordering::Relaxed);
        }
    }
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

    let measured = config.speed.is_none();
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
        speed: std::sync::atomic::AtomicU32::new(speed.to_bits()),
        connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
        chunks: ChunkStore::new(config.chunk_store_bytes),
        config,
        hosting,
        cache,
        metrics,
        registry: Registry::default(),
        shutdown: stopping.clone(),
    });
    if measured {
        tokio::spawn(recalibrate(node.clone(), stopping.clone()));
    }
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
        .route("/modules/{hash}", get(module_held))
        .route(
            "/probe",
            get(probe_down).post(probe_up).options(probe_preflight),
        )
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

/// Lets a page on another origin read the answer: a browser SDK probes the nodes it could
/// move a worker to with `fetch`, and nothing a probe or the health report says is
/// private to one origin.
const ANY_ORIGIN: (header::HeaderName, &str) = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");

/// Lets that page see the request's phases in Resource Timing (sent, first byte, end), so
/// it times the link as the network stack saw it rather than as its busy thread did.
const TIMING_ANY_ORIGIN: (header::HeaderName, &str) =
    (header::HeaderName::from_static("timing-allow-origin"), "*");

/// `OPTIONS /probe`: the preflight of a page's `POST /probe` whose body type is not one a
/// browser sends without asking (the SDK sends `text/plain`, which needs none).
async fn probe_preflight() -> Response {
    (
        [
            ANY_ORIGIN,
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
        axum::http::StatusCode::NO_CONTENT,
    )
        .into_response()
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
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            ANY_ORIGIN,
            TIMING_ANY_ORIGIN,
        ],
        vec![0u8; bytes],
    )
        .into_response()
}

/// `POST /probe`: takes the body (at most 1 MiB) and answers its length, for a client to
/// time its uplink.
async fn probe_up(body: axum::body::Bytes) -> Response {
    ([ANY_ORIGIN, TIMING_ANY_ORIGIN], format!("{}\n", body.len())).into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    let node = &app.node;
    let body = serde_json::json!({
        "status": "ok",
        "role": node.config.role.to_string(),
        "node_id": node.config.name,
        "url": node.config.public_url,
        "workers": node.hosting.count(),
        "speed": node.speed(),
        "dev_mode": node.config.dev_mode(),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            ANY_ORIGIN,
            TIMING_ANY_ORIGIN,
        ],
        body.to_string(),
    )
        .into_response()
}

/// `GET /modules/<sha-256 hex>`: whether this node holds the module (then a worker of it
/// moves here without its module, and without compiling it). 200 or 404; 400 for a name
/// that is not a module's hash.
async fn module_held(
    State(app): State<App>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let mut hash: ModuleHash = [0; 32];
    if hex::decode_to_slice(&name, &mut hash).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            [ANY_ORIGIN],
            "a module is named by the 64 hex digits of its sha-256\n",
        )
            .into_response();
    }
    let held = app.node.cache.holds(&hash);
    let status = if held {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            ANY_ORIGIN,
            TIMING_ANY_ORIGIN,
        ],
        serde_json::json!({ "held": held }).to_string(),
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
