//! One protocol connection to a node, as the browser SDK sees it: the SDK moves the bytes
//! over a WebSocket, this side encodes and decodes the frames and checks each one with the
//! protocol's [`ClientSession`].
//!
//! A connection also holds the transfer in progress, so a worker's state moves without
//! its chunk bodies crossing into JavaScript: `send` of a StateBegin names a snapshot taken
//! here, and the StateNeed that answers it is turned into the ModuleData, ChunkData and
//! StateEnd frames to send; a StateBegin received (a return) is answered with a StateNeed
//! for every chunk, the bodies are kept as they arrive, and `adopt` restores them.
//!
//! `receive` answers `{"event": {...}, "send": n}`: the first `n` blobs are frames the SDK
//! must send now, in order, and any blob after them belongs to the event (a Reply's
//! payload).

use roam_proto::{ClientSession, ErrorCode, Frame, FrameLimits, PeerKind, WorkerId};
use roam_snapshot::{ChunkBody, ChunkHash, DecodeLimits, Manifest, Snapshot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::json::{bytes32_arg, field, hex, id_arg, id_hex, str_arg, u32_arg, u64_arg};
use crate::ops::{Answer, Request};
use crate::store::Store;
use crate::BROWSER_PROTOCOL_VERSION;

/// Chunk bodies per ChunkData frame, at most (well under the 32 MiB frame cap).
const CHUNK_FRAME_BYTES: usize = 4 << 20;
/// Module bytes per ModuleData frame.
const MODULE_PIECE: usize = 1 << 20;

/// A connection's session and the transfer it carries, if any.
pub struct Conn {
    session: ClientSession,
    limits: FrameLimits,
    /// A worker's state this side is sending: the worker and the snapshot handle.
    outgoing: Option<(WorkerId, u32)>,
    /// A worker's state this side is receiving.
    incoming: Option<Incoming>,
}

struct Incoming {
    manifest: Manifest,
    bodies: Vec<ChunkBody>,
}

/// Runs the connection operation `op`.
pub fn call(store: &mut Store, op: &str, request: &Request<'_>) -> Result<Answer, String> {
    if op == "open" {
        return open(store, &request.args);
    }
    let id = u32_arg(&request.args, "conn")?;
    if !store.conns.contains_key(&id) {
        return Err(format!("no connection {id}"));
    }
    match op {
        "send" => send(store, id, request),
        "receive" => receive(store, id, request.blob(0, "frame")?),
        "adopt" => adopt(store, id),
        _ => {
            store.conns.remove(&id);
            Ok(Answer::json(Value::Null))
        }
    }
}

/// `open`: a new connection; blob 0 of the answer is the Hello to send first.
fn open(store: &mut Store, args: &Value) -> Result<Answer, String> {
    let name = str_arg(args, "name")?;
    let mut session = ClientSession::new();
    let hello = Frame::Hello {
        min_version: BROWSER_PROTOCOL_VERSION,
        max_version: BROWSER_PROTOCOL_VERSION,
        peer: PeerKind::Client,
        name: name.to_owned(),
    };
    session.on_send(&hello).map_err(|e| e.to_string())?;
    let id = store.handle();
    store.conns.insert(
        id,
        Conn {
            session,
            limits: FrameLimits::default(),
            outgoing: None,
            incoming: None,
        },
    );
    Ok(Answer {
        json: json!({ "conn": id }),
        blobs: vec![hello.encode()],
    })
}

/// `send`: `frame` is `{"type": ..., fields}`; a Post's payload is blob 0. Answers the
/// frame's bytes as blob 0.
fn send(store: &mut Store, id: u32, request: &Request<'_>) -> Result<Answer, String> {
    let spec = field(&request.args, "frame")?;
    let kind = str_arg(spec, "type")?;
    let mut outgoing = None;
    let frame = match kind {
        "Post" => Frame::Post {
            worker: id_arg(spec, "worker")?,
            seq: u64_arg(spec, "seq")?,
            payload: request.blob(0, "payload")?.to_vec(),
        },
        "Attach" => Frame::Attach {
            worker: id_arg(spec, "worker")?,
            secret: bytes32_arg(spec, "secret")?,
        },
        "MoveOut" => Frame::MoveOut {
            worker: id_arg(spec, "worker")?,
            destination: str_arg(spec, "destination")?.to_owned(),
        },
        "Pull" => Frame::Pull {
            worker: id_arg(spec, "worker")?,
            secret: bytes32_arg(spec, "secret")?,
            source: str_arg(spec, "source")?.to_owned(),
            destination: str_arg(spec, "destination")?.to_owned(),
        },
        "Return" => Frame::Return {
            worker: id_arg(spec, "worker")?,
        },
        "StateAdopted" => Frame::StateAdopted {
            worker: id_arg(spec, "worker")?,
            last_seq: u64_arg(spec, "last_seq")?,
        },
        "Goodbye" => Frame::Goodbye {
            reason: str_arg(spec, "reason")?.to_owned(),
        },
        "ListNodes" => Frame::ListNodes,
        "Error" => Frame::Error {
            code: ErrorCode::from_u16(
                u16::try_from(u64_arg(spec, "code")?).map_err(|_| "`code` is a u16")?,
            ),
            worker: match spec.get("worker") {
                None | Some(Value::Null) => None,
                Some(_) => Some(id_arg(spec, "worker")?),
            },
            message: str_arg(spec, "message")?.to_owned(),
        },
        "StateBegin" => {
            let worker = id_arg(spec, "worker")?;
            let handle = u32_arg(spec, "snapshot")?;
            let snapshot = store
                .snapshots
                .get(&handle)
                .ok_or_else(|| format!("no snapshot {handle}"))?;
            let module_hash = snapshot.manifest.module_hash;
            let module = store.module(&module_hash)?;
            let secret = bytes32_arg(spec, "secret")?;
            outgoing = Some((worker, handle));
            Frame::StateBegin {
                worker,
                module_hash,
                module_len: u32::try_from(module.bytes.len())
                    .map_err(|_| "the module is over 4 GiB")?,
                owner: Sha256::digest(secret).into(),
                token: None,
                manifest: snapshot.manifest.encode(),
            }
        }
        other => return Err(format!("the SDK does not send {other} frames")),
    };
    let conn = store.conns.get_mut(&id).expect("checked by the caller");
    conn.session
        .on_send(&frame)
        .map_err(|e| format!("cannot send {kind} now: {e}"))?;
    if outgoing.is_some() {
        conn.outgoing = outgoing;
    }
    Ok(Answer {
        json: Value::Null,
        blobs: vec![frame.encode()],
    })
}

/// `receive`: blob 0 is a frame from the node.
fn receive(store: &mut Store, id: u32, bytes: &[u8]) -> Result<Answer, String> {
    let Store {
        modules,
        snapshots,
        conns,
        ..
    } = store;
    let conn = conns.get_mut(&id).expect("checked by the caller");
    let frame = Frame::decode(bytes, &conn.limits)
        .map_err(|e| format!("the node sent a malformed frame: {e}"))?;
    let seen = conn.session.on_frame(&frame);
    if let Frame::Error {
        code,
        worker,
        message,
    } = &frame
    {
        // A refusal ends the transfer it names (the session has already abandoned it).
        conn.outgoing = None;
        conn.incoming = None;
        return Ok(Answer::json(json!({
            "event": {
                "type": "Error",
                "code": code.to_u16(),
                "code_name": code.to_string(),
                "worker": worker.map(id_hex),
                "message": message,
            },
            "send": 0,
        })));
    }
    seen.map_err(|e| format!("the node broke the protocol: {e}"))?;

    let mut to_send: Vec<Frame> = Vec::new();
    let mut payload: Option<Vec<u8>> = None;
    let event = match frame {
        Frame::Welcome {
            version,
            node_id,
            role,
        } => {
            json!({ "type": "Welcome", "version": version, "node_id": node_id, "role": role.to_string() })
        }
        Frame::Ping { nonce } => {
            to_send.push(Frame::Pong { nonce });
            json!({ "type": "Ping" })
        }
        Frame::Pong { nonce } => json!({ "type": "Pong", "nonce": nonce.to_string() }),
        Frame::Goodbye { reason } => json!({ "type": "Goodbye", "reason": reason }),
        Frame::Attached { worker, last_seq } => {
            json!({ "type": "Attached", "worker": id_hex(worker), "last_seq": last_seq })
        }
        Frame::Reply {
            worker,
            seq,
            index,
            payload: bytes,
        } => {
            payload = Some(bytes);
            json!({ "type": "Reply", "worker": id_hex(worker), "seq": seq, "index": index })
        }
        Frame::Handled {
            worker,
            seq,
            replies,
        } => json!({ "type": "Handled", "worker": id_hex(worker), "seq": seq, "replies": replies }),
        Frame::WorkerFailed {
            worker,
            seq,
            reason,
        } => {
            json!({ "type": "WorkerFailed", "worker": id_hex(worker), "seq": seq, "reason": reason })
        }
        Frame::Moved {
            worker,
            destination,
            last_seq,
        } => {
            json!({ "type": "Moved", "worker": id_hex(worker), "destination": destination, "last_seq": last_seq })
        }
        Frame::Nodes { nodes } => json!({
            "type": "Nodes",
            "nodes": nodes.iter().map(|n| json!({
                "node_id": n.node.node_id,
                "url": n.node.url,
                "role": n.node.role.to_string(),
                "cores": n.node.cores,
                "speed": n.node.speed,
                "free_memory": n.node.free_memory,
                "workers": n.node.workers,
                "location": n.node.location,
                "last_seen_ms": n.last_seen_ms,
            })).collect::<Vec<_>>(),
        }),
        Frame::StateNeed {
            worker,
            module,
            chunks,
        } => {
            let (sending, handle) = conn
                .outgoing
                .ok_or("the node asked for state this side is not sending")?;
            if sending != worker {
                return Err("the node asked for the state of another worker".into());
            }
            let snapshot = snapshots
                .get(&handle)
                .ok_or_else(|| format!("snapshot {handle} was dropped during its transfer"))?;
            let module_bytes = if module {
                let module = modules
                    .get(&snapshot.manifest.module_hash)
                    .ok_or("the module of the snapshot being sent is gone")?;
                module_frames(&snapshot.manifest.module_hash, &module.bytes, &mut to_send)
            } else {
                0
            };
            let state_bytes = chunk_frames(worker, snapshot, &chunks, &mut to_send)?;
            to_send.push(Frame::StateEnd { worker });
            json!({
                "type": "StateNeed",
                "module": module,
                "chunks": chunks.len(),
                "module_bytes": module_bytes,
                "state_bytes": state_bytes,
            })
        }
        Frame::StateAdopted { worker, last_seq } => {
            conn.outgoing = None;
            json!({ "type": "StateAdopted", "worker": id_hex(worker), "last_seq": last_seq })
        }
        Frame::StateBegin {
            worker,
            module_hash,
            manifest,
            ..
        } => {
            if !modules.contains_key(&module_hash) {
                return Err(format!(
                    "the node sent the state of module {}, which this worker does not run",
                    hex(&module_hash[..8])
                ));
            }
            let manifest = Manifest::decode(&manifest, &DecodeLimits::default())
                .map_err(|e| format!("the node sent a bad manifest: {e}"))?;
            if manifest.module_hash != module_hash {
                return Err("the node's manifest names another module".into());
            }
            let mut wanted: Vec<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
            wanted.sort_unstable();
            wanted.dedup();
            let count = wanted.len();
            to_send.push(Frame::StateNeed {
                worker,
                module: false,
                chunks: wanted,
            });
            conn.incoming = Some(Incoming {
                manifest,
                bodies: Vec::with_capacity(count),
            });
            json!({ "type": "StateBegin", "worker": id_hex(worker), "chunks": count })
        }
        Frame::ChunkData { worker, bodies } => {
            let incoming = conn
                .incoming
                .as_mut()
                .ok_or("the node sent chunk bodies outside a transfer")?;
            for body in &bodies {
                incoming.bodies.push(
                    ChunkBody::decode(body)
                        .map_err(|e| format!("the node sent a bad chunk body: {e}"))?,
                );
            }
            json!({ "type": "ChunkData", "worker": id_hex(worker), "bodies": bodies.len() })
        }
        Frame::StateEnd { worker } => json!({ "type": "StateEnd", "worker": id_hex(worker) }),
        other => json!({ "type": "Other", "name": other.name() }),
    };
    let mut blobs = Vec::with_capacity(to_send.len() + 1);
    for frame in &to_send {
        conn.session
            .on_send(frame)
            .map_err(|e| format!("cannot answer {}: {e}", frame.name()))?;
        blobs.push(frame.encode());
    }
    blobs.extend(payload);
    Ok(Answer {
        json: json!({ "event": event, "send": to_send.len() }),
        blobs,
    })
}

/// Appends the module's bytes as ModuleData frames; returns the bytes.
fn module_frames(hash: &[u8; 32], bytes: &[u8], out: &mut Vec<Frame>) -> usize {
    for (i, piece) in bytes.chunks(MODULE_PIECE).enumerate() {
        out.push(Frame::ModuleData {
            module_hash: *hash,
            offset: (i * MODULE_PIECE) as u32,
            bytes: piece.to_vec(),
        });
    }
    bytes.len()
}

/// Appends the asked-for chunk bodies as ChunkData frames; returns their bytes.
fn chunk_frames(
    worker: WorkerId,
    snapshot: &Snapshot,
    chunks: &[ChunkHash],
    out: &mut Vec<Frame>,
) -> Result<usize, String> {
    let mut total = 0;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for &hash in chunks {
        let body = snapshot
            .body(hash)
            .ok_or_else(|| format!("the node asked for unknown chunk {hash:032x}"))?;
        let encoded = body.encode();
        batch_bytes += encoded.len();
        total += encoded.len();
        batch.push(encoded);
        if batch_bytes >= CHUNK_FRAME_BYTES {
            out.push(Frame::ChunkData {
                worker,
                bodies: std::mem::take(&mut batch),
            });
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        out.push(Frame::ChunkData {
            worker,
            bodies: batch,
        });
    }
    Ok(total)
}

/// `adopt`: after the StateEnd of a return, restores the state received (as `restore`
/// answers). The SDK then sends StateAdopted, or an Error naming the worker.
fn adopt(store: &mut Store, id: u32) -> Result<Answer, String> {
    let conn = store.conns.get_mut(&id).expect("checked by the caller");
    let incoming = conn
        .incoming
        .take()
        .ok_or("no state was received on this connection")?;
    let snapshot = Snapshot::from_parts(incoming.manifest, incoming.bodies)
        .map_err(|e| format!("the state received does not fit together: {e}"))?;
    crate::ops::restore(store, &snapshot)
}
