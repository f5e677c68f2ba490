//! The state machines accept a well-ordered conversation and refuse every frame that is
//! out of place, naming the frame and the state, with the code to send back.

use roam_proto::{
    ClientSession, ClientState, ErrorCode, Event, Frame, FrameLimits, NodeRole, NodeSession,
    NodeState, PeerKind, ProtocolError, ReceiveStage, SendFrameError, SendStage, PROTOCOL_VERSION,
};

use crate::samples;

const W: u128 = 0xAAAA;
const OTHER: u128 = 0xBBBB;
const MODULE: [u8; 32] = [9; 32];

/// A client and a node joined by a perfect wire.
struct Link {
    client: ClientSession,
    node: NodeSession,
}

impl Link {
    fn connected(role: NodeRole) -> Link {
        Link::speaking(role, PROTOCOL_VERSION)
    }

    /// A link whose client offers only versions up to `max_version`.
    fn speaking(role: NodeRole, max_version: u16) -> Link {
        Link::from_peer(PeerKind::Client, role, max_version)
    }

    /// A link from a `peer` offering versions up to `max_version`.
    fn from_peer(peer: PeerKind, role: NodeRole, max_version: u16) -> Link {
        let mut link = Link {
            client: ClientSession::new(),
            node: NodeSession::new(role),
        };
        let Frame::Hello {
            min_version, name, ..
        } = ClientSession::hello(peer, "test")
        else {
            unreachable!("hello is a Hello")
        };
        let hello = Frame::Hello {
            min_version: min_version.min(max_version),
            max_version,
            peer,
            name,
        };
        assert!(matches!(
            link.send_to_node(&hello),
            Ok(Event::Hello { version, .. }) if version == max_version
        ));
        let welcome = Frame::Welcome {
            version: max_version,
            node_id: "n".into(),
            role,
        };
        assert!(matches!(
            link.send_to_client(&welcome),
            Ok(Event::Welcome { version, .. }) if version == max_version
        ));
        link
    }

    fn send_to_node<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        assert_eq!(&wire(frame), frame);
        self.client.on_send(frame).expect("the client may send it");
        self.node.on_frame(frame)
    }

    fn send_to_client<'f>(&mut self, frame: &'f Frame) -> Result<Event<'f>, ProtocolError> {
        assert_eq!(&wire(frame), frame);
        self.node.on_send(frame).expect("the node may send it");
        self.client.on_frame(frame)
    }

    /// Client → node: StateBegin for `W` with a module of `module_len` bytes.
    fn begin(&mut self, module_len: u32) {
        let begin = state_begin(W, module_len);
        assert!(matches!(
            self.send_to_node(&begin),
            Ok(Event::StateBegin { worker: W, .. })
        ));
    }

    /// Node → client: StateNeed.
    fn need(&mut self, module: bool, chunks: usize) {
        let need = Frame::StateNeed {
            worker: W,
            module,
            chunks: (0..chunks as u128).collect(),
        };
        assert!(matches!(
            self.send_to_client(&need),
            Ok(Event::StateNeed { worker: W, .. })
        ));
    }
}

fn wire(frame: &Frame) -> Frame {
    Frame::decode(&frame.encode(), &FrameLimits::default()).expect("decodes")
}

fn state_begin(worker: u128, module_len: u32) -> Frame {
    Frame::StateBegin {
        worker,
        module_hash: MODULE,
        module_len,
        owner: [1; 32],
        token: None,
        manifest: vec![0xAB; 64],
    }
}

fn module_data(offset: u32, len: usize) -> Frame {
    Frame::ModuleData {
        module_hash: MODULE,
        offset,
        bytes: vec![0x61; len],
    }
}

fn chunk_data(worker: u128, bodies: usize) -> Frame {
    Frame::ChunkData {
        worker,
        bodies: vec![vec![1, 2, 3]; bodies],
    }
}

fn receiving(node: &NodeSession) -> ReceiveStage {
    match node.state() {
        NodeState::ReceivingState(incoming) => incoming.stage,
        other => panic!("not receiving: {other:?}"),
    }
}

