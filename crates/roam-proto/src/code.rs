//! The small enums frames carry: who a peer is, what a node is for, and why something was
//! refused.

use std::fmt;

/// What kind of peer opened a connection, as it says in its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// An application's client SDK (browser or native): owns workers and decides moves.
    Client,
    /// Another node: hands a worker over, relays state, or registers with the cloud.
    Node,
}

impl PeerKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            PeerKind::Client => 0,
            PeerKind::Node => 1,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> PeerKind {
        if tag == 0 {
            PeerKind::Client
        } else {
            PeerKind::Node
        }
    }
}

/// What a node is for, as it says in its Welcome and its Register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// An edge server near the devices: hosts offloaded workers.
    Edge,
    /// The cloud node: hosts workers on fallback, relays state, keeps the registry of edges.
    Cloud,
}

impl NodeRole {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            NodeRole::Edge => 0,
            NodeRole::Cloud => 1,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> NodeRole {
        if tag == 0 {
            NodeRole::Edge
        } else {
            NodeRole::Cloud
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Edge => "edge",
            NodeRole::Cloud => "cloud",
        })
    }
}

/// Why a peer refused something, carried by an Error frame.
///
/// A code this version does not know decodes as [`ErrorCode::Other`], so a newer peer's
/// codes reach an older one intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No protocol version both peers speak (1).
    UnsupportedVersion,
    /// The frame could not be decoded, or its content breaks a rule (2).
    Malformed,
    /// The frame is not valid in the receiver's current state (3).
    UnexpectedFrame,
    /// A frame, message or snapshot is over the receiver's cap (4).
    TooLarge,
    /// The worker's secret is wrong, or this connection has not attached the worker (5).
    Unauthorized,
    /// The move token is missing, forged, expired, or for another worker or destination (6).
    BadToken,
    /// The node does not host that worker (7).
    UnknownWorker,
    /// The module bytes do not hash to the module hash (8).
    ModuleMismatch,
    /// The snapshot failed validation against the module (9).
    SnapshotRefused,
    /// The worker trapped or failed to start (10).
    WorkerFailed,
    /// The node has no room for more work now; try later or elsewhere (11).
    Busy,
    /// The node is shutting down and takes no new work (12).
    ShuttingDown,
    /// The node failed in a way that is not the peer's fault (13).
    Internal,
    /// The worker's state was lost on this node: it ran post-copy and its source went
    /// away before every chunk arrived. Its client recovers it from its recovery point (14).
    StateLost,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::Malformed => 2,
            ErrorCode::UnexpectedFrame => 3,
            ErrorCode::TooLarge => 4,
            ErrorCode::Unauthorized => 5,
            ErrorCode::BadToken => 6,
            ErrorCode::UnknownWorker => 7,
            ErrorCode::ModuleMismatch => 8,
            ErrorCode::SnapshotRefused => 9,
            ErrorCode::WorkerFailed => 10,
            ErrorCode::Busy => 11,
            ErrorCode::ShuttingDown => 12,
            ErrorCode::Internal => 13,
            ErrorCode::StateLost => 14,
            ErrorCode::Other(code) => code,
        }
    }

    /// The code with this number; unknown numbers give [`ErrorCode::Other`].
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::Malformed,
            3 => ErrorCode::UnexpectedFrame,
            4 => ErrorCode::TooLarge,
            5 => ErrorCode::Unauthorized,
            6 => ErrorCode::BadToken,
            7 => ErrorCode::UnknownWorker,
            8 => ErrorCode::ModuleMismatch,
            9 => ErrorCode::SnapshotRefused,
            10 => ErrorCode::WorkerFailed,
            11 => ErrorCode::Busy,
            12 => ErrorCode::ShuttingDown,
            13 => ErrorCode::Internal,
            14 => ErrorCode::StateLost,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnexpectedFrame => "unexpected frame",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadToken => "bad move token",
            ErrorCode::UnknownWorker => "unknown worker",
            ErrorCode::ModuleMismatch => "module mismatch",
            ErrorCode::SnapshotRefused => "snapshot refused",
            ErrorCode::WorkerFailed => "worker failed",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::Internal => "internal error",
            ErrorCode::StateLost => "state lost",
            ErrorCode::Other(code) => return write!(f, "error code {code}"),
        };
        f.write_str(name)
    }
}
