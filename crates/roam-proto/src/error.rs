//! The error of each operation: one enum per operation, so a caller matches only the
//! failures that operation can have. Each variant's doc comment is its message.

use crate::code::ErrorCode;
use crate::frame::{Frame, ModuleHash, WorkerId};

/// Formats a module hash as lowercase hex, the way people compare them.
fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why bytes could not be decoded into a [`Frame`](crate::Frame).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeFrameError {
    /// the frame is {len} bytes, more than the cap of {max} bytes
    #[error("the frame is {len} bytes, more than the cap of {max} bytes")]
    TooLarge {
        /// Length of the input, or the length its header claims.
        len: u64,
        /// The cap it broke.
        max: u32,
    },
    /// the input ends in the middle of the {frame}
    #[error("the input ends in the middle of the {frame}")]
    Truncated {
        /// The frame (or `header`) that was cut short.
        frame: &'static str,
    },
    /// unknown frame type 0x{frame_type:02x}
    #[error("unknown frame type 0x{frame_type:02x}")]
    UnknownType {
        /// The type byte found.
        frame_type: u8,
    },
    /// the {frame} header sets flags 0x{flags:02x}, but no flags are defined
    #[error("the {frame} header sets flags 0x{flags:02x}, but no flags are defined")]
    UnknownFlags {
        /// The frame.
        frame: &'static str,
        /// The flag bits found.
        flags: u8,
    },
    /// the {frame} header's reserved field is 0x{reserved:04x}, not zero
    #[error("the {frame} header's reserved field is 0x{reserved:04x}, not zero")]
    ReservedNotZero {
        /// The frame.
        frame: &'static str,
        /// The value found.
        reserved: u16,
    },
    /// the {frame} header claims a body of {claimed} bytes, but {actual} bytes follow
    #[error("the {frame} header claims a body of {claimed} bytes, but {actual} bytes follow")]
    LengthMismatch {
        /// The frame.
        frame: &'static str,
        /// The body length the header claims.
        claimed: u32,
        /// The bytes after the header.
        actual: u64,
    },
    /// {count} unexpected bytes follow the end of the {frame}
    #[error("{count} unexpected bytes follow the end of the {frame}")]
    TrailingBytes {
        /// The frame.
        frame: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// the {frame}'s {field} has invalid tag {tag}
    #[error("the {frame}'s {field} has invalid tag {tag}")]
    InvalidTag {
        /// The frame.
        frame: &'static str,
        /// The field.
        field: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// the {frame}'s {field} is {len} bytes, more than the cap of {max}
    #[error("the {frame}'s {field} is {len} bytes, more than the cap of {max}")]
    StringTooLong {
        /// The frame.
        frame: &'static str,
        /// The field.
        field: &'static str,
        /// Length found.
        len: usize,
        /// The cap it broke.
        max: usize,
    },
    /// the {frame}'s {field} is not valid UTF-8
    #[error("the {frame}'s {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The frame.
        frame: &'static str,
        /// The field.
        field: &'static str,
    },
    /// the message payload is {len} bytes, more than the cap of {max} bytes
    #[error("the message payload is {len} bytes, more than the cap of {max} bytes")]
    PayloadTooLarge {
        /// Length of the payload.
        len: u64,
        /// The cap it broke.
        max: u32,
    },
    /// the {frame} lists {count} items, more than the cap of {max}
    #[error("the {frame} lists {count} items, more than the cap of {max}")]
    TooManyItems {
        /// The frame.
        frame: &'static str,
        /// Items claimed.
        count: u32,
        /// The cap it broke.
        max: u32,
    },
    /// node speed {} is not a finite, non-negative number
    #[error("node speed {} is not a finite, non-negative number", f32::from_bits(*bits))]
    InvalidSpeed {
        /// The bits of the `f32` found.
        bits: u32,
    },
}

impl DecodeFrameError {
    /// The code of the Error frame that answers this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeFrameError::TooLarge { .. }
            | DecodeFrameError::PayloadTooLarge { .. }
            | DecodeFrameError::TooManyItems { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }

    /// The Error frame that answers this failure. It names no worker: an undecodable
    /// frame's worker is unknown.
    pub fn to_frame(&self) -> Frame {
        Frame::Error {
            code: self.code(),
            worker: None,
            message: self.to_string(),
        }
    }
}

/// Why a [`MoveToken`](crate::MoveToken) does not allow the move it came with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// the move token's signature does not match: it is forged, altered, or signed with another cluster key
    #[error(
        "the move token's signature does not match: it is forged, altered, or signed with another cluster key"
    )]
    BadMac,
    /// the move token is for worker {found:032x}, not for worker {expected:032x}
    #[error("the move token is for worker {found:032x}, not for worker {expected:032x}")]
    WrongWorker {
        /// The worker being moved.
        expected: WorkerId,
        /// The worker the token names.
        found: WorkerId,
    },
    /// the move token is for destination {found}, not for {expected}
    #[error("the move token is for destination {found}, not for {expected}")]
    WrongDestination {
        /// This node's URL.
        expected: String,
        /// The destination the token names.
        found: String,
    },
    /// the move token expired at {expires_unix_ms} ms; it is now {now_unix_ms} ms
    #[error("the move token expired at {expires_unix_ms} ms; it is now {now_unix_ms} ms")]
    Expired {
        /// When the token expired, in milliseconds since the Unix epoch.
        expires_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
    },
}