#[test]
fn every_frame_but_hello_is_refused_before_hello() {
    for frame in samples() {
        let mut node = NodeSession::new(NodeRole::Cloud);
        let result = node.on_frame(&frame);
        if let Frame::Hello { .. } = frame {
            continue; // the samples' versions are 0 and 65535: refused for the version
        }
        let err = result.expect_err(frame.name());
        assert_eq!(err.code(), ErrorCode::UnexpectedFrame, "{}", frame.name());
        let message = err.to_string();
        assert!(message.contains(frame.name()), "{message}");
        assert!(message.contains("AwaitHello"), "{message}");
        assert!(
            node.is_closed(),
            "a peer that does not open with Hello is dropped"
        );
    }
    let mut node = NodeSession::new(NodeRole::Edge);
    let hello = ClientSession::hello(PeerKind::Node, "edge-a");
    assert!(node.on_frame(&hello).is_ok());
    assert_eq!(node.state(), &NodeState::Ready);
    assert_eq!(node.peer(), Some(PeerKind::Node));
}

#[test]
fn a_closed_session_refuses_everything() {
    let mut link = Link::connected(NodeRole::Edge);
    let bye = Frame::Goodbye {
        reason: "done".into(),
    };
    assert!(matches!(
        link.send_to_node(&bye),
        Ok(Event::Goodbye { reason: "done" })
    ));
    assert!(link.node.is_closed() && link.client.is_closed());
    for frame in samples() {
        let err = link.node.on_frame(&frame).expect_err(frame.name());
        assert!(err.to_string().contains("Closed"));
    }
}

#[test]
fn an_offload_in_the_right_order_is_accepted() {
    let mut link = Link::connected(NodeRole::Edge);
    link.send_to_node(&Frame::Ping { nonce: 5 }).unwrap();
    link.begin(10);
    assert_eq!(receiving(&link.node), ReceiveStage::Deciding);
    link.need(true, 3);
    assert_eq!(
        receiving(&link.node),
        ReceiveStage::Module {
            received: 0,
            chunks_due: 3
        }
    );
    // Module pieces, contiguous; the last one completes the module.
    for (offset, len, last) in [(0, 4, false), (4, 0, false), (4, 6, true)] {
        let piece = module_data(offset, len);
        match link.send_to_node(&piece).unwrap() {
            Event::ModuleData {
                worker: W,
                offset: o,
                complete,
                ..
            } => {
                assert_eq!(o, offset);
                assert_eq!(complete, last);
            }
            other => panic!("{other:?}"),
        }
    }
    // Ping is fine mid-transfer.
    assert!(matches!(
        link.send_to_node(&Frame::Ping { nonce: 6 }),
        Ok(Event::Ping { nonce: 6 })
    ));
    link.send_to_node(&chunk_data(W, 2)).unwrap();
    link.send_to_node(&chunk_data(W, 1)).unwrap();
    assert_eq!(receiving(&link.node), ReceiveStage::Chunks { remaining: 0 });
    assert_eq!(
        link.send_to_node(&Frame::StateEnd { worker: W }),
        Ok(Event::TransferComplete { worker: W })
    );
    assert_eq!(receiving(&link.node), ReceiveStage::Restoring);
    assert!(matches!(
        link.client.state(),
        ClientState::SendingState {
            stage: SendStage::AwaitAdopted,
            ..
        }
    ));
    let adopted = Frame::StateAdopted {
        worker: W,
        last_seq: 41,
    };
    assert_eq!(
        link.send_to_client(&adopted),
        Ok(Event::StateAdopted {
            worker: W,
            last_seq: 41
        })
    );
    assert_eq!(link.node.state(), &NodeState::Ready);
    assert_eq!(link.client.state(), &ClientState::Ready);
    // The worker delivered on this connection may be used on it.
    assert!(link.node.is_attached(W) && link.client.is_attached(W));
    let post = Frame::Post {
        worker: W,
        seq: 42,
        payload: b"next".to_vec(),
    };
    assert!(matches!(
        link.send_to_node(&post),
        Ok(Event::Post { seq: 42, .. })
    ));
    let handled = Frame::Handled {
        worker: W,
        seq: 42,
        replies: 0,
    };
    assert!(link.send_to_client(&handled).is_ok());
}

#[test]
fn a_transfer_without_the_module_goes_straight_to_chunks() {
    let mut link = Link::connected(NodeRole::Cloud);
    link.begin(1000);
    link.need(false, 0);
    assert_eq!(receiving(&link.node), ReceiveStage::Chunks { remaining: 0 });
    let err = link.node.on_frame(&module_data(0, 10)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    assert_eq!(
        link.node.state(),
        &NodeState::Ready,
        "the transfer is abandoned"
    );
}

#[test]
fn out_of_order_module_pieces_are_refused() {
    for (offset, expected) in [(5u32, 4u32), (2, 4), (0, 4)] {
        let mut link = Link::connected(NodeRole::Edge);
        link.begin(10);
        link.need(true, 0);
        link.send_to_node(&module_data(0, 4)).unwrap();
        let err = link.node.on_frame(&module_data(offset, 2)).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::ModuleOffset {
                worker: W,
                expected,
                found: offset
            }
        );
        assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
        assert_eq!(err.worker(), Some(W));
        assert_eq!(link.node.state(), &NodeState::Ready);
    }
}

