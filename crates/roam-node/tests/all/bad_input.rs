//! Bad input of every kind is refused with a clear Error frame, and the node goes on
//! serving its other workers (and, unless the protocol says otherwise, the connection).

use roam_node::{NodeRole, DEV_CLUSTER_KEY};
use roam_proto::{ErrorCode, Frame, MoveToken, PeerKind, PROTOCOL_VERSION};

use crate::support::{message, Client, LocalWorker, TestNode};

/// A node with one worker already serving on its own connection, to prove it goes on.
async fn node_with_a_bystander(node: &TestNode) -> (Client, LocalWorker, LocalWorker) {
    let mut local = LocalWorker::counter(100, 0);
    let twin = LocalWorker::counter(100, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    (client, local, twin)
}

async fn bystander_still_served(client: &mut Client, twin: &mut LocalWorker, seq: u64) {
    assert_eq!(
        client.post(100, seq, &message(seq)).await,
        twin.deliver(&message(seq))
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_text_are_refused_and_the_connection_goes_on() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (mut client, _local, mut twin) = node_with_a_bystander(&node).await;
    // A header claiming a 4 GiB body is refused before anything is read or allocated.
    client.send_bytes(vec![0xff; 20]).await;
    let (code, worker, text) = client.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::TooLarge, None));
    assert!(text.contains("more than the cap"), "{text}");
    client.send_bytes(vec![0xff, 0, 0, 0, 0, 0, 0, 0]).await;
    let (code, worker, text) = client.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::Malformed, None));
    assert!(text.contains("unknown frame type 0xff"), "{text}");
    // A header that claims more than follows.
    let mut truncated = Frame::Ping { nonce: 1 }.encode();
    truncated.pop();
    client.send_bytes(truncated).await;
    assert_eq!(client.recv_error().await.0, ErrorCode::Malformed);
    client.send_text("hello?").await;
    let (code, _, text) = client.recv_error().await;
    assert_eq!(code, ErrorCode::Malformed);
    assert!(text.contains("binary"), "{text}");
    bystander_still_served(&mut client, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_future_versions_are_refused_and_closed() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (mut bystander, _local, mut twin) = node_with_a_bystander(&node).await;
    for (min, max) in [(0, 0), (PROTOCOL_VERSION + 1, 9)] {
        let mut client = Client::connect(&node.url).await;
        client
            .send(&Frame::Hello {
                min_version: min,
                max_version: max,
                peer: PeerKind::Client,
                name: "from another time".into(),
            })
            .await;
        let (code, worker, text) = client.recv_error().await;
        assert_eq!((code, worker), (ErrorCode::UnsupportedVersion, None));
        assert!(text.contains(&format!("{min}..={max}")), "{text}");
        assert_eq!(client.next().await, None, "the node closes the connection");
    }
    // The previous version is still spoken.
    let mut client = Client::connect(&node.url).await;
    client
        .send(&Frame::Hello {
            min_version: 1,
            max_version: 1,
            peer: PeerKind::Client,
            name: "a version-1 client".into(),
        })
        .await;
    assert!(matches!(
        client.next().await,
        Some(Frame::Welcome { version: 1, .. })
    ));
    // Anything before Hello is refused the same way.
    let mut client = Client::connect(&node.url).await;
    client.send(&Frame::Ping { nonce: 3 }).await;
    assert_eq!(client.recv_error().await.0, ErrorCode::UnexpectedFrame);
    assert_eq!(client.next().await, None);
    bystander_still_served(&mut bystander, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_a_node_needs_a_valid_move_token() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (mut bystander, _local, mut twin) = node_with_a_bystander(&node).await;
    let mut moving = LocalWorker::counter(101, 2);
    let source = "ws://127.0.0.1:1";
    let later = now_ms() + 60_000;
    let cases = [
        (None, "without a move token"),
        (
            Some(MoveToken::issue(
                b"not the cluster key",
                101,
                source,
                &node.url,
                later,
            )),
            "signature does not match",
        ),
        (
            Some(MoveToken::issue(
                DEV_CLUSTER_KEY,
                101,
                source,
                &node.url,
                now_ms() - 1,
            )),
            "expired",
        ),
        (
            Some(MoveToken::issue(
                DEV_CLUSTER_KEY,
                101,
                source,
                "ws://elsewhere:1",
                later,
            )),
            "destination",
        ),
        (
            Some(MoveToken::issue(
                DEV_CLUSTER_KEY,
                999,
                source,
                &node.url,
                later,
            )),
            "for worker",
        ),
    ];
    let mut peer = Client::hello_as(&node.url, PeerKind::Node).await;
    for (token, why) in cases {
        match peer.send_state(&mut moving, token).await {
            Frame::Error {
                code,
                worker,
                message,
            } => {
                assert_eq!((code, worker), (ErrorCode::BadToken, Some(101)));
                assert!(message.contains(why), "{message} (expected: {why})");
            }
            other => panic!("expected BadToken ({why}), got {other:?}"),
        }
    }
    let (_, health) = node.get("/healthz").await;
    assert!(
        health.contains("\"workers\":1"),
        "nothing was created: {health}"
    );

    // The same connection still takes a good token.
    let token = MoveToken::issue(DEV_CLUSTER_KEY, 101, source, &node.url, later);
    assert_eq!(
        peer.send_state(&mut moving, Some(token)).await,
        Frame::StateAdopted {
            worker: 101,
            last_seq: 2
        }
    );
    bystander_still_served(&mut bystander, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_use_or_move_another_clients_worker() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (mut owner, _local, mut twin) = node_with_a_bystander(&node).await;
    let mut intruder = Client::hello(&node.url).await;
    intruder
        .send(&Frame::Post {
            worker: 100,
            seq: 1,
            payload: b"mine now".to_vec(),
        })
        .await;
    let (code, worker, _) = intruder.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::Unauthorized, Some(100)));
    intruder
        .send(&Frame::Attach {
            worker: 100,
            secret: [1; 32],
        })
        .await;
    let (code, worker, text) = intruder.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::Unauthorized, Some(100)));
    assert!(text.contains("secret"), "{text}");
    for frame in [
        Frame::MoveOut {
            worker: 100,
            destination: "ws://127.0.0.1:1".into(),
        },
        Frame::Return { worker: 100 },
    ] {
        intruder.send(&frame).await;
        assert_eq!(intruder.recv_error().await.0, ErrorCode::Unauthorized);
    }
    // An unknown worker is named as such.
    intruder
        .send(&Frame::Attach {
            worker: 55,
            secret: [1; 32],
        })
        .await;
    assert_eq!(intruder.recv_error().await.0, ErrorCode::UnknownWorker);
    // The owner's messages were not disturbed: message 1 is still the first.
    bystander_still_served(&mut owner, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_bytes_that_do_not_match_their_hash_are_refused() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (mut bystander, _local, mut twin) = node_with_a_bystander(&node).await;
    let mut other = LocalWorker::start(
        &wat::parse_str(include_str!("fixtures/failing.wat")).unwrap(),
        102,
        0,
    );
    let snapshot = other.capture();
    let mut client = Client::hello(&node.url).await;
    let fake = vec![0u8; other.module.bytes().len()];
    client
        .send(&Frame::StateBegin {
            worker: 102,
            module_hash: *other.module.hash(),
            module_len: fake.len() as u32,
            owner: other.owner(),
            token: None,
            manifest: snapshot.manifest.encode(),
        })
        .await;
    match client.recv().await {
        Frame::StateNeed { module: true, .. } => {}
        other => panic!("expected StateNeed for the module, got {other:?}"),
    }
    client
        .send(&Frame::ModuleData {
            module_hash: *other.module.hash(),
            offset: 0,
            bytes: fake,
        })
        .await;
    let (code, worker, text) = client.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::ModuleMismatch, Some(102)));
    assert!(text.contains("hash to"), "{text}");
    // Nothing was created or cached; the right bytes are still asked for and accepted.
    assert_eq!(client.offload(&mut other).await, 0);
    bystander_still_served(&mut bystander, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_nodes_cap_is_refused() {
    let node = TestNode::start_with(NodeRole::Edge, None, |c| {
        c.limits.max_memory = 64 << 20;
    })
    .await;
    let (mut bystander, _local, mut twin) = node_with_a_bystander(&node).await;
    let mut big = LocalWorker::counter(103, 1);
    let mut snapshot = big.capture();
    // Claims 1 GiB of memory, over this node's 64 MiB.
    snapshot.manifest.memory_size = 1 << 30;
    let mut client = Client::hello(&node.url).await;
    let answer = client
        .send_snapshot(103, big.owner(), &big.module, &snapshot, None)
        .await;
    match answer {
        Frame::Error {
            code,
            worker,
            message,
        } => {
            assert_eq!((code, worker), (ErrorCode::TooLarge, Some(103)));
            assert!(message.contains("cap"), "{message}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    bystander_still_served(&mut bystander, &mut twin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_payloads_are_refused_and_the_connection_goes_on() {
    let node = TestNode::start_with(NodeRole::Edge, None, |c| {
        c.frame_limits.max_payload = 1024;
        c.frame_limits.max_frame = 256 << 10;
    })
    .await;
    let (mut client, _local, mut twin) = node_with_a_bystander(&node).await;
    client
        .send(&Frame::Post {
            worker: 100,
            seq: 1,
            payload: vec![7; 2048],
        })
        .await;
    let (code, worker, text) = client.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::TooLarge, Some(100)));
    assert!(text.contains("payload"), "{text}");
    client.send(&Frame::Ping { nonce: 9 }).await;
    assert_eq!(client.recv().await, Frame::Pong { nonce: 9 });
    // A frame over the frame cap.
    client
        .send(&Frame::ChunkData {
            worker: 100,
            bodies: vec![vec![0; 300 << 10]],
        })
        .await;
    assert_eq!(client.recv_error().await.0, ErrorCode::TooLarge);
    bystander_still_served(&mut client, &mut twin, 1).await;
}
