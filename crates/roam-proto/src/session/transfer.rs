//! The progress of one state transfer, as its receiver tracks it: which module bytes and
//! how many chunk bodies are still due. Both sessions use it, since a node receives
//! state on offload and handoff and a client receives it on return.

use crate::error::ProtocolError;
use crate::frame::{Frame, ModuleHash, WorkerId};
use crate::session::event::Event;

/// Where the receiver of a state transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiveStage {
    /// StateBegin arrived; this side has yet to send its StateNeed.
    Deciding,
    /// Module bytes are arriving; `received` of the module's bytes are in, and
    /// `chunks_due` bodies will follow them.
    Module {
        /// Module bytes received so far: the offset the next piece must start at.
        received: u32,
        /// Chunk bodies asked for.
        chunks_due: u64,
    },
    /// Chunk bodies are arriving (the module, if it was asked for, is complete).
    Chunks {
        /// Chunk bodies asked for and not yet received.
        remaining: u64,
    },
    /// StateEnd arrived; this side restores the worker and then sends StateAdopted or an
    /// Error.
    Restoring,
}

/// A state transfer this side receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Incoming {
    /// The worker moving.
    pub worker: WorkerId,
    /// Its module, from StateBegin.
    pub module_hash: ModuleHash,
    /// The module's length, from StateBegin.
    pub module_len: u32,
    /// How far the transfer has come.
    pub stage: ReceiveStage,
    /// Whether the sender said the last manifest is final and the worker may run before
    /// the bodies arrive (StateResumable, version 4).
    pub resumable: bool,
    /// Whether this side runs the worker already (StateResumed sent).
    pub resumed: bool,
    /// Whether a StateRound may end the round before it early (version 8): the bodies of
    /// that round not sent are then no longer due.
    pub rounds_end_early: bool,
}

impl Incoming {
    /// A transfer whose StateBegin arrived on a connection of protocol `version`.
    pub(crate) fn begin(
        worker: WorkerId,
        module_hash: ModuleHash,
        module_len: u32,
        version: Option<u16>,
    ) -> Incoming {
        Incoming {
            worker,
            module_hash,
            module_len,
            stage: ReceiveStage::Deciding,
            resumable: false,
            resumed: false,
            rounds_end_early: version.is_some_and(|v| v >= 8),
        }
    }

    /// Records this side's StateResumed; false if it may not be sent now: only after the
    /// sender's StateResumable, once the module is in and before StateEnd, and only once.
    pub(crate) fn sent_resumed(&mut self) -> bool {
        if self.resumable && !self.resumed && matches!(self.stage, ReceiveStage::Chunks { .. }) {
            self.resumed = true;
            true
        } else {
            false
        }
    }

    /// Whether this side may send a ChunkWant: its worker runs and bodies are still due.
    pub(crate) fn may_want(&self) -> bool {
        self.resumed && matches!(self.stage, ReceiveStage::Chunks { .. })
    }

    /// The state's name for messages.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.stage {
            ReceiveStage::Deciding => "ReceivingState(Deciding)",
            ReceiveStage::Module { .. } => "ReceivingState(Module)",
            ReceiveStage::Chunks { .. } => "ReceivingState(Chunks)",
            ReceiveStage::Restoring => "ReceivingState(Restoring)",
        }
    }

    fn unexpected(&self, frame: &Frame) -> ProtocolError {
        ProtocolError::UnexpectedFrame {
            frame: frame.name(),
            state: self.state_name(),
            worker: frame.worker(),
        }
    }

    /// Records this side's StateNeed; false if it may not be sent now.
    pub(crate) fn sent_need(&mut self, module: bool, chunks: usize) -> bool {
        if self.stage != ReceiveStage::Deciding {
            return false;
        }
        let chunks = chunks as u64;
        self.stage = if module && self.module_len > 0 {
            ReceiveStage::Module {
                received: 0,
                chunks_due: chunks,
            }
        } else {
            ReceiveStage::Chunks { remaining: chunks }
        };
        true
    }

    /// Takes a ModuleData, ChunkData, StateRound, StateResumable or StateEnd of this transfer. A refusal aborts the
    /// transfer; the caller drops it.
    pub(crate) fn receive<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        let worker = self.worker;
        match (frame, self.stage) {
            (
                Frame::ModuleData {
                    module_hash,
                    offset,
                    bytes,
                },
                ReceiveStage::Module {
                    received,
                    chunks_due,
                },
            ) => {
                if *module_hash != self.module_hash {
                    return Err(ProtocolError::ModuleHashMismatch {
                        worker,
                        expected: self.module_hash,
                        found: *module_hash,
                    });
                }
                if *offset != received {
                    return Err(ProtocolError::ModuleOffset {
                        worker,
                        expected: received,
                        found: *offset,
                    });
                }
                let end = u64::from(*offset) + bytes.len() as u64;
                if end > u64::from(self.module_len) {
                    return Err(ProtocolError::ModuleOverrun {
                        worker,
                        offset: *offset,
                        len: bytes.len() as u64,
                        module_len: self.module_len,
                    });
                }
                // end <= module_len, a u32.
                let received = end as u32;
                let complete = received == self.module_len;
                self.stage = if complete {
                    ReceiveStage::Chunks {
                        remaining: chunks_due,
                    }
                } else {
                    ReceiveStage::Module {
                        received,
                        chunks_due,
                    }
                };
                Ok(Event::ModuleData {
                    worker,
                    module_hash,
                    offset: *offset,
                    bytes,
                    complete,
                })
            }
            (Frame::ChunkData { bodies, .. }, ReceiveStage::Chunks { remaining }) => {
                let count = bodies.len() as u64;
                if count > remaining {
                    return Err(ProtocolError::TooManyBodies {
                        worker,
                        count,
                        remaining,
                    });
                }
                self.stage = ReceiveStage::Chunks {
                    remaining: remaining - count,
                };
                Ok(Event::ChunkData { worker, bodies })
            }
            (
                Frame::StateRound {
                    bodies, manifest, ..
                },
                ReceiveStage::Chunks { remaining },
            ) if !self.resumable && (remaining == 0 || self.rounds_end_early) => {
                self.stage = ReceiveStage::Chunks {
                    remaining: u64::from(*bodies),
                };
                Ok(Event::StateRound {
                    worker,
                    bodies: *bodies,
                    manifest,
                })
            }
            (
                Frame::StateResumable { .. },
                ReceiveStage::Module { .. } | ReceiveStage::Chunks { .. },
            ) if !self.resumable => {
                self.resumable = true;
                Ok(Event::StateResumable { worker })
            }
            (Frame::StateEnd { .. }, ReceiveStage::Module { received, .. }) => {
                Err(ProtocolError::ModuleIncomplete {
                    worker,
                    received,
                    module_len: self.module_len,
                })
            }
            (Frame::StateEnd { .. }, ReceiveStage::Chunks { remaining }) => {
                if remaining > 0 {
                    return Err(ProtocolError::ChunksIncomplete { worker, remaining });
                }
                self.stage = ReceiveStage::Restoring;
                Ok(Event::TransferComplete { worker })
            }
            _ => Err(self.unexpected(frame)),
        }
    }
}