#[test]
fn module_pieces_past_the_module_length_are_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(10);
    link.need(true, 0);
    link.send_to_node(&module_data(0, 8)).unwrap();
    let err = link.node.on_frame(&module_data(8, 3)).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::ModuleOverrun { module_len: 10, .. }
    ));
    assert_eq!(err.code(), ErrorCode::Malformed);
}

#[test]
fn module_pieces_of_another_module_are_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(10);
    link.need(true, 0);
    let wrong = Frame::ModuleData {
        module_hash: [8; 32],
        offset: 0,
        bytes: vec![0; 10],
    };
    let err = link.node.on_frame(&wrong).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ModuleMismatch);
}

#[test]
fn chunk_data_before_state_need_is_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(10);
    let err = link.node.on_frame(&chunk_data(W, 1)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    let message = err.to_string();
    assert!(message.contains("ChunkData") && message.contains("ReceivingState(Deciding)"));
    // Nor may the client send it before the node asked.
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(10);
    assert!(matches!(
        link.client.on_send(&chunk_data(W, 1)),
        Err(SendFrameError::NotValid { .. })
    ));
}

#[test]
fn chunk_data_beyond_what_was_asked_for_is_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(0);
    link.need(false, 2);
    let err = link.node.on_frame(&chunk_data(W, 3)).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::TooManyBodies {
            count: 3,
            remaining: 2,
            ..
        }
    ));
}

#[test]
fn state_end_with_missing_module_bytes_is_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(10);
    link.need(true, 0);
    link.send_to_node(&module_data(0, 9)).unwrap();
    let err = link
        .node
        .on_frame(&Frame::StateEnd { worker: W })
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ModuleIncomplete {
            worker: W,
            received: 9,
            module_len: 10
        }
    );
    assert!(err.to_string().contains("9 of the module's 10 bytes"));
    assert_eq!(link.node.state(), &NodeState::Ready);
}

#[test]
fn state_end_with_missing_chunks_is_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(0);
    link.need(false, 2);
    link.send_to_node(&chunk_data(W, 1)).unwrap();
    let err = link
        .node
        .on_frame(&Frame::StateEnd { worker: W })
        .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::ChunksIncomplete { remaining: 1, .. }
    ));
}

#[test]
fn frames_for_another_worker_are_refused_mid_transfer() {
    let mut link = Link::connected(NodeRole::Edge);
    link.node
        .on_send(&Frame::Attached {
            worker: OTHER,
            last_seq: 0,
        })
        .unwrap();
    link.begin(4);
    link.need(true, 1);
    let others = [
        chunk_data(OTHER, 1),
        Frame::StateEnd { worker: OTHER },
        Frame::Post {
            worker: OTHER,
            seq: 1,
            payload: vec![],
        },
        state_begin(OTHER, 4),
        Frame::Attach {
            worker: OTHER,
            secret: [0; 32],
        },
    ];
    for frame in &others {
        let err = link.node.on_frame(frame).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::OtherWorker {
                frame: frame.name(),
                moving: W,
                found: OTHER
            }
        );
        assert_eq!(
            err.worker(),
            Some(OTHER),
            "the Error frame names the refused worker"
        );
    }
    // A second StateBegin for the same worker is out of place too.
    let err = link.node.on_frame(&state_begin(W, 4)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    // None of that disturbed the transfer.
    link.send_to_node(&module_data(0, 4)).unwrap();
    link.send_to_node(&chunk_data(W, 1)).unwrap();
    assert!(link.send_to_node(&Frame::StateEnd { worker: W }).is_ok());
}

#[test]
fn a_peer_error_for_the_worker_abandons_the_transfer_and_one_without_closes() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(4);
    let abort = Frame::Error {
        code: ErrorCode::Internal,
        worker: Some(W),
        message: "capture failed".into(),
    };
    assert!(matches!(
        link.node.on_frame(&abort),
        Ok(Event::PeerError { .. })
    ));
    assert_eq!(link.node.state(), &NodeState::Ready);
    let other = Frame::Error {
        code: ErrorCode::Internal,
        worker: Some(OTHER),
        message: String::new(),
    };
    link.node.on_frame(&other).unwrap();
    assert_eq!(link.node.state(), &NodeState::Ready);
    let fatal = Frame::Error {
        code: ErrorCode::ShuttingDown,
        worker: None,
        message: String::new(),
    };
    link.node.on_frame(&fatal).unwrap();
    assert!(link.node.is_closed());
}