/// Why two peers have no protocol version in common.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateVersionError {
    /// the peer speaks versions {peer_min}..={peer_max}, this side {min}..={max}: none in common
    #[error(
        "the peer speaks versions {peer_min}..={peer_max}, this side {min}..={max}: none in common"
    )]
    NoCommonVersion {
        /// Oldest version the peer speaks.
        peer_min: u16,
        /// Newest version the peer speaks.
        peer_max: u16,
        /// Oldest version this side speaks.
        min: u16,
        /// Newest version this side speaks.
        max: u16,
    },
    /// the peer's version range {peer_min}..={peer_max} is empty
    #[error("the peer's version range {peer_min}..={peer_max} is empty")]
    EmptyRange {
        /// The range's start.
        peer_min: u16,
        /// The range's end, below its start.
        peer_max: u16,
    },
}

/// Why a session refused a frame it received. The session has already moved to the state
/// it should be in; send [`ProtocolError::to_frame`] back to the peer, and close the
/// connection if the session is now closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// {frame} is not valid while the session is {state}
    #[error("{frame} is not valid while the session is {state}")]
    UnexpectedFrame {
        /// The frame refused.
        frame: &'static str,
        /// The session's state.
        state: &'static str,
        /// The worker the frame named, if any.
        worker: Option<WorkerId>,
    },
    /// {0}
    #[error("{0}")]
    Version(#[from] NegotiateVersionError),
    /// the node chose version {version}, but this side speaks {min}..={max}
    #[error("the node chose version {version}, but this side speaks {min}..={max}")]
    WelcomeVersion {
        /// The version in the Welcome.
        version: u16,
        /// Oldest version this side speaks.
        min: u16,
        /// Newest version this side speaks.
        max: u16,
    },
    /// {frame} names worker {found:032x}, but this session is moving worker {moving:032x}
    #[error("{frame} names worker {found:032x}, but this session is moving worker {moving:032x}")]
    OtherWorker {
        /// The frame refused.
        frame: &'static str,
        /// The worker whose state is moving.
        moving: WorkerId,
        /// The worker the frame names.
        found: WorkerId,
    },
    /// {frame} is for worker {worker:032x}, which this connection has not attached
    #[error("{frame} is for worker {worker:032x}, which this connection has not attached")]
    NotAttached {
        /// The frame refused.
        frame: &'static str,
        /// The worker it names.
        worker: WorkerId,
    },
    /// {frame} is only accepted by a cloud node
    #[error("{frame} is only accepted by a cloud node")]
    CloudOnly {
        /// The frame refused.
        frame: &'static str,
    },
    /// ModuleData carries module {found}, but worker {worker:032x} moves with module {expected}
    #[error(
        "ModuleData carries module {}, but worker {worker:032x} moves with module {}",
        hex(found),
        hex(expected)
    )]
    ModuleHashMismatch {
        /// The worker moving.
        worker: WorkerId,
        /// The module its StateBegin named.
        expected: ModuleHash,
        /// The module the ModuleData names.
        found: ModuleHash,
    },
    /// ModuleData at offset {found}, but the module of worker {worker:032x} continues at {expected}
    #[error(
        "ModuleData at offset {found}, but the module of worker {worker:032x} continues at {expected}"
    )]
    ModuleOffset {
        /// The worker moving.
        worker: WorkerId,
        /// The next byte expected.
        expected: u32,
        /// The piece's offset.
        found: u32,
    },
    /// ModuleData of {len} bytes at offset {offset} runs past the module's {module_len} bytes
    #[error(
        "ModuleData of {len} bytes at offset {offset} runs past the module's {module_len} bytes"
    )]
    ModuleOverrun {
        /// The worker moving.
        worker: WorkerId,
        /// The piece's offset.
        offset: u32,
        /// The piece's length.
        len: u64,
        /// The module's length from StateBegin.
        module_len: u32,
    },
    /// StateEnd after {received} of the module's {module_len} bytes
    #[error("StateEnd after {received} of the module's {module_len} bytes")]
    ModuleIncomplete {
        /// The worker moving.
        worker: WorkerId,
        /// Module bytes received.
        received: u32,
        /// The module's length from StateBegin.
        module_len: u32,
    },
    /// ChunkData carries {count} bodies, but only {remaining} of the chunks asked for are still due
    #[error(
        "ChunkData carries {count} bodies, but only {remaining} of the chunks asked for are still due"
    )]
    TooManyBodies {
        /// The worker moving.
        worker: WorkerId,
        /// Bodies in the frame.
        count: u64,
        /// Bodies still due.
        remaining: u64,
    },
    /// StateEnd while {remaining} of the chunks asked for have not arrived
    #[error("StateEnd while {remaining} of the chunks asked for have not arrived")]
    ChunksIncomplete {
        /// The worker moving.
        worker: WorkerId,
        /// Bodies still due.
        remaining: u64,
    },
}

