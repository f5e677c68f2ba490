//! Checkpoints: a client takes a copy of its worker's state from the node while the worker
//! keeps running there, so that a recovery would start from it.

use roam_node::NodeRole;
use roam_proto::Frame;

use crate::support::{message, Client, LocalWorker, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_copies_the_state_and_the_worker_runs_on() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(70, 0);
    let mut twin = LocalWorker::counter(70, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    for seq in 1..=5 {
        assert_eq!(
            client.post(70, seq, &message(seq)).await,
            twin.deliver(&message(seq))
        );
    }

    // A second connection of the owner asks for the copy.
    let mut other = Client::hello(&node.url).await;
    other
        .send(&Frame::Attach {
            worker: 70,
            secret: local.secret,
        })
        .await;
    assert!(matches!(other.recv().await, Frame::Attached { .. }));
    let copy = other.checkpoint(70).await;
    assert_eq!(copy.manifest.last_seq, 5);

    // The worker is still there and goes on from message 6.
    for seq in 6..=8 {
        assert_eq!(
            client.post(70, seq, &message(seq)).await,
            twin.deliver(&message(seq))
        );
    }
    // The copy is the worker as it was after message 5: restored and given 6 to 8, it
    // answers as the worker that never stopped.
    let mut restored = LocalWorker::counter(70, 0);
    restored.restore(&copy);
    let mut again = LocalWorker::counter(70, 0);
    again.restore(&copy);
    for seq in 6..=8 {
        restored.deliver(&message(seq));
    }
    assert!(restored.worker.memory() == twin.worker.memory());
    assert_ne!(again.worker.memory(), twin.worker.memory());
    let (_, metrics) = node.get("/metrics").await;
    assert!(metrics.contains("roam_checkpoints_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_may_take_a_checkpoint() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(71, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    let mut stranger = Client::hello(&node.url).await;
    stranger.send(&Frame::Checkpoint { worker: 71 }).await;
    match stranger.recv().await {
        Frame::Error { code, .. } => assert_eq!(code, roam_proto::ErrorCode::Unauthorized),
        other => panic!("expected an Error, got {other:?}"),
    }
    // The owner's worker is untouched.
    assert_eq!(client.post(71, 1, &message(1)).await.len(), 1);
}

/// A checkpoint's capture waits for the messages the worker has queued; a return asked for
/// meanwhile waits for the capture instead of being refused as a second move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_asked_during_a_checkpoints_capture_waits_for_it() {
    use crate::precopy::{filler, FILLER, PAGES};

    let node = TestNode::start(NodeRole::Edge).await;
    let wasm = wat::parse_str(FILLER).unwrap();
    let mut local = LocalWorker::start(&wasm, 72, 0);
    let mut twin = LocalWorker::start(&wasm, 72, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    // A backlog: each message rewrites all 16 MiB.
    let backlog = 30;
    for seq in 1..=backlog {
        let payload = filler(PAGES, 100, seq as u32);
        twin.deliver(&payload);
        client
            .send(&Frame::Post {
                worker: 72,
                seq,
                payload,
            })
            .await;
    }
    let attach = Frame::Attach {
        worker: 72,
        secret: local.secret,
    };
    let mut copier = Client::hello(&node.url).await;
    copier.send(&attach).await;
    assert!(matches!(copier.recv().await, Frame::Attached { .. }));
    // The Return comes while the checkpoint captures (the capture goes ahead of the
    // backlog, but waits for the message in progress and then copies 16 MiB).
    copier.send(&Frame::Checkpoint { worker: 72 }).await;
    // On the connection the replies go to: the worker's state comes back, and the
    // messages it had not begun are the client's to handle.
    let state = client.take_back(72).await;
    let last_seq = state.manifest.last_seq;
    assert!(
        last_seq <= backlog,
        "{last_seq} messages handled of {backlog}"
    );
    let mut back = LocalWorker::start(&wasm, 72, 0);
    back.restore(&state);
    for seq in last_seq + 1..=backlog {
        back.deliver(&filler(PAGES, 100, seq as u32));
    }
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the returned worker's memory differs from a worker that never moved"
    );
}