#[test]
fn the_node_refusing_a_transfer_returns_both_sides_to_ready() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(4);
    let refusal = Frame::Error {
        code: ErrorCode::BadToken,
        worker: Some(W),
        message: "no token".into(),
    };
    assert!(matches!(
        link.send_to_client(&refusal),
        Ok(Event::PeerError { .. })
    ));
    assert_eq!(link.node.state(), &NodeState::Ready);
    assert_eq!(link.client.state(), &ClientState::Ready);
}

#[test]
fn a_return_in_the_right_order_is_accepted() {
    let mut link = Link::connected(NodeRole::Edge);
    let attach = Frame::Attach {
        worker: W,
        secret: [3; 32],
    };
    assert!(matches!(
        link.send_to_node(&attach),
        Ok(Event::Attach { worker: W, .. })
    ));
    link.send_to_client(&Frame::Attached {
        worker: W,
        last_seq: 0,
    })
    .unwrap();
    assert_eq!(
        link.send_to_node(&Frame::Return { worker: W }),
        Ok(Event::Return {
            worker: W,
            delivered: None
        })
    );
    assert!(matches!(
        link.node.state(),
        NodeState::SendingState {
            stage: SendStage::Preparing,
            ..
        }
    ));
    // The message in progress finishes before the capture.
    link.send_to_client(&Frame::Handled {
        worker: W,
        seq: 1,
        replies: 0,
    })
    .unwrap();
    link.send_to_client(&state_begin(W, 6)).unwrap();
    let need = Frame::StateNeed {
        worker: W,
        module: true,
        chunks: vec![1],
    };
    assert!(matches!(
        link.send_to_node(&need),
        Ok(Event::StateNeed { module: true, .. })
    ));
    assert!(link.send_to_client(&module_data(0, 6)).unwrap() != Event::ListNodes);
    link.send_to_client(&chunk_data(W, 1)).unwrap();
    assert_eq!(
        link.send_to_client(&Frame::StateEnd { worker: W }),
        Ok(Event::TransferComplete { worker: W })
    );
    let adopted = Frame::StateAdopted {
        worker: W,
        last_seq: 1,
    };
    assert!(link.send_to_node(&adopted).is_ok());
    assert_eq!(link.node.state(), &NodeState::Ready);
    assert_eq!(link.client.state(), &ClientState::Ready);
    // The node keeps the state until the client releases it.
    let release = Frame::Release {
        worker: W,
        last_seq: 1,
    };
    assert!(matches!(
        link.send_to_node(&release),
        Ok(Event::Release { .. })
    ));
}

#[test]
fn the_client_refuses_an_out_of_order_return() {
    let mut link = Link::connected(NodeRole::Edge);
    link.send_to_client(&Frame::Attached {
        worker: W,
        last_seq: 0,
    })
    .unwrap();
    link.send_to_node(&Frame::Return { worker: W }).unwrap();
    // StateBegin for another worker, ModuleData before StateBegin.
    assert!(link.client.on_frame(&state_begin(OTHER, 1)).is_err());
    assert!(link.client.on_frame(&module_data(0, 1)).is_err());
    link.send_to_client(&state_begin(W, 6)).unwrap();
    link.client
        .on_send(&Frame::StateNeed {
            worker: W,
            module: true,
            chunks: vec![],
        })
        .unwrap();
    let err = link
        .client
        .on_frame(&Frame::StateEnd { worker: W })
        .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::ModuleIncomplete { received: 0, .. }
    ));
    assert_eq!(link.client.state(), &ClientState::Ready);
}

#[test]
fn using_a_worker_needs_an_attach() {
    let mut link = Link::connected(NodeRole::Edge);
    let frames = [
        Frame::Post {
            worker: W,
            seq: 1,
            payload: vec![],
        },
        Frame::MoveOut {
            worker: W,
            destination: "ws://b".into(),
        },
        Frame::Return { worker: W },
        Frame::Release {
            worker: W,
            last_seq: 0,
        },
    ];
    for frame in &frames {
        let err = link.node.on_frame(frame).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthorized, "{}", frame.name());
        assert_eq!(link.node.state(), &NodeState::Ready);
    }
    link.node
        .on_send(&Frame::Attached {
            worker: W,
            last_seq: 0,
        })
        .unwrap();
    for frame in &frames[..2] {
        assert!(link.node.on_frame(frame).is_ok(), "{}", frame.name());
    }
    // After Moved the worker is no longer used through this connection.
    link.send_to_client(&Frame::Moved {
        worker: W,
        destination: "ws://b".into(),
        last_seq: 3,
    })
    .unwrap();
    assert!(!link.node.is_attached(W) && !link.client.is_attached(W));
    assert!(link.node.on_frame(&frames[0]).is_err());
}

