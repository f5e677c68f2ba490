//! One accepted connection: the [`NodeSession`] that checks every frame, and what the node
//! does for each accepted one — welcome, attach, post, receive a worker, send one back,
//! hand one to another node, fetch one for a client (cloud), keep the registry (cloud).
//!
//! Transfers on the connection itself (receiving state, returning a worker) run inline:
//! the protocol allows nothing else on the connection meanwhile. Moves that talk to other
//! nodes (handoff, fallback) run as tasks of their own and report back through the
//! connection's outgoing queue, so the connection keeps serving its other workers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use roam_proto::{ErrorCode, Event, Frame, MoveToken, NodeSession, PeerKind, WorkerId};
use roam_runtime::Snapshot;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::hosting::{owner_of, reply_seq, AttachError, BeginMoveError, Compress, PostError, Sink};
use crate::link::{connect, ConnectError, Link, LinkError, ServerWire, Wire};
use crate::metrics::MoveKind;
use crate::precopy::{send_live, Live, PostCopyUse, PrecopyError, PrecopyReport, PrecopySettings};
use crate::server::until_stopped;
use crate::server::Node;
use crate::transfer::{
    now_unix_ms, receive_resumable, receive_state, send_state, Begin, Package, ReceiveContext,
    ReceiveStateError, Received, SendStateError,
};

/// How long a move token stays valid.
const TOKEN_LIFETIME_MS: u64 = 60_000;

type NodeLink = Link<ServerWire, NodeSession>;

/// Serves one WebSocket connection until it closes or the node shuts down.
pub(crate) async fn serve(
    node: Arc<Node>,
    socket: WebSocket,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let span = tracing::info_span!("connection", %peer, worker = tracing::field::Empty);
    node.metrics.connection_opened();
    let mut link = Link::new(
        ServerWire::new(socket),
        NodeSession::new(node.config.role),
        node.config.frame_limits,
        node.metrics.clone(),
    );
    async {
        if permit.is_none() {
            let busy = Frame::Error {
                code: ErrorCode::Busy,
                worker: None,
                message: format!(
                    "this node serves {} connections already; try later or elsewhere",
                    node.config.max_connections
                ),
            };
            let _ = link.write(&busy).await;
        } else {
            match drive(&node, &mut link).await {
                Ok(()) | Err(LinkError::Closed) => tracing::debug!("connection closed"),
                Err(e) => tracing::info!("connection ended: {e}"),
            }
        }
        link.wire.finish().await;
    }
    .instrument(span)
    .await;
    node.metrics.connection_closed();
    drop(permit);
}

/// The connection's loop: frames from the peer, frames from the workers and moves this
/// connection started, and the node's shutdown.
async fn drive(node: &Arc<Node>, link: &mut NodeLink) -> Result<(), LinkError> {
    let (sink, mut outgoing) = mpsc::unbounded_channel::<Frame>();
    // Whatever this connection sent ahead of workers that never came goes with it.
    let _forget = ForgetExpected { node, sink: &sink };
    let mut shutdown = node.shutdown.clone();
    let mut registered: Option<String> = None;
    loop {
        if link.machine.is_closed() {
            return Ok(());
        }
        link.flush_deferred().await?;
        tokio::select! {
            // In this order: the node's shutdown; then what the workers and moves have to
            // say, so that a Moved reaches the client before anything said of a message
            // that arrived after it; then the peer.
            biased;
            () = until_stopped(&mut shutdown) => {
                // Let the workers' last answers out before saying goodbye.
                while let Ok(frame) = outgoing.try_recv() {
                    link.send(frame).await?;
                }
                link.send(Frame::Goodbye { reason: "the node is shutting down".into() }).await?;
                return Ok(());
            }
            Some(frame) = outgoing.recv() => link.send(frame).await?,
            received = link.wire.receive() => {
                let Some(frame) = link.decode(received).await? else { continue };
                handle(node, link, &sink, &mut outgoing, &mut registered, frame).await?;
            }
        }
    }
}

