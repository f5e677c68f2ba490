//! The receiver state machines: a node's and a client's view of one connection.

mod client;
mod common;
mod event;
mod node;
mod transfer;

pub use client::{ClientSession, ClientState};
pub use event::Event;
pub use node::{NodeSession, NodeState};
pub use transfer::{Incoming, ReceiveStage, SendStage};