#[test]
fn registry_frames_are_for_the_cloud_only() {
    let register = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::Register(_)))
        .unwrap();
    let pull = Frame::Pull {
        worker: W,
        secret: [0; 32],
        source: "ws://a".into(),
        destination: "ws://cloud".into(),
    };
    let heartbeat = Frame::Heartbeat {
        workers: 1,
        free_memory: 2,
    };
    let mut edge = Link::connected(NodeRole::Edge);
    for frame in [&register, &heartbeat, &Frame::ListNodes, &pull] {
        let err = edge.node.on_frame(frame).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::CloudOnly {
                frame: frame.name()
            }
        );
    }
    let mut cloud = Link::connected(NodeRole::Cloud);
    let err = cloud.node.on_frame(&heartbeat).unwrap_err();
    assert!(err.to_string().contains("no Register"), "{err}");
    assert!(cloud.send_to_node(&register).is_ok());
    assert!(cloud.send_to_node(&heartbeat).is_ok());
    assert_eq!(cloud.send_to_node(&Frame::ListNodes), Ok(Event::ListNodes));
    assert!(cloud.send_to_node(&pull).is_ok());
    let nodes = Frame::Nodes { nodes: vec![] };
    assert_eq!(cloud.send_to_client(&nodes), Ok(Event::Nodes(&[])));
}

#[test]
fn node_only_frames_are_refused_from_a_ready_client_and_vice_versa() {
    let mut link = Link::connected(NodeRole::Cloud);
    for frame in samples() {
        let to_node_ok = matches!(
            frame,
            Frame::Ping { .. }
                | Frame::Pong { .. }
                | Frame::Goodbye { .. }
                | Frame::Error { .. }
                | Frame::Attach { .. }
                | Frame::Expect { .. }
                | Frame::StateBegin { .. }
                | Frame::Pull { .. }
                | Frame::PullSince { .. }
                | Frame::Register(_)
                | Frame::ListNodes
        );
        let mut node = link.node.clone();
        assert_eq!(
            node.on_frame(&frame).is_ok(),
            to_node_ok,
            "node took {}",
            frame.name()
        );
        let to_client_ok = matches!(
            frame,
            Frame::Ping { .. }
                | Frame::Pong { .. }
                | Frame::Goodbye { .. }
                | Frame::Error { .. }
                | Frame::Attached { .. }
                | Frame::Expecting { .. }
                | Frame::Moved { .. }
                | Frame::Nodes { .. }
        );
        let mut client = link.client.clone();
        assert_eq!(
            client.on_frame(&frame).is_ok(),
            to_client_ok,
            "client took {}",
            frame.name()
        );
    }
    link.send_to_node(&Frame::Ping { nonce: 0 }).unwrap();
}

#[test]
fn the_client_checks_the_welcome() {
    let mut client = ClientSession::new();
    client
        .on_send(&ClientSession::hello(PeerKind::Client, "c"))
        .unwrap();
    let future = Frame::Welcome {
        version: 99,
        node_id: "n".into(),
        role: NodeRole::Edge,
    };
    let err = client.on_frame(&future).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    assert!(client.is_closed());

    let mut client = ClientSession::new();
    let err = client.on_frame(&Frame::Ping { nonce: 1 }).unwrap_err();
    assert!(err.to_string().contains("AwaitWelcome"));
    assert!(client.is_closed());

    // A node refusing the Hello: the client learns why and closes.
    let mut client = ClientSession::new();
    let refusal = Frame::Error {
        code: ErrorCode::UnsupportedVersion,
        worker: None,
        message: "no".into(),
    };
    assert!(matches!(
        client.on_frame(&refusal),
        Ok(Event::PeerError { .. })
    ));
    assert!(client.is_closed());
}