/// Drops a connection's Expects when its loop ends, however it ends.
struct ForgetExpected<'a> {
    node: &'a Node,
    sink: &'a Sink,
}

impl Drop for ForgetExpected<'_> {
    fn drop(&mut self) {
        self.node.hosting.forget_expected(self.sink);
    }
}

fn worker_error(code: ErrorCode, worker: WorkerId, message: impl ToString) -> Frame {
    Frame::Error {
        code,
        worker: Some(worker),
        message: message.to_string(),
    }
}

async fn handle(
    node: &Arc<Node>,
    link: &mut NodeLink,
    sink: &Sink,
    outgoing: &mut mpsc::UnboundedReceiver<Frame>,
    registered: &mut Option<String>,
    frame: Frame,
) -> Result<(), LinkError> {
    let event = match link.machine.on_frame(&frame) {
        Ok(event) => event,
        Err(refusal) => {
            tracing::debug!("refused: {refusal}");
            return link.refuse(&refusal).await;
        }
    };
    match event {
        Event::Hello {
            version,
            peer,
            name,
        } => {
            tracing::debug!(?peer, name, "hello");
            link.send(Frame::Welcome {
                version,
                node_id: node.config.name.clone(),
                role: node.config.role,
            })
            .await?;
        }
        Event::Ping { nonce } => link.send(Frame::Pong { nonce }).await?,
        Event::StateBegin { .. } => {
            let begin = Begin::from_event(&event).expect("a StateBegin event");
            receive_worker(node, link, sink, begin).await?;
        }
        Event::Attach { worker, secret } => {
            tracing::Span::current().record("worker", format!("{worker:032x}"));
            let answer = match node.hosting.attach(worker, secret, sink) {
                Ok(last_seq) => Frame::Attached { worker, last_seq },
                Err(e @ AttachError::UnknownWorker(_)) => {
                    worker_error(ErrorCode::UnknownWorker, worker, e)
                }
                Err(e @ AttachError::WrongSecret(_)) => {
                    worker_error(ErrorCode::Unauthorized, worker, e)
                }
            };
            link.send(answer).await?;
        }
        Event::Expect { worker, secret } => {
            tracing::Span::current().record("worker", format!("{worker:032x}"));
            let budget = node.hosting.expect(worker, secret, sink);
            tracing::debug!(budget, "a worker on its way here is expected");
            link.send(Frame::Expecting { worker, budget }).await?;
        }
        Event::Post {
            worker,
            seq,
            payload,
        }
        | Event::Replay {
            worker,
            seq,
            payload,
        } => {
            // A Replay's replies are left out: the client has them.
            let quiet = matches!(frame, Frame::Replay { .. });
            let posted = if link.machine.is_attached(worker) {
                node.hosting
                    .post(worker, seq, payload.to_vec(), quiet, sink)
            } else {
                // Sent ahead of a worker on its way here (Expect).
                node.hosting
                    .post_early(worker, seq, payload.to_vec(), quiet, sink)
            };
            if let Err(e) = posted {
                // A worker handed off since the Post left the client is gone from here,
                // and its Moved may still wait in `outgoing`: it goes out first, so the
                // client switches over (and replays this message at the destination)
                // instead of taking the refusal for a failed move.
                while let Ok(frame) = outgoing.try_recv() {
                    link.send(frame).await?;
                }
                let code = match e {
                    PostError::UnknownWorker(_) => ErrorCode::UnknownWorker,
                    PostError::Gap { .. } => ErrorCode::UnexpectedFrame,
                    PostError::OverBudget { .. } => ErrorCode::TooLarge,
                    PostError::NotOwner(_) => ErrorCode::Unauthorized,
                };
                link.send(worker_error(code, worker, e)).await?;
            }
        }
        Event::MoveOut {
            worker,
            destination,
        } => {
            let task = handoff(node.clone(), worker, destination.to_owned(), sink.clone());
            tokio::spawn(task.in_current_span());
        }
        Event::Return { worker, delivered } => {
            return_worker(node, link, sink, outgoing, worker, delivered).await?
        }
        Event::Checkpoint { worker } => checkpoint_worker(node, link, worker).await?,
        Event::Release { worker, .. } => {
            if link.machine.is_attached(worker) {
                node.hosting.release(worker);
            }
        }
        Event::Pull {
            worker,
            secret,
            source,
            destination,
            delivered,
        } => {
            let task = pull(
                node.clone(),
                Pulled {
                    worker,
                    secret: *secret,
                    source: source.to_owned(),
                    destination: destination.to_owned(),
                    delivered,
                },
                sink.clone(),
            );
            tokio::spawn(task.in_current_span());
        }
        Event::Register(registration) => {
            tracing::info!(node = %registration.node_id, url = %registration.url, "node registered");
            *registered = Some(registration.node_id.clone());
            node.registry.register(registration.clone());
        }
        Event::Heartbeat {
            workers,
            free_memory,
        } => {
            if let Some(id) = registered {
                node.registry.heartbeat(id, workers, free_memory);
            }
        }
        Event::ListNodes => {
            let nodes = node.registry.list();
            link.send(Frame::Nodes { nodes }).await?;
        }
        Event::PeerError {
            code,
            worker,
            message,
        } => {
            tracing::info!(?worker, "the peer reported an error ({code}): {message}");
        }
        Event::Goodbye { .. }
        | Event::Pong { .. }
        | Event::Welcome { .. }
        | Event::ModuleData { .. }
        | Event::ChunkData { .. }
        | Event::StateRound { .. }
        | Event::StateResumable { .. }
        | Event::StateResumed { .. }
        | Event::ChunkWant { .. }
        | Event::TransferComplete { .. }
        | Event::StateNeed { .. }
        | Event::StateAdopted { .. }
        | Event::Attached { .. }
        | Event::Expecting { .. }
        | Event::Reply { .. }
        | Event::Handled { .. }
        | Event::WorkerFailed { .. }
        | Event::Moved { .. }
        | Event::Nodes(_) => {}
    }
    Ok(())
}