/// Where the sender of a state transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendStage {
    /// The peer asked for the worker back (Return); this side finishes the message in
    /// progress, captures the worker and then sends StateBegin.
    Preparing,
    /// StateBegin sent; waiting for the receiver's StateNeed.
    AwaitNeed,
    /// StateNeed arrived; this side sends what it asked for, then StateEnd.
    Sending,
    /// StateResumable sent (version 4): this side sends the bodies still due, those the
    /// receiver wants first, then StateEnd; the receiver may say StateResumed meanwhile.
    SendingResumable,
    /// StateEnd sent; waiting for StateAdopted.
    AwaitAdopted,
    /// StateEnd sent after StateResumable: waiting for StateAdopted, which the receiver
    /// sends once it holds every body (a StateResumed or ChunkWant that crossed StateEnd
    /// may still come).
    AwaitAdoptedResumable,
}

impl SendStage {
    /// Takes a frame the receiver of `worker`'s state sent to this side, the sender:
    /// StateNeed while awaiting it (the stage moves on to Sending), StateAdopted at the end,
    /// and after StateResumable also StateResumed and ChunkWant.
    /// `None` when the frame is not valid at this stage.
    pub(crate) fn receive<'f>(&mut self, worker: WorkerId, frame: &'f Frame) -> Option<Event<'f>> {
        match (frame, *self) {
            (
                Frame::StateNeed {
                    worker: w,
                    module,
                    chunks,
                },
                SendStage::AwaitNeed,
            ) if *w == worker => {
                *self = SendStage::Sending;
                Some(Event::StateNeed {
                    worker,
                    module: *module,
                    chunks,
                })
            }
            (
                Frame::StateAdopted {
                    worker: w,
                    last_seq,
                },
                SendStage::AwaitAdopted | SendStage::AwaitAdoptedResumable,
            ) if *w == worker => Some(Event::StateAdopted {
                worker,
                last_seq: *last_seq,
            }),
            (
                Frame::StateResumed {
                    worker: w,
                    last_seq,
                },
                SendStage::SendingResumable | SendStage::AwaitAdoptedResumable,
            ) if *w == worker => Some(Event::StateResumed {
                worker,
                last_seq: *last_seq,
            }),
            (
                Frame::ChunkWant { worker: w, chunks },
                SendStage::SendingResumable | SendStage::AwaitAdoptedResumable,
            ) if *w == worker => Some(Event::ChunkWant { worker, chunks }),
            _ => None,
        }
    }

    pub(crate) fn state_name(self) -> &'static str {
        match self {
            SendStage::Preparing => "SendingState(Preparing)",
            SendStage::AwaitNeed => "SendingState(AwaitNeed)",
            SendStage::Sending => "SendingState(Sending)",
            SendStage::SendingResumable => "SendingState(SendingResumable)",
            SendStage::AwaitAdopted => "SendingState(AwaitAdopted)",
            SendStage::AwaitAdoptedResumable => "SendingState(AwaitAdoptedResumable)",
        }
    }
}