#[test]
fn sending_out_of_turn_is_refused() {
    let mut link = Link::connected(NodeRole::Edge);
    let need = Frame::StateNeed {
        worker: W,
        module: false,
        chunks: vec![],
    };
    assert!(link.node.on_send(&need).is_err());
    assert!(link.node.on_send(&Frame::StateEnd { worker: W }).is_err());
    link.begin(0);
    assert!(matches!(
        link.node.on_send(&Frame::Attached {
            worker: OTHER,
            last_seq: 0
        }),
        Err(SendFrameError::OtherWorker { .. })
    ));
    assert!(link
        .node
        .on_send(&Frame::StateAdopted {
            worker: W,
            last_seq: 0
        })
        .is_err());
    let mut fresh = NodeSession::new(NodeRole::Edge);
    assert!(fresh.on_send(&Frame::Ping { nonce: 1 }).is_err());
}

fn state_round(worker: u128, bodies: u32) -> Frame {
    Frame::StateRound {
        worker,
        bodies,
        manifest: vec![0xCD; 64],
    }
}

#[test]
fn pre_copy_rounds_follow_the_bodies_of_the_round_before() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(0);
    link.need(false, 2);
    // Up to version 7, not before the bodies asked for have all arrived.
    let mut early = Link::speaking(NodeRole::Edge, 7);
    early.begin(0);
    early.need(false, 2);
    early.send_to_node(&chunk_data(W, 1)).unwrap();
    assert!(early.client.on_send(&state_round(W, 1)).is_ok());
    let err = early.node.on_frame(&state_round(W, 1)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    assert_eq!(early.node.state(), &NodeState::Ready);
    // From version 8 a round may end the one before early: the bodies it did not send are
    // no longer due, and those of the new round are.
    let mut cut = Link::speaking(NodeRole::Edge, 8);
    cut.begin(0);
    cut.need(false, 2);
    cut.send_to_node(&chunk_data(W, 1)).unwrap();
    assert!(matches!(
        cut.send_to_node(&state_round(W, 4)),
        Ok(Event::StateRound { bodies: 4, .. })
    ));
    assert_eq!(receiving(&cut.node), ReceiveStage::Chunks { remaining: 4 });
    // StateEnd still waits for every body of the last round.
    let err = cut
        .node
        .on_frame(&Frame::StateEnd { worker: W })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);

    link.send_to_node(&chunk_data(W, 2)).unwrap();
    assert!(matches!(
        link.send_to_node(&state_round(W, 3)),
        Ok(Event::StateRound {
            worker: W,
            bodies: 3,
            ..
        })
    ));
    assert_eq!(receiving(&link.node), ReceiveStage::Chunks { remaining: 3 });
    link.send_to_node(&chunk_data(W, 3)).unwrap();
    // A round may push nothing, and the transfer ends as any other.
    link.send_to_node(&state_round(W, 0)).unwrap();
    assert!(matches!(
        link.send_to_node(&Frame::StateEnd { worker: W }),
        Ok(Event::TransferComplete { worker: W })
    ));
}

#[test]
fn pre_copy_rounds_are_refused_on_a_version_1_connection() {
    let mut link = Link::speaking(NodeRole::Edge, 1);
    link.begin(0);
    link.need(false, 0);
    assert!(
        link.client.on_send(&state_round(W, 0)).is_err(),
        "a version-1 sender may not send a StateRound"
    );
    let err = link.node.on_frame(&state_round(W, 0)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
}

#[test]
fn a_checkpoint_sends_the_state_and_leaves_the_worker_attached() {
    let attached = |link: &mut Link| {
        link.send_to_client(&Frame::Attached {
            worker: W,
            last_seq: 0,
        })
        .unwrap();
    };
    // Version 2 has no checkpoints.
    let mut old = Link::speaking(NodeRole::Edge, 2);
    attached(&mut old);
    let err = old
        .node
        .on_frame(&Frame::Checkpoint { worker: W })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    // Nor may anyone but the worker's owner ask.
    let mut link = Link::connected(NodeRole::Edge);
    let err = link
        .node
        .on_frame(&Frame::Checkpoint { worker: W })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthorized);
    attached(&mut link);
    link.send_to_node(&Frame::Checkpoint { worker: W }).unwrap();
    assert!(matches!(link.node.state(), NodeState::SendingState { .. }));
    assert!(matches!(link.client.state(), ClientState::Returning { .. }));
    // Until the state went out, the connection takes nothing else for the worker.
    assert!(link
        .client
        .on_send(&Frame::Checkpoint { worker: W })
        .is_err());
}