/// Receives a worker's state on this connection: a client's offload, or another node's
/// handoff (which must carry a valid move token), and hosts it.
async fn receive_worker(
    node: &Arc<Node>,
    link: &mut NodeLink,
    sink: &Sink,
    begin: Begin,
) -> Result<(), LinkError> {
    let worker = begin.worker;
    tracing::Span::current().record("worker", format!("{worker:032x}"));
    let from_node = link.machine.peer() == Some(PeerKind::Node);
    let ctx = ReceiveContext {
        cache: &node.cache,
        chunks: &node.chunks,
        metrics: &node.metrics,
        runtime: node.hosting.runtime(),
        frame_limits: node.config.frame_limits,
        token: from_node.then(|| (node.config.token_key(), node.config.public_url.as_str())),
    };
    let arrived = match receive_resumable(link, begin, &ctx, &node.hosting).await {
        Ok(Received::Arrived(arrived)) => arrived,
        Ok(Received::Resumed { last_seq, bodies }) => {
            tracing::info!(last_seq, "worker adopted: every chunk is in");
            count_offload(node, from_node, true);
            link.send(Frame::StateAdopted { worker, last_seq }).await?;
            node.chunks.put(&bodies);
            return Ok(());
        }
        Err(ReceiveStateError::Link(e)) => {
            count_offload(node, from_node, false);
            return Err(e);
        }
        Err(_) => {
            count_offload(node, from_node, false);
            return Ok(());
        }
    };
    // A client's own offload goes on being used on this connection; state from a node
    // waits for its client to attach.
    let replies_to = (!from_node).then(|| sink.clone());
    let mut adopted = None;
    let answer = match node
        .hosting
        .adopt(
            worker,
            arrived.owner,
            arrived.module,
            arrived.snapshot,
            replies_to,
        )
        .await
    {
        Ok((last_seq, snapshot)) => {
            tracing::info!(last_seq, "worker adopted");
            count_offload(node, from_node, true);
            adopted = Some(snapshot);
            Frame::StateAdopted { worker, last_seq }
        }
        Err(e) => {
            count_offload(node, from_node, false);
            let code = match e {
                crate::hosting::AdoptError::OtherOwner(_) => ErrorCode::Unauthorized,
                crate::hosting::AdoptError::Restore(_) => ErrorCode::SnapshotRefused,
                crate::hosting::AdoptError::Thread(_) => ErrorCode::Internal,
            };
            worker_error(code, worker, e)
        }
    };
    link.send(answer).await?;
    // Kept for later deltas once the sender has its answer: not part of the move's time.
    if let Some(snapshot) = adopted {
        node.chunks.put(snapshot.bodies());
    }
    Ok(())
}

