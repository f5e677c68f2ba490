//! The client's view of one connection to a node (also a node's, when it connects to
//! another node to hand a worker over or to fetch one).

use std::collections::BTreeSet;

use crate::code::NodeRole;
use crate::error::{ProtocolError, SendFrameError};
use crate::frame::{Frame, WorkerId};
use crate::session::common::{common_frame, Common};
use crate::session::event::Event;
use crate::session::transfer::{Incoming, ReceiveStage, SendStage};
use crate::version::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Where a client's connection stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// Hello sent; waiting for the node's Welcome.
    AwaitWelcome,
    /// Connected.
    Ready,
    /// Sending a worker's state to the node (offload, or a node handing a worker over).
    SendingState {
        /// The worker.
        worker: WorkerId,
        /// How far the transfer has come; never [`SendStage::Preparing`] here.
        stage: SendStage,
    },
    /// Return sent; the node finishes the message in progress, then sends StateBegin.
    Returning {
        /// The worker coming back.
        worker: WorkerId,
    },
    /// Receiving a worker's state from the node (return).
    ReceivingState(Incoming),
    /// The connection is over.
    Closed,
}

impl ClientState {
    /// The state's name, as refusals spell it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientState::AwaitWelcome => "AwaitWelcome",
            ClientState::Ready => "Ready",
            ClientState::SendingState { stage, .. } => stage.state_name(),
            ClientState::Returning { .. } => "Returning",
            ClientState::ReceivingState(incoming) => incoming.state_name(),
            ClientState::Closed => "Closed",
        }
    }
}

/// The client's state machine for one connection to a node.
///
/// Feed it every frame received with [`on_frame`](ClientSession::on_frame) and every
/// frame about to be sent with [`on_send`](ClientSession::on_send), starting with the
/// Hello.
///
/// ```mermaid
/// stateDiagram-v2
///     [*] --> AwaitWelcome
///     AwaitWelcome --> Ready: Welcome (version this side speaks)
///     AwaitWelcome --> Closed: Error / anything else
///     Ready --> SendingState: StateBegin sent
///     state SendingState {
///         [*] --> AwaitNeed
///         AwaitNeed --> Sending: StateNeed received
///         Sending --> AwaitAdopted: StateEnd sent
///     }
///     SendingState --> Ready: StateAdopted received / Error either way
///     Ready --> Returning: Return sent
///     Returning --> ReceivingState: StateBegin received
///     state ReceivingState {
///         [*] --> Deciding
///         Deciding --> Module: StateNeed sent (module)
///         Deciding --> Chunks: StateNeed sent (no module)
///         Module --> Chunks: last ModuleData
///         Chunks --> Restoring: StateEnd (all bodies in)
///     }
///     ReceivingState --> Ready: StateAdopted sent / Error either way
///     Ready --> Closed: Goodbye / Error without worker
/// ```
///
/// In `Ready` it accepts Ping, Pong, Attached, Moved and Nodes, and Reply, Handled and
/// WorkerFailed for workers this connection attached (an Attached received, a
/// StateAdopted received after sending the worker's state, or a PullSince sent: the cloud
/// sends the source's last replies ahead of Moved). In `Returning` it still takes
/// the replies of the message the node finishes before it captures the worker. A refused
/// frame leaves the state as it was, except in `AwaitWelcome` (the session closes) and
/// for a refused frame of the transfer in progress (the transfer is abandoned).
#[derive(Debug, Clone)]
pub struct ClientSession {
    state: ClientState,
    offered: (u16, u16),
    version: Option<u16>,
    node_role: Option<NodeRole>,
    attached: BTreeSet<WorkerId>,
}

impl Default for ClientSession {
    fn default() -> Self {
        ClientSession::new()
    }
}

impl ClientSession {
    /// A session for a connection just opened to a node. Send a Hello first.
    pub fn new() -> ClientSession {
        ClientSession {
            state: ClientState::AwaitWelcome,
            offered: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            version: None,
            node_role: None,
            attached: BTreeSet::new(),
        }
    }