#[test]
fn a_post_copy_receiver_runs_the_worker_and_asks_for_chunks_until_state_end() {
    let mut link = Link::connected(NodeRole::Edge);
    link.begin(0);
    link.need(false, 3);
    let resumed = Frame::StateResumed {
        worker: W,
        last_seq: 4,
    };
    let want = Frame::ChunkWant {
        worker: W,
        chunks: vec![2],
    };
    // Neither before the sender says the state is final.
    assert!(link.node.on_send(&resumed).is_err());
    assert!(link.node.on_send(&want).is_err());
    link.send_to_node(&chunk_data(W, 1)).unwrap();
    assert!(matches!(
        link.send_to_node(&Frame::StateResumable { worker: W }),
        Ok(Event::StateResumable { worker: W })
    ));
    // The state is final: no round may follow.
    assert!(link.client.on_send(&state_round(W, 0)).is_err());
    assert!(link.node.on_frame(&state_round(W, 0)).is_err());
    assert_eq!(link.node.state(), &NodeState::Ready);

    let mut link = Link::connected(NodeRole::Edge);
    link.begin(0);
    link.need(false, 3);
    link.send_to_node(&Frame::StateResumable { worker: W })
        .unwrap();
    // A wants chunks only once its worker runs.
    assert!(link.node.on_send(&want).is_err());
    assert!(matches!(
        link.send_to_client(&resumed),
        Ok(Event::StateResumed {
            worker: W,
            last_seq: 4
        })
    ));
    assert!(link.node.on_send(&resumed).is_err(), "StateResumed twice");
    assert!(matches!(
        link.send_to_client(&want),
        Ok(Event::ChunkWant {
            worker: W,
            chunks: [2]
        })
    ));
    link.send_to_node(&chunk_data(W, 3)).unwrap();
    assert!(matches!(
        link.send_to_node(&Frame::StateEnd { worker: W }),
        Ok(Event::TransferComplete { worker: W })
    ));
    // Every body is in: no more wants, and StateAdopted ends the transfer.
    assert!(link.node.on_send(&want).is_err());
    assert!(matches!(
        link.send_to_client(&Frame::StateAdopted {
            worker: W,
            last_seq: 4
        }),
        Ok(Event::StateAdopted { .. })
    ));
}

#[test]
fn post_copy_frames_are_refused_before_version_4() {
    let mut link = Link::speaking(NodeRole::Edge, 3);
    link.begin(0);
    link.need(false, 1);
    assert!(
        link.client
            .on_send(&Frame::StateResumable { worker: W })
            .is_err(),
        "a version-3 sender may not send StateResumable"
    );
    let err = link
        .node
        .on_frame(&Frame::StateResumable { worker: W })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
}

#[test]
fn a_replay_needs_version_4_and_an_attached_worker() {
    let replay = Frame::Replay {
        worker: W,
        seq: 1,
        payload: vec![1],
    };
    let mut old = Link::speaking(NodeRole::Edge, 3);
    assert!(old.client.on_send(&replay).is_err());
    assert_eq!(
        old.node.on_frame(&replay).unwrap_err().code(),
        ErrorCode::UnexpectedFrame
    );
    let mut link = Link::connected(NodeRole::Edge);
    assert_eq!(
        link.send_to_node(&replay).unwrap_err().code(),
        ErrorCode::Unauthorized
    );
    link.send_to_client(&Frame::Attached {
        worker: W,
        last_seq: 0,
    })
    .unwrap();
    assert!(matches!(
        link.send_to_node(&replay),
        Ok(Event::Replay {
            worker: W,
            seq: 1,
            ..
        })
    ));
}

#[test]
fn posts_ahead_of_a_worker_need_version_5_and_a_budget() {
    let expect = Frame::Expect {
        worker: W,
        secret: [3; 32],
    };
    let post = Frame::Post {
        worker: W,
        seq: 1,
        payload: vec![1],
    };
    let mut old = Link::speaking(NodeRole::Edge, 4);
    assert!(old.client.on_send(&expect).is_err());
    assert_eq!(
        old.node.on_frame(&expect).unwrap_err().code(),
        ErrorCode::UnexpectedFrame
    );
    // No budget: the connection still may not Post to the worker.
    let mut link = Link::connected(NodeRole::Edge);
    assert!(matches!(
        link.send_to_node(&expect),
        Ok(Event::Expect { worker: W, .. })
    ));
    link.send_to_client(&Frame::Expecting {
        worker: W,
        budget: 0,
    })
    .unwrap();
    assert_eq!(
        link.send_to_node(&post).unwrap_err().code(),
        ErrorCode::Unauthorized
    );
    // A budget lets it Post (and Replay), and the node may answer before any Attach;
    // anything else still needs the worker attached.
    link.send_to_client(&Frame::Expecting {
        worker: W,
        budget: 1 << 20,
    })
    .unwrap();
    assert!(matches!(
        link.send_to_node(&post),
        Ok(Event::Post { worker: W, .. })
    ));
    assert!(matches!(
        link.send_to_client(&Frame::Handled {
            worker: W,
            seq: 1,
            replies: 0
        }),
        Ok(Event::Handled { .. })
    ));
    assert_eq!(
        link.send_to_node(&Frame::Return { worker: W })
            .unwrap_err()
            .code(),
        ErrorCode::Unauthorized
    );
}