fn count_offload(node: &Node, from_node: bool, ok: bool) {
    if !from_node {
        node.metrics.record_move(MoveKind::Offload, ok);
    }
}

fn begin_move_code(e: &BeginMoveError) -> ErrorCode {
    match e {
        BeginMoveError::UnknownWorker(_) => ErrorCode::UnknownWorker,
        BeginMoveError::AlreadyMoving(_) => ErrorCode::Busy,
        BeginMoveError::Capture(..) => ErrorCode::WorkerFailed,
    }
}

/// Checkpoint: a copy of the worker's state goes to its client on this connection while
/// the worker keeps running here. The copy is taken between two messages, so the worker
/// pauses only for the capture, and travels as a return's would (the client asks only
/// for the chunks its recovery point lacks); the client's StateAdopted says it holds it.
async fn checkpoint_worker(
    node: &Arc<Node>,
    link: &mut NodeLink,
    worker: WorkerId,
) -> Result<(), LinkError> {
    tracing::Span::current().record("worker", format!("{worker:032x}"));
    let hosted = match node.hosting.begin_checkpoint(worker) {
        Ok(hosted) => hosted,
        Err(e) => {
            return link
                .send(worker_error(begin_move_code(&e), worker, e))
                .await
        }
    };
    let captured = node
        .hosting
        .capture_round(
            worker,
            &hosted,
            Compress::Unknown(Default::default()),
            false,
        )
        .await;
    // The worker goes on at once; what follows only sends the copy.
    node.hosting.end_move(worker, false);
    let snapshot = match captured.map(|delta| Snapshot::from_parts(delta.manifest, delta.bodies)) {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(e)) => {
            let e = BeginMoveError::Capture(worker, e.to_string());
            return link
                .send(worker_error(begin_move_code(&e), worker, e))
                .await;
        }
        Err(e) => {
            return link
                .send(worker_error(begin_move_code(&e), worker, e))
                .await
        }
    };
    let package = Package {
        worker,
        owner: hosted.owner,
        module: hosted.module.clone(),
        snapshot,
    };
    match send_state(link, &package, None).await {
        Ok(last_seq) => {
            tracing::info!(last_seq, "a checkpoint of the worker went to its client");
            node.metrics.record_checkpoint();
            Ok(())
        }
        Err(SendStateError::Link(e)) => Err(e),
        Err(e) => {
            tracing::info!("the client did not take the checkpoint: {e}");
            Ok(())
        }
    }
}

