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
