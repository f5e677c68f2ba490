//! One framed connection, whichever side opened it: the WebSocket under it (axum's on
//! the accepting side, tokio-tungstenite's when this node connects to another), the
//! protocol state machine over it ([`NodeSession`] or [`ClientSession`]), and the rules
//! every connection follows: one frame per binary message, every frame sent recorded by
//! the state machine first, and garbage answered with an Error frame instead of a crash.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roam_proto::{
    ClientSession, DecodeFrameError, ErrorCode, Event, Frame, FrameLimits, FrameType, NodeSession,
    PeerKind, ProtocolError, SendFrameError, HEADER_LEN,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// What arrived on a WebSocket.
pub(crate) enum Received {
    /// A binary message: one frame, if the peer follows the protocol.
    Binary(Vec<u8>),
    /// A text message, which the protocol does not use.
    Text,
    /// The connection is over.
    Closed,
}

/// A WebSocket as the link uses it.
pub(crate) trait Wire: Send {
    /// Sends one binary message.
    fn send_bytes(&mut self, bytes: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
    /// The next data message; control messages are answered below this layer.
    fn receive(&mut self) -> impl Future<Output = Received> + Send;
    /// Closes the connection politely.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Most bytes an accepted connection keeps queued for its writer before a send waits.
const WRITE_BUDGET: usize = 64 << 20;

/// The accepted side of a WebSocket, read here and written by a task of its own: a peer
/// that sends a large message while this side sends one too (a client posting a picture
/// while the node sends it the last one's reply) would otherwise find both sides blocked
/// writing, neither reading. Up to [`WRITE_BUDGET`] bytes wait for the writer; past that a
/// send waits, which still leaves the reading side free.
pub(crate) struct ServerWire {
    reader: futures_util::stream::SplitStream<axum::extract::ws::WebSocket>,
    writer: Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
    budget: Arc<tokio::sync::Semaphore>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Why the writer stopped, once it has.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

/// A message for the writer, with the part of the budget it holds until written.
type Outgoing = (
    axum::extract::ws::Message,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

impl ServerWire {
    pub(crate) fn new(socket: axum::extract::ws::WebSocket) -> ServerWire {
        let (mut sink, reader) = socket.split();
        let (writer, mut queue) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let failed = Arc::new(std::sync::Mutex::new(None));
        let task_failed = failed.clone();
        let task = tokio::spawn(async move {
            while let Some((message, permit)) = queue.recv().await {
                let closing = matches!(message, axum::extract::ws::Message::Close(_));
                if let Err(e) = sink.send(message).await {
                    *task_failed.lock().expect("writer state") = Some(e.to_string());
                    break;
                }
                drop(permit);
                if closing {
                    break;
                }
            }
        });
        ServerWire {
            reader,
            writer: Some(writer),
            budget: Arc::new(tokio::sync::Semaphore::new(WRITE_BUDGET)),
            task: Some(task),
            failed,
        }
    }
}

impl Wire for ServerWire {
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        if let Some(reason) = self.failed.lock().expect("writer state").clone() {
            return Err(reason);
        }
        let want = bytes.len().clamp(1, WRITE_BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|e| e.to_string())?;
        let writer = self.writer.as_ref().ok_or("the connection is closing")?;
        writer
            .send((
                axum::extract::ws::Message::Binary(bytes.into()),
                Some(permit),
            ))
            .map_err(|_| "the connection's writer stopped".to_string())
    }

    async fn receive(&mut self) -> Received {
        use axum::extract::ws::Message;
        loop {
            match self.reader.next().await {
                Some(Ok(Message::Binary(bytes))) => return Received::Binary(bytes.into()),
                Some(Ok(Message::Text(_))) => return Received::Text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Received::Closed,
            }
        }
    }

    async fn finish(&mut self) {
        // Everything queued goes out, then the Close.
        if let Some(writer) = self.writer.take() {
            let _ = writer.send((axum::extract::ws::Message::Close(None), None));
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for ServerWire {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A WebSocket this node opened to another node.
pub(crate) type ClientSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Wire for ClientSocket {
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        use tokio_tungstenite::tungstenite::Message;
        self.send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn receive(&mut self) -> Received {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.next().await {
                Some(Ok(Message::Binary(bytes))) => return Received::Binary(bytes.into()),
                Some(Ok(Message::Text(_))) => return Received::Text,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Received::Closed,
            }
        }
    }

    async fn finish(&mut self) {
        let _ = SinkExt::close(self).await;
    }
}

/// A protocol state machine as the link uses it: the node's or the client's.
pub(crate) trait Machine: Send {
    /// See [`NodeSession::on_frame`].
    fn on_frame<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError>;
    /// See [`NodeSession::on_send`].
    fn on_send(&mut self, frame: &Frame) -> Result<(), SendFrameError>;
    /// Whether the session is over.
    fn is_closed(&self) -> bool;
    /// Whether no transfer runs, so any worker's messages may be sent.
    fn is_ready(&self) -> bool;
    /// The protocol version negotiated, once it is.
    fn version(&self) -> Option<u16>;
}

impl Machine for NodeSession {
    fn on_frame<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        NodeSession::on_frame(self, frame)
    }
    fn on_send(&mut self, frame: &Frame) -> Result<(), SendFrameError> {
        NodeSession::on_send(self, frame)
    }
    fn is_closed(&self) -> bool {
        NodeSession::is_closed(self)
    }
    fn is_ready(&self) -> bool {
        *self.state() == roam_proto::NodeState::Ready
    }
    fn version(&self) -> Option<u16> {
        NodeSession::version(self)
    }
}

impl Machine for ClientSession {
    fn on_frame<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        ClientSession::on_frame(self, frame)
    }
    fn on_send(&mut self, frame: &Frame) -> Result<(), SendFrameError> {
        ClientSession::on_send(self, frame)
    }
    fn is_closed(&self) -> bool {
        ClientSession::is_closed(self)
    }
    fn is_ready(&self) -> bool {
        *self.state() == roam_proto::ClientState::Ready
    }
    fn version(&self) -> Option<u16> {
        ClientSession::version(self)
    }
}

/// Why a link stopped working.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// the connection closed
    #[error("the connection closed")]
    Closed,
    /// the connection failed: {0}
    #[error("the connection failed: {0}")]
    Io(String),
    /// this node tried to send a frame the protocol does not allow now: {0}
    #[error("this node tried to send a frame the protocol does not allow now: {0}")]
    Send(#[from] SendFrameError),
}

/// A WebSocket and the state machine that checks every frame on it.
pub(crate) struct Link<W, M> {
    pub wire: W,
    pub machine: M,
    limits: FrameLimits,
    metrics: Arc<Metrics>,
    /// Worker messages that may not be sent during the transfer running now; they go out
    /// once it ends.
    deferred: VecDeque<Frame>,
}

/// Frames produced by workers and background moves, which wait out a transfer.
fn deferrable(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Reply { .. }
            | Frame::Handled { .. }
            | Frame::WorkerFailed { .. }
            | Frame::Moved { .. }
    )
}

impl<W: Wire, M: Machine> Link<W, M> {
    pub(crate) fn new(wire: W, machine: M, limits: FrameLimits, metrics: Arc<Metrics>) -> Self {
        Link {
            wire,
            machine,
            limits,
            metrics,
            deferred: VecDeque::new(),
        }
    }

    /// Records `frame` with the state machine and sends it; a worker's message that may
    /// not go out during the current transfer waits until it ends.
    pub(crate) async fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        if !self.deferred.is_empty() && deferrable(&frame) {
            // Keep the worker's messages in order behind the ones already waiting.
            self.deferred.push_back(frame);
            return self.flush_deferred().await;
        }
        match self.machine.on_send(&frame) {
            Ok(()) => self.write(&frame).await,
            Err(_) if deferrable(&frame) => {
                self.deferred.push_back(frame);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the messages that waited for a transfer to end, if none runs now.
    pub(crate) async fn flush_deferred(&mut self) -> Result<(), LinkError> {
        while self.machine.is_ready() {
            let Some(frame) = self.deferred.pop_front() else {
                break;
            };
            match self.machine.on_send(&frame) {
                Ok(()) => self.write(&frame).await?,
                Err(e) => tracing::warn!("dropping {}: {e}", frame.name()),
            }
        }
        Ok(())
    }

    /// Sends a frame without recording it: only for answers to garbage, which the state
    /// machine never saw.
    pub(crate) async fn write(&mut self, frame: &Frame) -> Result<(), LinkError> {
        let bytes = frame.encode();
        self.metrics.bytes_out(bytes.len());
        self.wire.send_bytes(bytes).await.map_err(LinkError::Io)
    }

    /// Turns a received message into a frame. Text and undecodable bytes are answered
    /// with an Error frame here and give `None`: the connection goes on.
    pub(crate) async fn decode(&mut self, received: Received) -> Result<Option<Frame>, LinkError> {
        match received {
            Received::Closed => Err(LinkError::Closed),
            Received::Text => {
                let refusal = Frame::Error {
                    code: ErrorCode::Malformed,
                    worker: None,
                    message: "text messages are not part of the protocol: send each frame as one binary message".into(),
                };
                self.write(&refusal).await?;
                Ok(None)
            }
            Received::Binary(bytes) => {
                self.metrics.bytes_in(bytes.len());
                match Frame::decode(&bytes, &self.limits) {
                    Ok(frame) => Ok(Some(frame)),
                    Err(e) => {
                        tracing::debug!("refusing an undecodable frame: {e}");
                        self.write(&refusal_of(&e, &bytes)).await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// The next frame that decodes.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame, LinkError> {
        loop {
            let received = self.wire.receive().await;
            if let Some(frame) = self.decode(received).await? {
                return Ok(frame);
            }
        }
    }

    /// Answers a frame the state machine refused.
    pub(crate) async fn refuse(&mut self, refusal: &ProtocolError) -> Result<(), LinkError> {
        if self.machine.is_closed() {
            // The refusal closed the session (a failed handshake): the peer still hears why.
            return self.write(&refusal.to_frame()).await;
        }
        self.send(refusal.to_frame()).await
    }
}

/// The Error frame answering bytes that do not decode. A Post whose payload is over the
/// cap names its worker (read from where every Post keeps it), so the client learns which
/// worker's message was refused.
fn refusal_of(error: &DecodeFrameError, bytes: &[u8]) -> Frame {
    let worker = match error {
        DecodeFrameError::PayloadTooLarge { .. }
            if bytes.first() == Some(&(FrameType::Post as u8))
                && bytes.len() >= HEADER_LEN + 16 =>
        {
            let mut id = [0u8; 16];
            id.copy_from_slice(&bytes[HEADER_LEN..HEADER_LEN + 16]);
            Some(u128::from_le_bytes(id))
        }
        _ => None,
    };
    Frame::Error {
        code: error.code(),
        worker,
        message: error.to_string(),
    }
}

/// The WebSocket settings of a node's links: messages up to the frame cap (with room for
/// the decoder to refuse a slightly larger one itself, with a clear error).
pub(crate) fn socket_limit(limits: &FrameLimits) -> usize {
    limits.max_frame as usize + (1 << 20)
}

/// Why this node could not open a link to another node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// cannot reach {url}: {reason}
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// {url} refused the connection: {reason}
    #[error("{url} refused the connection: {reason}")]
    Refused {
        /// The node's URL.
        url: String,
        /// What it said.
        reason: String,
    },
}

/// Bytes a node's socket to another node may hold not yet sent (`TCP_NOTSENT_LOWAT`).
///
/// A post-copy move streams the state's bodies down such a socket while the destination
/// runs the worker, and a body the worker faults on goes out ahead of the rest, but only
/// ahead of what is still in this process: by default the kernel takes up to its whole
/// send buffer (4 MiB here), and a physics worker's 2.3 MB stream sat there entire while
/// each fault waited behind it. Kept to this, the stream stays in the sender's queue,
/// where a wanted body can pass it: `bench paper`'s physics handoff A → B (42 Mbit/s),
/// one run each, waited 92 ms a fault before and 36 ms after. (Its stall did not change:
/// that worker touches its whole state every step, so it waits for nearly all of it
/// either way.)
const UNSENT_LOW_WATER: u32 = 32 << 10;

/// Sets [`UNSENT_LOW_WATER`] on a dialled socket; a socket that refuses keeps the
/// kernel's default (a slower post-copy, nothing worse).
fn keep_unsent_bytes_few(socket: &ClientSocket) {
    if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_LOW_WATER) {
            tracing::debug!("TCP_NOTSENT_LOWAT not set: {e}");
        }
    }
}

/// Opens a link to the node at `url` as a node peer (through the route `config` gives
/// for it, if any), and completes the handshake.
pub(crate) async fn connect(
    url: &str,
    config: &NodeConfig,
    metrics: Arc<Metrics>,
) -> Result<Link<ClientSocket, ClientSession>, ConnectError> {
    let (name, limits) = (config.name.as_str(), config.frame_limits);
    let unreachable = |reason: String| ConnectError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let socket = WebSocketConfig::default()
        .max_message_size(Some(socket_limit(&limits)))
        .max_frame_size(Some(socket_limit(&limits)));
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(config.dial_url(url), Some(socket), true),
    )
    .await
    .map_err(|_| unreachable("no answer within 10 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    keep_unsent_bytes_few(&socket);
    let mut link = Link::new(socket, ClientSession::new(), limits, metrics);
    let refused = |reason: String| ConnectError::Refused {
        url: url.to_owned(),
        reason,
    };
    link.send(ClientSession::hello(PeerKind::Node, name))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let frame = tokio::time::timeout(Duration::from_secs(10), link.next_frame())
        .await
        .map_err(|_| unreachable("no Welcome within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    match link.machine.on_frame(&frame) {
        Ok(Event::Welcome { .. }) => Ok(link),
        Ok(Event::PeerError { code, message, .. }) => Err(refused(format!("{code}: {message}"))),
        Ok(other) => Err(refused(format!("unexpected answer to Hello: {other:?}"))),
        Err(e) => Err(refused(e.to_string())),
    }
}
