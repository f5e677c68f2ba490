//! Feeds arbitrary bytes to `Frame::decode`. Whatever decodes must re-encode to the same
//! bytes (one encoding per frame) and decode again to an equal frame; then it goes to the
//! state machines, fresh and connected, which must accept or refuse it without panicking,
//! and every refusal must make an Error frame that decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roam_proto::{
    ClientSession, Frame, FrameLimits, NodeRole, NodeSession, PeerKind, PROTOCOL_VERSION,
};

/// Small caps keep each run fast; the decoder's checks are the same at any size.
const LIMITS: FrameLimits = FrameLimits {
    max_frame: 1 << 20,
    max_payload: 1 << 16,
    max_items: 4096,
};

fn refusal_round_trips(error: roam_proto::ProtocolError) {
    let reply = error.to_frame();
    let decoded = Frame::decode(&reply.encode(), &FrameLimits::default())
        .expect("an Error frame made from a refusal decodes");
    assert_eq!(decoded, reply);
}

fuzz_target!(|data: &[u8]| {
    let frame = match Frame::decode(data, &LIMITS) {
        Ok(frame) => frame,
        Err(error) => {
            let _ = error.to_frame().encode();
            return;
        }
    };
    let bytes = frame.encode();
    assert_eq!(bytes, data, "decode then encode changed the bytes");
    let again = Frame::decode(&bytes, &LIMITS).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);

    for role in [NodeRole::Edge, NodeRole::Cloud] {
        let mut fresh = NodeSession::new(role);
        if let Err(error) = fresh.on_frame(&frame) {
            refusal_round_trips(error);
        }

        let mut ready = NodeSession::new(role);
        ready
            .on_frame(&ClientSession::hello(PeerKind::Client, "fuzz"))
            .expect("a current Hello is accepted");
        if let Err(error) = ready.on_frame(&frame) {
            refusal_round_trips(error);
        }
        // A second frame in whatever state the first one left.
        if let Err(error) = ready.on_frame(&frame) {
            refusal_round_trips(error);
        }
    }

    let mut client = ClientSession::new();
    if let Err(error) = client.on_frame(&frame) {
        refusal_round_trips(error);
    }
    let mut client = ClientSession::new();
    client
        .on_frame(&Frame::Welcome {
            version: PROTOCOL_VERSION,
            node_id: "n".into(),
            role: NodeRole::Edge,
        })
        .expect("a current Welcome is accepted");
    if let Err(error) = client.on_frame(&frame) {
        refusal_round_trips(error);
    }
});