    /// The Hello this side should open with: every version it speaks.
    pub fn hello(peer: crate::PeerKind, name: &str) -> Frame {
        Frame::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            peer,
            name: name.to_owned(),
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// Whether the connection should be closed now.
    pub fn is_closed(&self) -> bool {
        self.state == ClientState::Closed
    }

    /// The version the node chose.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// The node's role, from its Welcome.
    pub fn node_role(&self) -> Option<NodeRole> {
        self.node_role
    }

    /// Whether this connection may use `worker`.
    pub fn is_attached(&self, worker: WorkerId) -> bool {
        self.attached.contains(&worker)
    }

    fn moving(&self) -> Option<WorkerId> {
        match &self.state {
            ClientState::SendingState { worker, .. } | ClientState::Returning { worker } => {
                Some(*worker)
            }
            ClientState::ReceivingState(incoming) => Some(incoming.worker),
            _ => None,
        }
    }

    fn refuse(&self, frame: &Frame) -> ProtocolError {
        match (self.moving(), frame.worker()) {
            (Some(moving), Some(found)) if moving != found => ProtocolError::OtherWorker {
                frame: frame.name(),
                moving,
                found,
            },
            _ => ProtocolError::UnexpectedFrame {
                frame: frame.name(),
                state: self.state.name(),
                worker: frame.worker(),
            },
        }
    }

    /// Takes a frame received from the node: the [`Event`] to act on, or the refusal to
    /// send back (see [`ProtocolError::to_frame`]).
    pub fn on_frame<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        if self.state == ClientState::Closed {
            return Err(self.refuse(frame));
        }
        match common_frame(frame, self.moving()) {
            Some((event, Common::Close)) => {
                self.state = ClientState::Closed;
                return Ok(event);
            }
            Some((event, Common::Abort)) => {
                self.state = ClientState::Ready;
                return Ok(event);
            }
            Some((event, Common::Stay)) if self.state != ClientState::AwaitWelcome => {
                return Ok(event);
            }
            _ => {}
        }
        match &mut self.state {
            ClientState::AwaitWelcome => self.on_welcome(frame),
            ClientState::Ready => self.on_ready(frame),
            ClientState::SendingState { worker, stage } => {
                let worker = *worker;
                match stage.receive(worker, frame) {
                    Some(event @ Event::StateAdopted { .. }) => {
                        self.attached.insert(worker);
                        self.state = ClientState::Ready;
                        Ok(event)
                    }
                    Some(event) => Ok(event),
                    None => Err(self.refuse(frame)),
                }
            }
            ClientState::Returning { worker } => {
                let worker = *worker;
                match frame {
                    Frame::StateBegin {
                        worker: w,
                        module_hash,
                        module_len,
                        owner,
                        token,
                        manifest,
                    } if *w == worker => {
                        self.state = ClientState::ReceivingState(Incoming::begin(
                            worker,
                            *module_hash,
                            *module_len,
                            self.version,
                        ));
                        Ok(Event::StateBegin {
                            worker,
                            module_hash,
                            module_len: *module_len,
                            owner,
                            token: token.as_ref(),
                            manifest,
                        })
                    }
                    Frame::Reply { worker: w, .. }
                    | Frame::Handled { worker: w, .. }
                    | Frame::WorkerFailed { worker: w, .. }
                        if *w == worker =>
                    {
                        Ok(message_event(frame))
                    }
                    _ => Err(self.refuse(frame)),
                }
            }
            ClientState::ReceivingState(incoming) => {
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
                    self.state = ClientState::Ready;
                })
            }
            ClientState::Closed => Err(self.refuse(frame)),
        }
    }

    fn on_welcome<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        let Frame::Welcome {
            version,
            node_id,
            role,
        } = frame
        else {
            let refusal = self.refuse(frame);
            self.state = ClientState::Closed;
            return Err(refusal);
        };
        let (min, max) = self.offered;
        if !(min..=max).contains(version) {
            self.state = ClientState::Closed;
            return Err(ProtocolError::WelcomeVersion {
                version: *version,
                min,
                max,
            });
        }
        self.state = ClientState::Ready;
        self.version = Some(*version);
        self.node_role = Some(*role);
        Ok(Event::Welcome {
            version: *version,
            node_id,
            role: *role,
        })
    }

    fn on_ready<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        match frame {
            Frame::Attached { worker, last_seq } => {
                self.attached.insert(*worker);
                Ok(Event::Attached {
                    worker: *worker,
                    last_seq: *last_seq,
                })
            }
            // Expecting is version 5. With a budget, the node may answer the messages it
            // holds before this side attaches (the worker arrived meanwhile).
            Frame::Expecting { .. } if self.version.is_none_or(|v| v < 5) => {
                Err(self.refuse(frame))
            }
            Frame::Expecting { worker, budget } => {
                if *budget > 0 {
                    self.attached.insert(*worker);
                }
                Ok(Event::Expecting {
                    worker: *worker,
                    budget: *budget,
                })
            }
            Frame::Reply { worker, .. }
            | Frame::Handled { worker, .. }
            | Frame::WorkerFailed { worker, .. } => {
                if !self.attached.contains(worker) {
                    return Err(ProtocolError::NotAttached {
                        frame: frame.name(),
                        worker: *worker,
                    });
                }
                Ok(message_event(frame))
            }
            Frame::Moved {
                worker,
                destination,
                last_seq,
            } => {
                self.attached.remove(worker);
                Ok(Event::Moved {
                    worker: *worker,
                    destination,
                    last_seq: *last_seq,
                })
            }
            Frame::Nodes { nodes } => Ok(Event::Nodes(nodes)),
            _ => Err(self.refuse(frame)),
        }
    }

    /// Records a frame this side is about to send, starting with the Hello. Refuses a
    /// frame the node would refuse in the current state: a bug in the caller.
    ///
    /// Sending StateBegin starts a transfer to the node, sending Return waits for one from
    /// it; an Error without a worker, or a Goodbye, closes the session.
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
        if let (Some(moving), Some(found)) = (moving, frame.worker()) {
            if moving != found && !matches!(frame, Frame::Error { .. }) {
                return Err(SendFrameError::OtherWorker {
                    frame: frame.name(),
                    moving,
                    found,
                });
            }
        }
        match (&mut self.state, frame) {
            (ClientState::Closed, _) => Err(not_valid()),
            (_, Frame::Goodbye { .. }) | (_, Frame::Error { worker: None, .. }) => {
                self.state = ClientState::Closed;
                Ok(())
            }
            (
                ClientState::AwaitWelcome,
                Frame::Hello {
                    min_version,
                    max_version,
                    ..
                },
            ) => {
                self.offered = (*min_version, *max_version);
                Ok(())
            }
            (ClientState::AwaitWelcome, _) => Err(not_valid()),
            (
                _,
                Frame::Error {
                    worker: Some(worker),
                    ..
                },
            ) => {
                if moving == Some(*worker) {
                    self.state = ClientState::Ready;
                }
                Ok(())
            }
            (_, Frame::Ping { .. } | Frame::Pong { .. }) => Ok(()),
            (ClientState::Ready, frame) => match frame {
                // PullSince is version 6: the cloud sends, ahead of Moved, the replies the
                // source kept of the messages after the one named.
                Frame::PullSince { .. } if self.version.is_none_or(|v| v < 6) => Err(not_valid()),
                Frame::PullSince { worker, .. } => {
                    self.attached.insert(*worker);
                    Ok(())
                }
                Frame::Replay { .. } if !post_copy => Err(not_valid()),
                Frame::Expect { .. } if self.version.is_none_or(|v| v < 5) => Err(not_valid()),
                // ReturnSince is version 7 (the cloud fetching a worker for a fallback).
                Frame::ReturnSince { .. } if self.version.is_none_or(|v| v < 7) => Err(not_valid()),
                Frame::Attach { .. }
                | Frame::Expect { .. }
                | Frame::Replay { .. }
                | Frame::Post { .. }
                | Frame::MoveOut { .. }
                | Frame::Pull { .. }
                | Frame::Release { .. }
                | Frame::Register(_)
                | Frame::Heartbeat { .. }
                | Frame::ListNodes => Ok(()),
                Frame::StateBegin { worker, .. } => {
                    self.state = ClientState::SendingState {
                        worker: *worker,
                        stage: SendStage::AwaitNeed,
                    };
                    Ok(())
                }
                Frame::Return { worker }
                | Frame::ReturnSince { worker, .. }
                | Frame::Checkpoint { worker } => {
                    self.state = ClientState::Returning { worker: *worker };
                    Ok(())
                }
                _ => Err(not_valid()),
            },
            (ClientState::SendingState { stage, .. }, frame) => match (frame, *stage) {
                (Frame::StateRound { .. }, SendStage::Sending) if !rounds => Err(not_valid()),
                (
                    Frame::ModuleData { .. } | Frame::ChunkData { .. } | Frame::StateRound { .. },
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
            },
            (ClientState::ReceivingState(incoming), frame) => match frame {
                Frame::StateNeed { module, chunks, .. }
                    if incoming.sent_need(*module, chunks.len()) =>
                {
                    Ok(())
                }
                Frame::StateResumed { .. } if incoming.sent_resumed() => Ok(()),
                Frame::ChunkWant { .. } if incoming.may_want() => Ok(()),
                Frame::StateAdopted { worker, .. } if incoming.stage == ReceiveStage::Restoring => {
                    // The worker runs here now; the node drops its copy at StateAdopted.
                    self.attached.remove(worker);
                    self.state = ClientState::Ready;
                    Ok(())
                }
                _ => Err(not_valid()),
            },
            (ClientState::Returning { .. }, _) => Err(not_valid()),
        }
    }
}

/// The event of a Reply, Handled or WorkerFailed.
fn message_event(frame: &Frame) -> Event<'_> {
    match frame {
        Frame::Reply {
            worker,
            seq,
            index,
            payload,
        } => Event::Reply {
            worker: *worker,
            seq: *seq,
            index: *index,
            payload,
        },
        Frame::Handled {
            worker,
            seq,
            replies,
        } => Event::Handled {
            worker: *worker,
            seq: *seq,
            replies: *replies,
        },
        Frame::WorkerFailed {
            worker,
            seq,
            reason,
        } => Event::WorkerFailed {
            worker: *worker,
            seq: *seq,
            reason,
        },
        _ => unreachable!("message_event takes only Reply, Handled and WorkerFailed"),
    }
}
