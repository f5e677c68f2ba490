//! Messages sent ahead of a handoff (Expect, version 5): the destination holds a client's
//! Posts for a worker on its way there and hands them to it, in order, once it arrives;
//! they never reach a worker of another owner.

use roam_node::NodeRole;
use roam_proto::{ErrorCode, Frame, WorkerId};

use crate::support::{message, Client, LocalWorker, TestNode};

/// Opens a connection to `url` that expects `worker`; returns it and the node's budget.
async fn expecting(url: &str, worker: WorkerId, secret: [u8; 32]) -> (Client, u64) {
    let mut client = Client::hello(url).await;
    client.send(&Frame::Expect { worker, secret }).await;
    match client.recv().await {
        Frame::Expecting { worker: w, budget } if w == worker => (client, budget),
        other => panic!("expected Expecting, got {other:?}"),
    }
}

async fn post_only(client: &mut Client, worker: WorkerId, seq: u64) {
    client
        .send(&Frame::Post {
            worker,
            seq,
            payload: message(seq),
        })
        .await;
}

/// A worker offloaded to `a` that has handled messages 1 to 3, and its twin.
async fn worker_at(a: &TestNode, id: WorkerId) -> (Client, LocalWorker, LocalWorker) {
    let mut local = LocalWorker::counter(id, 2);
    let mut twin = LocalWorker::counter(id, 2);
    let mut at_a = Client::hello(&a.url).await;
    at_a.offload(&mut local).await;
    assert_eq!(
        at_a.post(id, 3, &message(3)).await,
        twin.deliver(&message(3))
    );
    (at_a, local, twin)
}

async fn hand_off(at_a: &mut Client, worker: WorkerId, to: &str) -> u64 {
    at_a.send(&Frame::MoveOut {
        worker,
        destination: to.to_string(),
    })
    .await;
    match at_a.recv().await {
        Frame::Moved { last_seq, .. } => last_seq,
        other => panic!("expected Moved, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_ahead_run_at_the_destination_as_soon_as_the_worker_arrives() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, mut twin) = worker_at(&a, 30).await;
    let (mut at_b, budget) = expecting(&b.url, 30, local.secret).await;
    assert!(budget >= 16 << 20, "budget {budget}");
    for seq in 4..=5 {
        post_only(&mut at_b, 30, seq).await;
    }
    assert_eq!(hand_off(&mut at_a, 30, &b.url).await, 3);
    // B handled them when the worker arrived, before this connection attached.
    for seq in 4..=5 {
        assert_eq!(at_b.replies_of(30, seq).await, twin.deliver(&message(seq)));
    }
    at_b.send(&Frame::Attach {
        worker: 30,
        secret: local.secret,
    })
    .await;
    assert_eq!(
        at_b.recv().await,
        Frame::Attached {
            worker: 30,
            last_seq: 5
        }
    );
    assert_eq!(
        at_b.post(30, 6, &message(6)).await,
        twin.deliver(&message(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_ahead_after_a_gap_wait_for_the_messages_before_them() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, mut twin) = worker_at(&a, 31).await;
    // Message 4 goes nowhere before the move (as if it was sent to A too late): 5 and 6
    // go ahead to B, which must not run them before 4.
    let (mut at_b, _) = expecting(&b.url, 31, local.secret).await;
    for seq in 5..=6 {
        post_only(&mut at_b, 31, seq).await;
    }
    assert_eq!(hand_off(&mut at_a, 31, &b.url).await, 3);
    at_b.send(&Frame::Attach {
        worker: 31,
        secret: local.secret,
    })
    .await;
    assert_eq!(
        at_b.recv().await,
        Frame::Attached {
            worker: 31,
            last_seq: 3
        }
    );
    // The replay of 4 lets 5 and 6 follow it.
    post_only(&mut at_b, 31, 4).await;
    for seq in 4..=6 {
        assert_eq!(at_b.replies_of(31, seq).await, twin.deliver(&message(seq)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_ahead_with_a_wrong_secret_never_reach_the_worker() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, mut twin) = worker_at(&a, 32).await;
    let (mut forger, _) = expecting(&b.url, 32, [0xee; 32]).await;
    post_only(&mut forger, 32, 4).await;
    assert_eq!(hand_off(&mut at_a, 32, &b.url).await, 3);
    let (code, worker, _) = forger.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::Unauthorized, Some(32)));
    // Nor do its later Posts.
    post_only(&mut forger, 32, 4).await;
    assert_eq!(forger.recv_error().await.0, ErrorCode::Unauthorized);
    let mut owner = Client::hello(&b.url).await;
    owner
        .send(&Frame::Attach {
            worker: 32,
            secret: local.secret,
        })
        .await;
    assert_eq!(
        owner.recv().await,
        Frame::Attached {
            worker: 32,
            last_seq: 3
        }
    );
    assert_eq!(
        owner.post(32, 4, &message(4)).await,
        twin.deliver(&message(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_ahead_past_the_budget_are_refused() {
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_b, budget) = expecting(&b.url, 33, [7; 32]).await;
    let piece = 12 << 20;
    let fits = budget / piece as u64;
    for seq in 1..=fits + 1 {
        at_b.send(&Frame::Post {
            worker: 33,
            seq,
            payload: vec![seq as u8; piece],
        })
        .await;
    }
    let (code, worker, message) = at_b.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::TooLarge, Some(33)), "{message}");
    assert!(
        message.contains(&format!("message {}", fits + 1)),
        "{message}"
    );
    // The node goes on serving.
    let (_, health) = b.get("/healthz").await;
    assert!(!health.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_ahead_that_arrives_after_the_worker_waits_for_the_gap_too() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, mut twin) = worker_at(&a, 34).await;
    let (mut at_b, _) = expecting(&b.url, 34, local.secret).await;
    post_only(&mut at_b, 34, 5).await;
    assert_eq!(hand_off(&mut at_a, 34, &b.url).await, 3);
    // The worker is at B now; 6 was still on its way (a picture uploading), 4 not sent.
    post_only(&mut at_b, 34, 6).await;
    at_b.send(&Frame::Attach {
        worker: 34,
        secret: local.secret,
    })
    .await;
    assert_eq!(
        at_b.recv().await,
        Frame::Attached {
            worker: 34,
            last_seq: 3
        }
    );
    post_only(&mut at_b, 34, 4).await;
    for seq in 4..=6 {
        assert_eq!(at_b.replies_of(34, seq).await, twin.deliver(&message(seq)));
    }
}
