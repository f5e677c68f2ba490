//! The node's view of one connection: which frames it accepts in which state, and the
//! progress of the transfer running on it.

use std::collections::BTreeSet;

use crate::code::{NodeRole, PeerKind};
use crate::error::{ProtocolError, SendFrameError};
use crate::frame::{Frame, WorkerId};
use crate::session::common::{common_frame, Common};
use crate::session::event::Event;
use crate::session::transfer::{Incoming, SendStage};
use crate::version::negotiate;

/// Where a node's connection stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Waiting for the peer's Hello; nothing else is accepted.
    AwaitHello,
    /// Connected: the peer may use workers, move them and query the registry.
    Ready,
    /// Receiving a worker's state (offload, handoff, relay).
    ReceivingState(Incoming),
    /// Sending a worker's state back to the peer (return, or the cloud fetching it).
    SendingState {
        /// The worker.
        worker: WorkerId,
        /// How far the transfer has come.
        stage: SendStage,
    },
    /// The connection is over: after a Goodbye or a connection-level Error either way,
    /// or a failed handshake.
    Closed,
}

impl NodeState {
    /// The state's name, as refusals spell it.
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::AwaitHello => "AwaitHello",
            NodeState::Ready => "Ready",
            NodeState::ReceivingState(incoming) => incoming.state_name(),
            NodeState::SendingState { stage, .. } => stage.state_name(),
            NodeState::Closed => "Closed",
        }
    }
}

/// The node's receiver state machine for one connection.
///
/// Feed it every frame received with [`on_frame`](NodeSession::on_frame), and every frame
/// about to be sent with [`on_send`](NodeSession::on_send). It refuses frames that are not
/// valid in its state and tells the node what an accepted frame asks for; it does no
/// work itself.
///
/// ```mermaid
/// stateDiagram-v2
///     [*] --> AwaitHello
///     AwaitHello --> Ready: Hello (common version)
///     AwaitHello --> Closed: anything else / no common version
///     Ready --> ReceivingState: StateBegin received
///     state ReceivingState {
///         [*] --> Deciding
///         Deciding --> Module: StateNeed sent (module)
///         Deciding --> Chunks: StateNeed sent (no module)
///         Module --> Module: ModuleData (contiguous)
///         Module --> Chunks: last ModuleData
///         Chunks --> Chunks: ChunkData
///         Chunks --> Restoring: StateEnd (all bodies in)
///     }
///     ReceivingState --> Ready: StateAdopted sent / Error either way
///     Ready --> SendingState: Return received
///     state SendingState {
///         [*] --> Preparing
///         Preparing --> AwaitNeed: StateBegin sent
///         AwaitNeed --> Sending: StateNeed received
///         Sending --> AwaitAdopted: StateEnd sent
///     }
///     SendingState --> Ready: StateAdopted received / Error either way
///     Ready --> Closed: Goodbye / Error without worker
///     ReceivingState --> Closed: Goodbye / Error without worker
///     SendingState --> Closed: Goodbye / Error without worker
/// ```
///
/// In `Ready` it accepts Ping, Pong, Attach, Post, MoveOut and Return for workers this
/// connection attached (an Attached sent, or a StateAdopted sent after receiving the
/// worker's state), StateBegin, Release (from a node peer or for an attached worker), and
/// on a cloud node Pull, Register, Heartbeat (after a Register) and ListNodes. During a
/// transfer it accepts only that transfer's frames, Ping, Pong, Goodbye and Error; the
/// frames of the transfer must come in order (module pieces contiguous and within the
/// module's length, chunk bodies only after StateNeed, StateEnd only when everything
/// asked for arrived).
///
/// A refused frame leaves the state as it was, except that a refusal in `AwaitHello`
/// closes the session and a refused frame of the transfer in progress abandons that
/// transfer (back to `Ready`).
#[derive(Debug, Clone)]
pub struct NodeSession {
    role: NodeRole,
    state: NodeState,
    version: Option<u16>,
    peer: Option<PeerKind>,
    registered: bool,
    attached: BTreeSet<WorkerId>,
    /// Workers this connection said are on their way here (Expect, answered with a
    /// budget): it may Post to them before it attaches, and only Post.
    expected: BTreeSet<WorkerId>,
}