#[test]
fn replies_ahead_of_a_pulls_moved_need_a_pull_since_and_version_6() {
    let pull = Frame::Pull {
        worker: W,
        secret: [3; 32],
        source: "ws://a".into(),
        destination: "ws://cloud".into(),
    };
    let since = Frame::PullSince {
        worker: W,
        secret: [3; 32],
        source: "ws://a".into(),
        destination: "ws://cloud".into(),
        delivered: 6,
    };
    let handled = Frame::Handled {
        worker: W,
        seq: 7,
        replies: 0,
    };
    // Version 5 knows no PullSince; a Pull does not attach the worker.
    let mut old = Link::speaking(NodeRole::Cloud, 5);
    assert!(old.client.on_send(&since).is_err());
    assert_eq!(
        old.node.on_frame(&since).unwrap_err().code(),
        ErrorCode::UnexpectedFrame
    );
    assert!(matches!(
        old.send_to_node(&pull),
        Ok(Event::Pull {
            delivered: None,
            ..
        })
    ));
    assert_eq!(
        old.send_to_client(&handled).unwrap_err().code(),
        ErrorCode::Unauthorized
    );
    // Version 6: only a cloud takes it; the source's replies come before Moved, and
    // nothing after it.
    let mut edge = Link::connected(NodeRole::Edge);
    edge.client.on_send(&since).unwrap();
    assert!(edge.node.on_frame(&since).is_err());
    let mut link = Link::connected(NodeRole::Cloud);
    assert!(matches!(
        link.send_to_node(&since),
        Ok(Event::Pull {
            delivered: Some(6),
            ..
        })
    ));
    assert!(matches!(
        link.send_to_client(&handled),
        Ok(Event::Handled { seq: 7, .. })
    ));
    link.send_to_client(&Frame::Moved {
        worker: W,
        destination: "ws://cloud".into(),
        last_seq: 7,
    })
    .unwrap();
    assert_eq!(
        link.send_to_client(&Frame::Handled {
            worker: W,
            seq: 8,
            replies: 0
        })
        .unwrap_err()
        .code(),
        ErrorCode::Unauthorized
    );
}

#[test]
fn a_return_since_comes_only_from_a_node_peer_speaking_version_7() {
    let since = Frame::ReturnSince {
        worker: W,
        delivered: 4,
    };
    let attached = |link: &mut Link| {
        let attach = Frame::Attach {
            worker: W,
            secret: [3; 32],
        };
        link.send_to_node(&attach).unwrap();
        link.send_to_client(&Frame::Attached {
            worker: W,
            last_seq: 5,
        })
        .unwrap();
    };
    // A version 6 cloud asks with Return; ReturnSince is not a frame there.
    let mut old = Link::from_peer(PeerKind::Node, NodeRole::Edge, 6);
    attached(&mut old);
    assert!(old.client.on_send(&since).is_err());
    assert_eq!(
        old.node.on_frame(&since).unwrap_err().code(),
        ErrorCode::UnexpectedFrame
    );
    // A client has no use for it: the replies it lacks come on its own link.
    let mut client = Link::connected(NodeRole::Edge);
    attached(&mut client);
    assert!(client.node.on_frame(&since).is_err());
    // The cloud, version 7: the source sends its state, and only the kept replies after
    // message 4 ahead of it.
    let mut cloud = Link::from_peer(PeerKind::Node, NodeRole::Edge, 7);
    attached(&mut cloud);
    assert_eq!(
        cloud.send_to_node(&since),
        Ok(Event::Return {
            worker: W,
            delivered: Some(4)
        })
    );
    assert!(matches!(
        cloud.node.state(),
        NodeState::SendingState {
            stage: SendStage::Preparing,
            ..
        }
    ));
    assert!(matches!(
        cloud.client.state(),
        ClientState::Returning { worker: W }
    ));
}