/// Return: the worker's state goes back to the client on this connection; it is dropped
/// here once the client adopted it.
///
/// When the worker's replies go to another connection of the client (version 2: the
/// client asked for the worker back on a connection of its own), the worker keeps
/// handling the messages that connection brings while its state travels in pre-copy
/// rounds. Otherwise it finishes what it took, its replies go out, and then its state.
/// `delivered` (the cloud's ReturnSince) is the last message whose replies the client has.
async fn return_worker(
    node: &Arc<Node>,
    link: &mut NodeLink,
    sink: &Sink,
    outgoing: &mut mpsc::UnboundedReceiver<Frame>,
    worker: WorkerId,
    delivered: Option<u64>,
) -> Result<(), LinkError> {
    tracing::Span::current().record("worker", format!("{worker:032x}"));
    // A node asking is the cloud fetching the worker for a client that lost its link to
    // this node (a fallback): nothing more will come for the worker here, so it leaves
    // at once, with the replies its client may have missed.
    let fetched = link.machine.peer() == Some(PeerKind::Node);
    let live = link.machine.version().is_some_and(|v| v >= 2)
        && !node.hosting.replies_to(worker, sink)
        && !fetched;
    if live {
        let live = Live {
            hosting: &node.hosting,
            worker,
            chunks: &node.chunks,
        };
        // A client or the cloud taking the worker back restores it once every body is in:
        // neither hosts a worker whose memory is still arriving. The client keeps the
        // first round as a copy to recover from, should this node be lost before the
        // return ends: that round carries the whole state.
        let settings = PrecopySettings {
            post_copy: PostCopyUse::Never,
            hold_back: false,
            ..node.config.precopy
        };
        let result = send_live(link, &live, None, &settings, &mut |_| {}).await;
        let started = !matches!(
            result,
            Err(PrecopyError::Capture(
                BeginMoveError::UnknownWorker(_) | BeginMoveError::AlreadyMoving(_)
            ))
        );
        if started {
            node.hosting.end_move(worker, result.is_ok());
        }
        node.metrics.record_move(MoveKind::Return, result.is_ok());
        return match result {
            Ok((last_seq, report)) => {
                tracing::info!(
                    last_seq,
                    rounds = report.rounds,
                    held_back = report.held_back,
                    paused_ms = report.paused.as_secs_f64() * 1e3,
                    "worker returned to its client"
                );
                node.metrics.observe_precopy(
                    report.rounds,
                    report.live_bytes,
                    report.paused_bytes,
                    report.paused,
                );
                Ok(())
            }
            Err(PrecopyError::Send(SendStateError::Link(e))) => Err(e),
            Err(e) if !started => link.send(worker_error(e.code(), worker, e)).await,
            Err(e) => {
                tracing::info!("return failed, the worker stays: {e}");
                Ok(())
            }
        };
    }
    let captured = match node.hosting.begin_move(worker).await {
        Ok(captured) => captured,
        Err(e) => {
            node.metrics.record_move(MoveKind::Return, false);
            return link
                .send(worker_error(begin_move_code(&e), worker, e))
                .await;
        }
    };
    // The replies of the messages the worker finished go out before its state.
    while let Ok(frame) = outgoing.try_recv() {
        link.send(frame).await?;
    }
    // For a fallback, so do the replies of the last messages it handled, which the link
    // the client lost may have swallowed: those after `delivered` when the cloud said
    // (ReturnSince), all of them otherwise, and the cloud passes on those the client lacks.
    if fetched {
        for frame in node.hosting.recent_replies(worker, delivered.unwrap_or(0)) {
            link.send(frame).await?;
        }
    }
    // Should the worker come back, its unchanged chunks need not travel again.
    node.chunks.put(captured.snapshot.bodies());
    let package = Package {
        worker,
        owner: captured.owner,
        module: captured.module,
        snapshot: captured.snapshot,
    };
    match send_state(link, &package, None).await {
        Ok(last_seq) => {
            tracing::info!(last_seq, "worker returned to its client");
            node.hosting.end_move(worker, true);
            node.metrics.record_move(MoveKind::Return, true);
            Ok(())
        }
        Err(e) => {
            tracing::info!("return failed, the worker stays: {e}");
            node.hosting.end_move(worker, false);
            node.metrics.record_move(MoveKind::Return, false);
            match e {
                SendStateError::Link(e) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

/// Why a handoff or a fallback failed.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    /// {0}
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// {0}
    #[error("{0}")]
    Capture(#[from] BeginMoveError),
    /// {0}
    #[error("{0}")]
    Send(#[from] SendStateError),
    /// {0}
    #[error("{0}")]
    Receive(#[from] ReceiveStateError),
    /// {0}
    #[error("{0}")]
    Precopy(#[from] PrecopyError),
    /// the source refused ({code}): {message}
    #[error("the source refused ({code}): {message}")]
    SourceRefused {
        /// Its reason.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// the source broke off: {0}
    #[error("the source broke off: {0}")]
    Source(String),
    /// the worker could not be hosted here: {0}
    #[error("the worker could not be hosted here: {0}")]
    Adopt(#[from] crate::hosting::AdoptError),
}

impl MoveError {
    fn code(&self) -> ErrorCode {
        match self {
            MoveError::Connect(_) | MoveError::Source(_) => ErrorCode::Internal,
            MoveError::Capture(e) => begin_move_code(e),
            MoveError::Send(e) => e.code(),
            MoveError::Receive(e) => e.code(),
            MoveError::Precopy(e) => e.code(),
            MoveError::SourceRefused { code, .. } => *code,
            MoveError::Adopt(_) => ErrorCode::SnapshotRefused,
        }
    }
}

/// Sends `package` to the node at `destination` with a move token from `source`.
async fn forward(node: &Node, package: &Package, destination: &str) -> Result<u64, MoveError> {
    let mut link = connect(destination, &node.config, node.metrics.clone()).await?;
    let token = MoveToken::issue(
        node.config.token_key(),
        package.worker,
        &node.config.public_url,
        destination,
        now_unix_ms() + TOKEN_LIFETIME_MS,
    );
    let result = send_state(&mut link, package, Some(token)).await;
    if !link.machine.is_closed() {
        let _ = link
            .send(Frame::Goodbye {
                reason: "move done".into(),
            })
            .await;
    }
    link.wire.finish().await;
    Ok(result?)
}

/// Handoff: hands the worker to `destination` directly, in pre-copy rounds while it keeps
/// handling messages, then tells the client where it runs. If the destination refuses or
/// cannot be reached the worker resumes here.
async fn handoff(node: Arc<Node>, worker: WorkerId, destination: String, sink: Sink) {
    tracing::Span::current().record("worker", format!("{worker:032x}"));
    let result = forward_live(&node, worker, &destination, &sink).await;
    match result {
        Ok((last_seq, report)) => {
            tracing::info!(
                %destination,
                last_seq,
                rounds = report.rounds,
                held_back = report.held_back,
                live_bytes = report.live_bytes,
                paused_bytes = report.paused_bytes,
                paused_ms = report.paused.as_secs_f64() * 1e3,
                post_copy = report.post_copy,
                "handoff done"
            );
            node.metrics.observe_precopy(
                report.rounds,
                report.live_bytes,
                report.paused_bytes,
                report.paused,
            );
            node.metrics.record_move(MoveKind::Handoff, true);
        }
        Err(e) => {
            tracing::info!(%destination, "handoff failed, the worker stays: {e}");
            node.metrics.record_move(MoveKind::Handoff, false);
            let _ = sink.send(worker_error(
                e.code(),
                worker,
                format!("the worker stays here: its handoff to {destination} failed: {e}"),
            ));
        }
    }
}

/// Sends the hosted worker to the node at `destination` with a move token, in pre-copy
/// rounds; once adopted there, tells the client (Moved, on `sink`) and then drops it here;
/// resumes it otherwise.
///
/// Moved goes out before the worker is dropped: a Post that arrives in between is held
/// and dropped with the worker (the client replays it at the destination), and one that
/// arrives after is refused only once the client has switched over, never ahead of Moved.
async fn forward_live(
    node: &Node,
    worker: WorkerId,
    destination: &str,
    sink: &Sink,
) -> Result<(u64, PrecopyReport), MoveError> {
    let mut link = connect(destination, &node.config, node.metrics.clone()).await?;
    let token = MoveToken::issue(
        node.config.token_key(),
        worker,
        &node.config.public_url,
        destination,
        now_unix_ms() + TOKEN_LIFETIME_MS,
    );
    let live = Live {
        hosting: &node.hosting,
        worker,
        chunks: &node.chunks,
    };
    // Post-copy: the client goes to the destination as soon as the worker runs there,
    // while its memory still arrives; the worker stays paused here until then.
    let mut resumed = None;
    let tell = |resumed: &mut Option<u64>, last_seq: u64| {
        if resumed.is_none() {
            *resumed = Some(last_seq);
            let _ = sink.send(Frame::Moved {
                worker,
                destination: destination.to_string(),
                last_seq,
            });
        }
    };
    let mut result = send_live(
        &mut link,
        &live,
        Some(token),
        &node.config.precopy,
        &mut |last_seq| {
            tracing::info!(last_seq, "the worker runs at the destination, post-copy");
            tell(&mut resumed, last_seq);
        },
    )
    .await;
    if let Ok((last_seq, _)) = &result {
        tell(&mut resumed, *last_seq);
    }
    if let (Err(e), Some(last_seq)) = (&result, resumed) {
        // The client went to the destination already, and the destination's copy is
        // incomplete: it fails there with StateLost and its client recovers it. Resuming
        // it here too would run it twice.
        tracing::warn!(
            "the post-copy transfer failed after the worker ran at the destination: {e}"
        );
        result = Ok((
            last_seq,
            PrecopyReport {
                post_copy: true,
                ..PrecopyReport::default()
            },
        ));
    }
    // A worker that never started a pre-copy (unknown, already moving) is not touched.
    if !matches!(
        result,
        Err(PrecopyError::Capture(
            BeginMoveError::UnknownWorker(_) | BeginMoveError::AlreadyMoving(_)
        ))
    ) {
        node.hosting.end_move(worker, result.is_ok());
    }
    if !link.machine.is_closed() {
        let _ = link
            .send(Frame::Goodbye {
                reason: "move done".into(),
            })
            .await;
    }
    link.wire.finish().await;
    Ok(result?)
}

/// What a client's Pull asks for.
struct Pulled {
    worker: WorkerId,
    secret: [u8; 32],
    source: String,
    destination: String,
    /// The last message whose replies all reached the client (PullSince): the source's
    /// replies after it go to the client ahead of Moved.
    delivered: Option<u64>,
}

/// Fallback (cloud): fetches the worker from `source` for its client, then hosts it here
/// or forwards it to `destination`, and tells the client where it runs, after passing on
/// the replies the source kept of the messages after the last one the client has.
/// The source keeps its copy until the worker runs at the destination.
async fn pull(node: Arc<Node>, pulled: Pulled, sink: Sink) {
    let Pulled {
        worker,
        secret,
        source,
        destination,
        delivered,
    } = pulled;
    tracing::Span::current().record("worker", format!("{worker:032x}"));
    let result = pull_inner(&node, worker, secret, &source, &destination, delivered).await;
    let frame = match result {
        Ok((last_seq, replies)) => {
            tracing::info!(
                %source,
                %destination,
                last_seq,
                replies = replies.len(),
                "fallback done"
            );
            node.metrics.record_move(MoveKind::Fallback, true);
            if let Some(delivered) = delivered {
                let later = |r: &Frame| reply_seq(r).is_some_and(|seq| seq > delivered);
                for reply in replies.into_iter().filter(later) {
                    let _ = sink.send(reply);
                }
            }
            Frame::Moved {
                worker,
                destination,
                last_seq,
            }
        }
        Err(e) => {
            tracing::info!(%source, %destination, "fallback failed: {e}");
            node.metrics.record_move(MoveKind::Fallback, false);
            worker_error(
                e.code(),
                worker,
                format!("cannot fetch the worker from {source} for {destination}: {e}"),
            )
        }
    };
    let _ = sink.send(frame);
}

async fn pull_inner(
    node: &Node,
    worker: WorkerId,
    secret: [u8; 32],
    source: &str,
    destination: &str,
    delivered: Option<u64>,
) -> Result<(u64, Vec<Frame>), MoveError> {
    let mut from = connect(source, &node.config, node.metrics.clone()).await?;
    let result = pull_from(node, &mut from, worker, secret, destination, delivered).await;
    if !from.machine.is_closed() {
        let _ = from
            .send(Frame::Goodbye {
                reason: "fallback done".into(),
            })
            .await;
    }
    from.wire.finish().await;
    result
}

async fn pull_from<W: Wire>(
    node: &Node,
    from: &mut Link<W, roam_proto::ClientSession>,
    worker: WorkerId,
    secret: [u8; 32],
    destination: &str,
    delivered: Option<u64>,
) -> Result<(u64, Vec<Frame>), MoveError> {
    let source_gone = |e: LinkError| MoveError::Source(e.to_string());
    // The source's replies, by message and index (Handled last), each once: the replies
    // of the message it finished before the capture, and those of its last messages.
    let mut replies: BTreeMap<(u64, u32), Frame> = BTreeMap::new();
    from.send(Frame::Attach { worker, secret })
        .await
        .map_err(source_gone)?;
    let mut returning = false;
    let begin = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(60), from.next_frame())
            .await
            .map_err(|_| MoveError::Source("no answer within 60 s".into()))?
            .map_err(source_gone)?;
        match from.machine.on_frame(&frame) {
            Ok(Event::Attached { .. }) if !returning => {
                returning = true;
                // A version 7 source is told which replies the client has, and keeps the
                // others off this link; an older one sends all it kept.
                let ask = match delivered {
                    Some(delivered) if from.machine.version().is_some_and(|v| v >= 7) => {
                        Frame::ReturnSince { worker, delivered }
                    }
                    _ => Frame::Return { worker },
                };
                from.send(ask).await.map_err(source_gone)?;
            }
            Ok(event @ Event::StateBegin { .. }) => {
                break Begin::from_event(&event).expect("a StateBegin event")
            }
            Ok(Event::PeerError { code, message, .. }) => {
                return Err(MoveError::SourceRefused {
                    code,
                    message: message.to_owned(),
                })
            }
            Ok(Event::Goodbye { reason }) => return Err(MoveError::Source(reason.to_owned())),
            Ok(Event::Ping { nonce }) => from
                .send(Frame::Pong { nonce })
                .await
                .map_err(source_gone)?,
            // The replies of the message the source finishes before capturing, and of its
            // last messages (version 6 sources).
            Ok(Event::Reply { .. } | Event::Handled { .. }) => {
                let key = match &frame {
                    Frame::Reply { seq, index, .. } => (*seq, *index),
                    Frame::Handled { seq, .. } => (*seq, u32::MAX),
                    _ => unreachable!("a Reply or Handled event comes from its frame"),
                };
                replies.entry(key).or_insert_with(|| frame.clone());
            }
            Ok(_) => {}
            Err(refusal) => {
                let _ = from.refuse(&refusal).await;
                return Err(MoveError::Source(refusal.to_string()));
            }
        }
    };
    let ctx = ReceiveContext {
        cache: &node.cache,
        chunks: &node.chunks,
        metrics: &node.metrics,
        runtime: node.hosting.runtime(),
        frame_limits: node.config.frame_limits,
        token: None,
    };
    let arrived = receive_state(from, begin, &ctx).await?;
    // The source is whatever URL the client named: the state it sent must belong to the
    // owner whose secret the client gave, or the cloud would launder a stranger's worker.
    if arrived.owner != owner_of(&secret) {
        return Err(MoveError::SourceRefused {
            code: ErrorCode::Unauthorized,
            message: "the source sent a worker of another owner".into(),
        });
    }
    let outcome = if destination == node.config.public_url {
        node.hosting
            .adopt(
                worker,
                arrived.owner,
                arrived.module,
                arrived.snapshot,
                None,
            )
            .await
            .map(|(last_seq, snapshot)| {
                node.chunks.put(snapshot.bodies());
                last_seq
            })
            .map_err(MoveError::from)
    } else {
        let package = Package {
            worker,
            owner: arrived.owner,
            module: arrived.module,
            snapshot: arrived.snapshot,
        };
        forward(node, &package, destination).await
    };
    // Only now may the source drop its copy: the worker runs at the destination.
    let answer = match &outcome {
        Ok(last_seq) => Frame::StateAdopted {
            worker,
            last_seq: *last_seq,
        },
        Err(e) => worker_error(e.code(), worker, e),
    };
    let _ = from.send(answer).await;
    outcome.map(|last_seq| (last_seq, replies.into_values().collect()))
}
