//! The protocol's behaviour as a node or client sees it: one binary, a module per area.

mod codec;
mod sessions;
mod tokens;
mod versions;

use roam_proto::{
    ErrorCode, Frame, MoveToken, NodeInfo, NodeRegistration, NodeRole, PeerKind, MAX_STRING_LEN,
};

/// A string of exactly `MAX_STRING_LEN` bytes with multi-byte characters in it.
pub fn longest_string() -> String {
    let mut s = "ü€".repeat(MAX_STRING_LEN / 5); // 5 bytes per repetition
    while s.len() < MAX_STRING_LEN {
        s.push('x');
    }
    s
}

fn registration(text: &str, n: u64) -> NodeRegistration {
    NodeRegistration {
        node_id: text.to_owned(),
        // `text` may already be the longest string a frame carries.
        url: if text.is_empty() {
            "ws://edge:7000".to_owned()
        } else {
            text.to_owned()
        },
        role: if n == 0 {
            NodeRole::Edge
        } else {
            NodeRole::Cloud
        },
        cores: n as u16,
        speed: if n == 0 { 0.0 } else { f32::MAX },
        free_memory: n,
        workers: n as u32,
        location: text.to_owned(),
    }
}

/// Every frame type, each with small and large edge values: empty and longest strings,
/// zero and maximal numbers, empty and non-empty lists and blobs.
pub fn samples() -> Vec<Frame> {
    let long = longest_string();
    let mut frames = Vec::new();
    for (text, n) in [("", 0u64), (long.as_str(), u64::MAX)] {
        let w = u128::from(n) << 64 | u128::from(n); // 0 or u128::MAX
        let byte = n as u8;
        frames.extend([
            Frame::Hello {
                min_version: n as u16,
                max_version: n as u16,
                peer: if n == 0 {
                    PeerKind::Client
                } else {
                    PeerKind::Node
                },
                name: text.to_owned(),
            },
            Frame::Welcome {
                version: n as u16,
                node_id: text.to_owned(),
                role: if n == 0 {
                    NodeRole::Edge
                } else {
                    NodeRole::Cloud
                },
            },
            Frame::Error {
                code: if n == 0 {
                    ErrorCode::Malformed
                } else {
                    ErrorCode::Other(u16::MAX)
                },
                worker: if n == 0 { None } else { Some(w) },
                message: text.to_owned(),
            },
            Frame::Ping { nonce: n },
            Frame::Pong { nonce: n },
            Frame::Goodbye {
                reason: text.to_owned(),
            },
            Frame::StateBegin {
                worker: w,
                module_hash: [byte; 32],
                module_len: n as u32,
                owner: [!byte; 32],
                token: if n == 0 {
                    None
                } else {
                    Some(MoveToken::issue(b"key", w, text, text, n))
                },
                manifest: vec![byte; (n % 1000) as usize],
            },
            Frame::StateNeed {
                worker: w,
                module: n != 0,
                chunks: if n == 0 { vec![] } else { vec![0, w, 42] },
            },
            Frame::ModuleData {
                module_hash: [byte; 32],
                offset: n as u32,
                bytes: vec![byte; (n % 5000) as usize],
            },
            Frame::ChunkData {
                worker: w,
                bodies: if n == 0 {
                    vec![]
                } else {
                    vec![vec![], vec![1, 2, 3], vec![byte; 300]]
                },
            },
            Frame::StateEnd { worker: w },
            Frame::StateRound {
                worker: w,
                bodies: u32::MAX,
                manifest: vec![0x5A; 300],
            },
            Frame::StateResumable { worker: w },
            Frame::StateResumed {
                worker: w,
                last_seq: n,
            },
            Frame::ChunkWant {
                worker: w,
                chunks: if n == 0 { vec![] } else { vec![w, 7] },
            },
            Frame::StateAdopted {
                worker: w,
                last_seq: n,
            },
            Frame::Attach {
                worker: w,
                secret: [byte; 32],
            },
            Frame::Attached {
                worker: w,
                last_seq: n,
            },
            Frame::Post {
                worker: w,
                seq: n,
                payload: vec![byte; (n % 700) as usize],
            },
            Frame::Replay {
                worker: w,
                seq: n,
                payload: vec![byte; (n % 300) as usize],
            },
            Frame::Expect {
                worker: w,
                secret: [byte; 32],
            },
            Frame::Expecting {
                worker: w,
                budget: n,
            },
            Frame::Reply {
                worker: w,
                seq: n,
                index: n as u32,
                payload: vec![byte; (n % 900) as usize],
            },
            Frame::Handled {
                worker: w,
                seq: n,
                replies: n as u32,
            },
            Frame::WorkerFailed {
                worker: w,
                seq: n,
                reason: text.to_owned(),
            },
            Frame::MoveOut {
                worker: w,
                destination: text.to_owned(),
            },
            Frame::Moved {
                worker: w,
                destination: text.to_owned(),
                last_seq: n,
            },
            Frame::Pull {
                worker: w,
                secret: [byte; 32],
                source: text.to_owned(),
                destination: text.to_owned(),
            },
            Frame::PullSince {
                worker: w,
                secret: [byte; 32],
                source: text.to_owned(),
                destination: text.to_owned(),
                delivered: n,
            },
            Frame::Return { worker: w },
            Frame::ReturnSince {
                worker: w,
                delivered: n,
            },
            Frame::Checkpoint { worker: w },
            Frame::Release {
                worker: w,
                last_seq: n,
            },
            Frame::Register(registration(text, n)),
            Frame::Heartbeat {
                workers: n as u32,
                free_memory: n,
            },
            Frame::ListNodes,
            Frame::Nodes {
                nodes: if n == 0 {
                    vec![]
                } else {
                    vec![
                        NodeInfo {
                            node: registration(text, n),
                            last_seen_ms: n,
                        },
                        NodeInfo {
                            node: registration("", 0),
                            last_seen_ms: 0,
                        },
                    ]
                },
            },
        ]);
    }
    frames
}