impl ProtocolError {
    /// The code of the Error frame that answers this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnexpectedFrame { .. }
            | ProtocolError::OtherWorker { .. }
            | ProtocolError::CloudOnly { .. }
            | ProtocolError::ModuleOffset { .. }
            | ProtocolError::ModuleIncomplete { .. }
            | ProtocolError::ChunksIncomplete { .. } => ErrorCode::UnexpectedFrame,
            ProtocolError::Version(_) | ProtocolError::WelcomeVersion { .. } => {
                ErrorCode::UnsupportedVersion
            }
            ProtocolError::NotAttached { .. } => ErrorCode::Unauthorized,
            ProtocolError::ModuleHashMismatch { .. } => ErrorCode::ModuleMismatch,
            ProtocolError::ModuleOverrun { .. } | ProtocolError::TooManyBodies { .. } => {
                ErrorCode::Malformed
            }
        }
    }

    /// The worker the refusal is about, if any.
    pub fn worker(&self) -> Option<WorkerId> {
        match self {
            ProtocolError::UnexpectedFrame { worker, .. } => *worker,
            ProtocolError::OtherWorker { found, .. } => Some(*found),
            ProtocolError::NotAttached { worker, .. }
            | ProtocolError::ModuleHashMismatch { worker, .. }
            | ProtocolError::ModuleOffset { worker, .. }
            | ProtocolError::ModuleOverrun { worker, .. }
            | ProtocolError::ModuleIncomplete { worker, .. }
            | ProtocolError::TooManyBodies { worker, .. }
            | ProtocolError::ChunksIncomplete { worker, .. } => Some(*worker),
            ProtocolError::Version(_)
            | ProtocolError::WelcomeVersion { .. }
            | ProtocolError::CloudOnly { .. } => None,
        }
    }

    /// The Error frame to send back: this refusal's code, worker and message.
    pub fn to_frame(&self) -> Frame {
        Frame::Error {
            code: self.code(),
            worker: self.worker(),
            message: self.to_string(),
        }
    }
}

/// Why a session refused to record a frame as sent: sending it now would break the
/// protocol, which is a bug in the caller, not the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendFrameError {
    /// {frame} may not be sent while the session is {state}
    #[error("{frame} may not be sent while the session is {state}")]
    NotValid {
        /// The frame.
        frame: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// {frame} names worker {found:032x}, but this session is moving worker {moving:032x}
    #[error("{frame} names worker {found:032x}, but this session is moving worker {moving:032x}")]
    OtherWorker {
        /// The frame.
        frame: &'static str,
        /// The worker whose state is moving.
        moving: WorkerId,
        /// The worker the frame names.
        found: WorkerId,
    },
}