impl NodeSession {
    /// A session for a connection just accepted by a node of `role`.
    pub fn new(role: NodeRole) -> NodeSession {
        NodeSession {
            role,
            state: NodeState::AwaitHello,
            version: None,
            peer: None,
            registered: false,
            attached: BTreeSet::new(),
            expected: BTreeSet::new(),
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// Whether the connection should be closed now.
    pub fn is_closed(&self) -> bool {
        self.state == NodeState::Closed
    }

    /// The node's role, as given to [`new`](NodeSession::new).
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The version negotiated at Hello.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// What the peer said it is at Hello.
    pub fn peer(&self) -> Option<PeerKind> {
        self.peer
    }

    /// Whether this connection may use `worker`.
    pub fn is_attached(&self, worker: WorkerId) -> bool {
        self.attached.contains(&worker)
    }

    /// Whether this connection may Post to `worker` ahead of its arrival (it sent Expect
    /// and the node answered with a budget) without having attached it.
    pub fn is_expected(&self, worker: WorkerId) -> bool {
        self.expected.contains(&worker)
    }

    fn refuse(&self, frame: &Frame) -> ProtocolError {
        match (&self.state, frame.worker()) {
            (NodeState::ReceivingState(Incoming { worker: moving, .. }), Some(found))
            | (NodeState::SendingState { worker: moving, .. }, Some(found))
                if *moving != found =>
            {
                ProtocolError::OtherWorker {
                    frame: frame.name(),
                    moving: *moving,
                    found,
                }
            }
            _ => ProtocolError::UnexpectedFrame {
                frame: frame.name(),
                state: self.state.name(),
                worker: frame.worker(),
            },
        }
    }

    fn moving(&self) -> Option<WorkerId> {
        match &self.state {
            NodeState::ReceivingState(incoming) => Some(incoming.worker),
            NodeState::SendingState { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// Takes a frame received from the peer: the [`Event`] to act on, or the refusal to
    /// send back (see [`ProtocolError::to_frame`]).
    pub fn on_frame<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        match self.state {
            NodeState::Closed => return Err(self.refuse(frame)),
            NodeState::AwaitHello => return self.on_hello(frame),
            _ => {}
        }
        match common_frame(frame, self.moving()) {
            Some((event, Common::Close)) => {
                self.state = NodeState::Closed;
                return Ok(event);
            }
            Some((event, Common::Abort)) => {
                self.state = NodeState::Ready;
                return Ok(event);
            }
            Some((event, Common::Stay)) => return Ok(event),
            None => {}
        }
        match &mut self.state {
            NodeState::Ready => self.on_ready(frame),
            NodeState::ReceivingState(incoming) => {
                let ours = match frame {
                    Frame::ModuleData { .. } => true,
                    Frame::ChunkData { worker, .. } | Frame::StateEnd { worker } => {
                        *worker == incoming.worker
                    }
                    // Pre-copy rounds are version 2.
                    Frame::StateRound { worker, .. } => {
                        *worker == incoming.worker && self.version.is_some_and(|v| v >= 2)
                    }
                    // Post-copy is version 4.
                    Frame::StateResumable { worker } => {
                        *worker == incoming.worker && self.version.is_some_and(|v| v >= 4)
                    }
                    _ => false,
                };
                if !ours {
                    return Err(self.refuse(frame));
                }
                incoming.receive(frame).inspect_err(|_| {
                    self.state = NodeState::Ready;
                })
            }
            NodeState::SendingState { worker, stage } => {
                let worker = *worker;
                match stage.receive(worker, frame) {
                    Some(event @ Event::StateAdopted { .. }) => {
                        // The worker stays attached, so its owner can still Release it here.
                        self.state = NodeState::Ready;
                        Ok(event)
                    }
                    Some(event) => Ok(event),
                    None => Err(self.refuse(frame)),
                }
            }
            NodeState::AwaitHello | NodeState::Closed => Err(self.refuse(frame)),
        }
    }

    fn on_hello<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        let Frame::Hello {
            min_version,
            max_version,
            peer,
            name,
        } = frame
        else {
            let refusal = self.refuse(frame);
            self.state = NodeState::Closed;
            return Err(refusal);
        };
        match negotiate(*min_version, *max_version) {
            Ok(version) => {
                self.state = NodeState::Ready;
                self.version = Some(version);
                self.peer = Some(*peer);
                Ok(Event::Hello {
                    version,
                    peer: *peer,
                    name,
                })
            }
            Err(e) => {
                self.state = NodeState::Closed;
                Err(e.into())
            }
        }
    }

    fn require_attached(&self, frame: &Frame, worker: WorkerId) -> Result<(), ProtocolError> {
        if self.attached.contains(&worker) {
            Ok(())
        } else {
            Err(ProtocolError::NotAttached {
                frame: frame.name(),
                worker,
            })
        }
    }

    /// Posts and Replays may also go to a worker this connection expects.
    fn require_attached_or_expected(
        &self,
        frame: &Frame,
        worker: WorkerId,
    ) -> Result<(), ProtocolError> {
        if self.attached.contains(&worker) || self.expected.contains(&worker) {
            Ok(())
        } else {
            Err(ProtocolError::NotAttached {
                frame: frame.name(),
                worker,
            })
        }
    }

    fn require_cloud(&self, frame: &Frame) -> Result<(), ProtocolError> {
        match self.role {
            NodeRole::Cloud => Ok(()),
            NodeRole::Edge => Err(ProtocolError::CloudOnly {
                frame: frame.name(),
            }),
        }
    }

    /// A Return, ReturnSince or Checkpoint for an attached `worker`: its state goes out next.
    fn start_sending(&mut self, frame: &Frame, worker: WorkerId) -> Result<(), ProtocolError> {
        self.require_attached(frame, worker)?;
        self.state = NodeState::SendingState {
            worker,
            stage: SendStage::Preparing,
        };
        Ok(())
    }

    fn on_ready<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        match frame {
            Frame::Attach { worker, secret } => Ok(Event::Attach {
                worker: *worker,
                secret,
            }),
            Frame::Post {
                worker,
                seq,
                payload,
            } => {
                self.require_attached_or_expected(frame, *worker)?;
                Ok(Event::Post {
                    worker: *worker,
                    seq: *seq,
                    payload,
                })
            }
            // Replays are version 4.
            Frame::Replay { .. } if self.version.is_none_or(|v| v < 4) => Err(self.refuse(frame)),
            Frame::Replay {
                worker,
                seq,
                payload,
            } => {
                self.require_attached_or_expected(frame, *worker)?;
                Ok(Event::Replay {
                    worker: *worker,
                    seq: *seq,
                    payload,
                })
            }
            // Expect is version 5, and a client's.
            Frame::Expect { .. }
                if self.version.is_none_or(|v| v < 5) || self.peer != Some(PeerKind::Client) =>
            {
                Err(self.refuse(frame))
            }
            Frame::Expect { worker, secret } => Ok(Event::Expect {
                worker: *worker,
                secret,
            }),
            Frame::StateBegin {
                worker,
                module_hash,
                module_len,
                owner,
                token,
                manifest,
            } => {
                self.state = NodeState::ReceivingState(Incoming::begin(
                    *worker,
                    *module_hash,
                    *module_len,
                    self.version,
                ));
                Ok(Event::StateBegin {
                    worker: *worker,
                    module_hash,
                    module_len: *module_len,
                    owner,
                    token: token.as_ref(),
                    manifest,
                })
            }
            Frame::MoveOut {
                worker,
                destination,
            } => {
                self.require_attached(frame, *worker)?;
                Ok(Event::MoveOut {
                    worker: *worker,
                    destination,
                })
            }
            Frame::Return { worker } => {
                self.start_sending(frame, *worker)?;
                Ok(Event::Return {
                    worker: *worker,
                    delivered: None,
                })
            }
            // ReturnSince is version 7, and only the cloud sends it.
            Frame::ReturnSince { .. }
                if self.version.is_none_or(|v| v < 7) || self.peer != Some(PeerKind::Node) =>
            {
                Err(self.refuse(frame))
            }
            Frame::ReturnSince { worker, delivered } => {
                self.start_sending(frame, *worker)?;
                Ok(Event::Return {
                    worker: *worker,
                    delivered: Some(*delivered),
                })
            }
            // Checkpoints are version 3.
            Frame::Checkpoint { .. } if self.version.is_none_or(|v| v < 3) => {
                Err(self.refuse(frame))
            }
            Frame::Checkpoint { worker } => {
                self.start_sending(frame, *worker)?;
                Ok(Event::Checkpoint { worker: *worker })
            }
            Frame::Release { worker, last_seq } => {
                if self.peer != Some(PeerKind::Node) {
                    self.require_attached(frame, *worker)?;
                }
                Ok(Event::Release {
                    worker: *worker,
                    last_seq: *last_seq,
                })
            }
            Frame::Pull {
                worker,
                secret,
                source,
                destination,
            } => {
                self.require_cloud(frame)?;
                Ok(Event::Pull {
                    worker: *worker,
                    secret,
                    source,
                    destination,
                    delivered: None,
                })
            }
            // PullSince is version 6.
            Frame::PullSince { .. } if self.version.is_none_or(|v| v < 6) => {
                Err(self.refuse(frame))
            }
            Frame::PullSince {
                worker,
                secret,
                source,
                destination,
                delivered,
            } => {
                self.require_cloud(frame)?;
                Ok(Event::Pull {
                    worker: *worker,
                    secret,
                    source,
                    destination,
                    delivered: Some(*delivered),
                })
            }
            Frame::Register(node) => {
                self.require_cloud(frame)?;
                self.registered = true;
                Ok(Event::Register(node))
            }
            Frame::Heartbeat {
                workers,
                free_memory,
            } => {
                self.require_cloud(frame)?;
                if !self.registered {
                    return Err(ProtocolError::UnexpectedFrame {
                        frame: frame.name(),
                        state: "Ready (no Register yet)",
                        worker: None,
                    });
                }
                Ok(Event::Heartbeat {
                    workers: *workers,
                    free_memory: *free_memory,
                })
            }
            Frame::ListNodes => {
                self.require_cloud(frame)?;
                Ok(Event::ListNodes)
            }
            _ => Err(self.refuse(frame)),
        }
    }

    /// Records a frame this node is about to send, so the session follows the transfer
    /// and knows which workers the connection attached. Refuses a frame that the peer
    /// would refuse in the current state: a bug in the node, not the peer's fault.
    ///
    /// Sending an Error without a worker, or a Goodbye, closes the session; an Error for
    /// the worker of the transfer in progress abandons the transfer.
    pub fn on_send(&mut self, frame: &Frame) -> Result<(), SendFrameError> {
        // Pre-copy rounds are version 2.
        let rounds = self.version.is_some_and(|v| v >= 2);
        // Post-copy is version 4.
        let post_copy = self.version.is_some_and(|v| v >= 4);
        let state_name = self.state.name();
        let not_valid = || SendFrameError::NotValid {
            frame: frame.name(),
            state: state_name,
        };
        let moving = self.moving();
        match (&mut self.state, frame) {
            (NodeState::Closed, _) => Err(not_valid()),
            (_, Frame::Goodbye { .. }) | (_, Frame::Error { worker: None, .. }) => {
                self.state = NodeState::Closed;
                Ok(())
            }
            (NodeState::AwaitHello, _) => Err(not_valid()),
            (
                _,
                Frame::Error {
                    worker: Some(worker),
                    ..
                },
            ) => {
                if moving == Some(*worker) {
                    self.state = NodeState::Ready;
                }
                Ok(())
            }
            (_, Frame::Ping { .. } | Frame::Pong { .. }) => Ok(()),
            (NodeState::Ready, frame) => match frame {
                Frame::Welcome { .. }
                | Frame::Reply { .. }
                | Frame::Handled { .. }
                | Frame::WorkerFailed { .. }
                | Frame::Nodes { .. } => Ok(()),
                Frame::Attached { worker, .. } => {
                    self.attached.insert(*worker);
                    Ok(())
                }
                Frame::Expecting { .. } if self.version.is_none_or(|v| v < 5) => Err(not_valid()),
                Frame::Expecting { worker, budget } => {
                    if *budget > 0 {
                        self.expected.insert(*worker);
                    }
                    Ok(())
                }
                Frame::Moved { worker, .. } => {
                    self.attached.remove(worker);
                    self.expected.remove(worker);
                    Ok(())
                }
                _ => Err(not_valid()),
            },
            (NodeState::ReceivingState(incoming), frame) => {
                if let Some(found) = frame.worker() {
                    if found != incoming.worker {
                        return Err(SendFrameError::OtherWorker {
                            frame: frame.name(),
                            moving: incoming.worker,
                            found,
                        });
                    }
                }
                match frame {
                    Frame::StateNeed { module, chunks, .. }
                        if incoming.sent_need(*module, chunks.len()) =>
                    {
                        Ok(())
                    }
                    Frame::StateResumed { .. } if incoming.sent_resumed() => Ok(()),
                    Frame::ChunkWant { .. } if incoming.may_want() => Ok(()),
                    Frame::StateAdopted { worker, .. }
                        if incoming.stage == crate::ReceiveStage::Restoring =>
                    {
                        self.attached.insert(*worker);
                        self.state = NodeState::Ready;
                        Ok(())
                    }
                    _ => Err(not_valid()),
                }
            }
            (NodeState::SendingState { worker, stage }, frame) => {
                if let Some(found) = frame.worker() {
                    if found != *worker {
                        return Err(SendFrameError::OtherWorker {
                            frame: frame.name(),
                            moving: *worker,
                            found,
                        });
                    }
                }
                match (frame, *stage) {
                    // The message in progress finishes before the worker is captured.
                    (
                        Frame::Reply { .. } | Frame::Handled { .. } | Frame::WorkerFailed { .. },
                        SendStage::Preparing,
                    ) => Ok(()),
                    (Frame::StateBegin { .. }, SendStage::Preparing) => {
                        *stage = SendStage::AwaitNeed;
                        Ok(())
                    }
                    (Frame::StateRound { .. }, SendStage::Sending) if !rounds => Err(not_valid()),
                    (
                        Frame::ModuleData { .. }
                        | Frame::ChunkData { .. }
                        | Frame::StateRound { .. },
                        SendStage::Sending,
                    ) => Ok(()),
                    (Frame::StateResumable { .. }, SendStage::Sending) if post_copy => {
                        *stage = SendStage::SendingResumable;
                        Ok(())
                    }
                    (
                        Frame::ModuleData { .. } | Frame::ChunkData { .. },
                        SendStage::SendingResumable,
                    ) => Ok(()),
                    (Frame::StateEnd { .. }, SendStage::Sending) => {
                        *stage = SendStage::AwaitAdopted;
                        Ok(())
                    }
                    (Frame::StateEnd { .. }, SendStage::SendingResumable) => {
                        *stage = SendStage::AwaitAdoptedResumable;
                        Ok(())
                    }
                    _ => Err(not_valid()),
                }
            }
        }
    }
}
