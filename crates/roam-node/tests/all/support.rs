//! A real node on 127.0.0.1 port 0, and a small test client that speaks the protocol
//! frame by frame, so tests can send exactly the bytes they mean — good or bad.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roam_node::{NodeConfig, NodeRole, ServeError};
use roam_proto::{
    ErrorCode, Frame, FrameLimits, MoveToken, PeerKind, WorkerId, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use roam_runtime::{Runtime, RuntimeConfig, Snapshot, Worker, WorkerModule};
use roam_snapshot::ChunkBody;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one answer.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The example workers, built by `cargo xtask build-workers`.
pub fn worker_wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("ROAM_WORKERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/workers"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask build-workers`)", path.display()))
}

/// A node running in this process.
pub struct TestNode {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    pub async fn start(role: NodeRole) -> TestNode {
        TestNode::start_with(role, None, |_| {}).await
    }

    /// Starts a node; `data_dir` keeps its files across restarts when given.
    pub async fn start_with(
        role: NodeRole,
        data_dir: Option<PathBuf>,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> TestNode {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("ws://{addr}");
        let (tmp, data_dir) = match data_dir {
            Some(dir) => (None, dir),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        let mut config = NodeConfig::new(role, url.clone(), data_dir);
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(roam_node::run(listener, config, async move {
            let _ = stopped.await;
        }));
        TestNode {
            url,
            addr,
            stop: Some(stop),
            task: Some(task),
            _tmp: tmp,
        }
    }

    /// Shuts the node down gracefully and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the node stops in time")
            .unwrap()
            .expect("the node stops cleanly");
    }

    /// `GET path` over plain HTTP/1.1: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A worker running in the test itself: the reference the node's results are compared
/// with, and the source of state to offload.
pub struct LocalWorker {
    pub id: WorkerId,
    pub secret: [u8; 32],
    pub runtime: Runtime,
    pub module: Arc<WorkerModule>,
    pub worker: Worker,
}

impl LocalWorker {
    /// A worker of `wasm` that has handled `messages` counter-style messages.
    pub fn start(wasm: &[u8], id: WorkerId, messages: u64) -> LocalWorker {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let module = runtime.load(wasm).unwrap();
        let worker = runtime.start(&module).unwrap();
        let mut local = LocalWorker {
            id,
            secret: [id as u8 ^ 0x5a; 32],
            runtime,
            module,
            worker,
        };
        for seq in 1..=messages {
            local.deliver(&message(seq));
        }
        local
    }

    pub fn counter(id: WorkerId, messages: u64) -> LocalWorker {
        LocalWorker::start(&worker_wasm("counter"), id, messages)
    }

    pub fn owner(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }

    pub fn deliver(&mut self, payload: &[u8]) -> Vec<Vec<u8>> {
        self.worker
            .deliver(payload)
            .unwrap()
            .map(|r| r.to_vec())
            .collect()
    }

    pub fn capture(&mut self) -> Snapshot {
        self.worker.capture().unwrap()
    }

    pub fn restore(&mut self, snapshot: &Snapshot) {
        self.worker = self.runtime.restore(&self.module, snapshot).unwrap();
    }
}

/// The payload of message `seq` in these tests.
pub fn message(seq: u64) -> Vec<u8> {
    format!("message {seq}").into_bytes()
}

/// A connection to a node, frame by frame.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Client {
    /// Opens the WebSocket, sends nothing.
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client { socket }
    }

    /// Opens the WebSocket and completes the handshake as `peer`.
    pub async fn hello_as(url: &str, peer: PeerKind) -> Client {
        let mut client = Client::connect(url).await;
        client
            .send(&Frame::Hello {
                min_version: MIN_PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                peer,
                name: "roam-node tests".into(),
            })
            .await;
        match client.recv().await {
            Frame::Welcome { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Welcome, got {other:?}"),
        }
        client
    }

    pub async fn hello(url: &str) -> Client {
        Client::hello_as(url, PeerKind::Client).await
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_bytes(frame.encode()).await;
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next frame, or `None` if the node closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the node answers in time");
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    return Some(Frame::decode(&bytes, &FrameLimits::default()).unwrap())
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next frame if one arrives within `wait` (`None` for a WebSocket ping or pong).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        match tokio::time::timeout(wait, self.socket.next()).await {
            Err(_) | Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => None,
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                Some(Frame::decode(&bytes, &FrameLimits::default()).unwrap())
            }
            Ok(other) => panic!("the node closed the connection: {other:?}"),
        }
    }

    pub async fn recv(&mut self) -> Frame {
        self.next()
            .await
            .expect("the node keeps the connection open")
    }

    /// The next frame, which must be an Error: its code, worker and message.
    pub async fn recv_error(&mut self) -> (ErrorCode, Option<WorkerId>, String) {
        match self.recv().await {
            Frame::Error {
                code,
                worker,
                message,
            } => (code, worker, message),
            other => panic!("expected an Error, got {other:?}"),
        }
    }

    /// Sends a worker's state and returns the node's last answer: StateAdopted or an Error.
    pub async fn send_state(&mut self, local: &mut LocalWorker, token: Option<MoveToken>) -> Frame {
        let snapshot = local.capture();
        self.send_snapshot(local.id, local.owner(), &local.module, &snapshot, token)
            .await
    }

    pub async fn send_snapshot(
        &mut self,
        worker: WorkerId,
        owner: [u8; 32],
        module: &WorkerModule,
        snapshot: &Snapshot,
        token: Option<MoveToken>,
    ) -> Frame {
        self.send(&Frame::StateBegin {
            worker,
            module_hash: *module.hash(),
            module_len: module.bytes().len() as u32,
            owner,
            token,
            manifest: snapshot.manifest.encode(),
        })
        .await;
        let (need_module, chunks) = match self.recv().await {
            Frame::StateNeed { module, chunks, .. } => (module, chunks),
            other => return other,
        };
        if need_module {
            for (i, piece) in module.bytes().chunks(1 << 20).enumerate() {
                self.send(&Frame::ModuleData {
                    module_hash: *module.hash(),
                    offset: (i << 20) as u32,
                    bytes: piece.to_vec(),
                })
                .await;
            }
        }
        let bodies: Vec<Vec<u8>> = chunks
            .iter()
            .map(|h| {
                snapshot
                    .body(*h)
                    .expect("asked for a chunk it has")
                    .encode()
            })
            .collect();
        for batch in bodies.chunks(64) {
            self.send(&Frame::ChunkData {
                worker,
                bodies: batch.to_vec(),
            })
            .await;
        }
        self.send(&Frame::StateEnd { worker }).await;
        self.recv().await
    }

    /// Offloads a local worker; returns the last message its state had handled.
    pub async fn offload(&mut self, local: &mut LocalWorker) -> u64 {
        match self.send_state(local, None).await {
            Frame::StateAdopted { worker, last_seq } => {
                assert_eq!(worker, local.id);
                last_seq
            }
            other => panic!("expected StateAdopted, got {other:?}"),
        }
    }

    /// Posts message `seq` and collects its replies until Handled.
    pub async fn post(&mut self, worker: WorkerId, seq: u64, payload: &[u8]) -> Vec<Vec<u8>> {
        self.send(&Frame::Post {
            worker,
            seq,
            payload: payload.to_vec(),
        })
        .await;
        self.replies_of(worker, seq).await
    }

    /// Collects the replies of message `seq` until its Handled.
    pub async fn replies_of(&mut self, worker: WorkerId, seq: u64) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        loop {
            match self.recv().await {
                Frame::Reply {
                    worker: w,
                    seq: s,
                    index,
                    payload,
                } if w == worker && s == seq => {
                    assert_eq!(index as usize, replies.len());
                    replies.push(payload);
                }
                Frame::Handled {
                    worker: w,
                    seq: s,
                    replies: n,
                } if w == worker && s == seq => {
                    assert_eq!(n as usize, replies.len());
                    return replies;
                }
                other => panic!("expected the replies of message {seq}, got {other:?}"),
            }
        }
    }

    /// Asks for the worker back and receives its state, as a client does on return.
    pub async fn take_back(&mut self, worker: WorkerId) -> Snapshot {
        self.receive_state(worker, Frame::Return { worker }).await
    }

    /// Asks for a copy of `worker`'s state (Checkpoint) and receives it.
    pub async fn checkpoint(&mut self, worker: WorkerId) -> Snapshot {
        self.receive_state(worker, Frame::Checkpoint { worker })
            .await
    }

    /// Sends `request` and receives the state it brings, taking every chunk.
    async fn receive_state(&mut self, worker: WorkerId, request: Frame) -> Snapshot {
        self.send(&request).await;
        let (manifest, module_hash) = loop {
            match self.recv().await {
                Frame::StateBegin {
                    worker: w,
                    manifest,
                    module_hash,
                    token,
                    ..
                } => {
                    assert_eq!(w, worker);
                    assert!(token.is_none(), "state sent to a client carries no token");
                    break (manifest, module_hash);
                }
                Frame::Reply { .. } | Frame::Handled { .. } => continue,
                other => panic!("expected StateBegin, got {other:?}"),
            }
        };
        let manifest = roam_snapshot::Manifest::decode(&manifest, &Default::default()).unwrap();
        assert_eq!(manifest.module_hash, module_hash);
        let mut chunks: Vec<u128> = manifest.chunks.iter().map(|c| c.hash).collect();
        chunks.sort_unstable();
        chunks.dedup();
        self.send(&Frame::StateNeed {
            worker,
            module: false,
            chunks,
        })
        .await;
        let mut bodies = Vec::new();
        loop {
            match self.recv().await {
                Frame::ChunkData { bodies: b, .. } => {
                    for body in b {
                        bodies.push(ChunkBody::decode(&body).unwrap());
                    }
                }
                Frame::StateEnd { .. } => break,
                other => panic!("expected chunk bodies, got {other:?}"),
            }
        }
        let snapshot = Snapshot::from_parts(manifest, bodies).unwrap();
        self.send(&Frame::StateAdopted {
            worker,
            last_seq: snapshot.manifest.last_seq,
        })
        .await;
        snapshot
    }
}
