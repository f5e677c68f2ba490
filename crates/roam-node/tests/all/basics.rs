//! Serving: health and metrics, offload, attach, posts in order, return.

use roam_node::NodeRole;
use roam_proto::{ErrorCode, Frame};

use crate::support::{message, Client, LocalWorker, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_answer_on_the_websocket_address() {
    let node = TestNode::start(NodeRole::Edge).await;
    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["role"], "edge");
    assert_eq!(health["workers"], 0);
    assert_eq!(health["dev_mode"], true);

    let mut client = Client::hello(&node.url).await;
    let mut local = LocalWorker::counter(1, 0);
    client.offload(&mut local).await;
    client.post(1, 1, b"x").await;

    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"workers\":1"), "{body}");
    let (status, metrics) = node.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "roam_workers_hosted 1",
        "roam_connections 1",
        "roam_moves_total{kind=\"offload\",outcome=\"ok\"} 1",
        "roam_message_duration_seconds_count 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    assert!(metrics.contains("roam_bytes_total{direction=\"in\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_worker_goes_on_where_it_left_off_and_comes_back_intact() {
    let node = TestNode::start(NodeRole::Edge).await;
    // The worker handles three messages locally, then moves to the node.
    let mut local = LocalWorker::counter(7, 3);
    let mut twin = LocalWorker::counter(7, 3);
    let mut client = Client::hello(&node.url).await;
    assert_eq!(client.offload(&mut local).await, 3);

    for seq in 4..=8 {
        let replies = client.post(7, seq, &message(seq)).await;
        assert_eq!(replies, twin.deliver(&message(seq)), "message {seq}");
    }

    // Back home: the state the node returns goes on exactly like the twin.
    let snapshot = client.take_back(7).await;
    assert_eq!(snapshot.manifest.last_seq, 8);
    local.restore(&snapshot);
    assert_eq!(local.deliver(&message(9)), twin.deliver(&message(9)));

    // The node drops its copy once it reads the client's StateAdopted, which the client
    // does not wait for: give it a moment.
    let returned = "roam_moves_total{kind=\"return\",outcome=\"ok\"} 1";
    let (mut health, mut metrics) = (String::new(), String::new());
    for _ in 0..100 {
        health = node.get("/healthz").await.1;
        metrics = node.get("/metrics").await.1;
        if health.contains("\"workers\":0") && metrics.contains(returned) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(health.contains("\"workers\":0"), "{health}");
    assert!(metrics.contains(returned), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_attaches_from_a_new_connection_and_posts_resume() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(2, 0);
    let mut twin = LocalWorker::counter(2, 0);
    let mut first = Client::hello(&node.url).await;
    first.offload(&mut local).await;
    for seq in 1..=2 {
        assert_eq!(
            first.post(2, seq, &message(seq)).await,
            twin.deliver(&message(seq))
        );
    }
    drop(first);

    let mut second = Client::hello(&node.url).await;
    second
        .send(&Frame::Attach {
            worker: 2,
            secret: local.secret,
        })
        .await;
    assert_eq!(
        second.recv().await,
        Frame::Attached {
            worker: 2,
            last_seq: 2
        }
    );
    assert_eq!(
        second.post(2, 3, &message(3)).await,
        twin.deliver(&message(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_post_is_handled_once_and_a_gap_is_refused() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(3, 0);
    let mut twin = LocalWorker::counter(3, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    assert_eq!(
        client.post(3, 1, &message(1)).await,
        twin.deliver(&message(1))
    );

    // Message 1 again (a replay), then message 5 (a gap): the replay is dropped without
    // an answer, the gap is refused; message 2 then counts as the second message.
    client
        .send(&Frame::Post {
            worker: 3,
            seq: 1,
            payload: message(1),
        })
        .await;
    client
        .send(&Frame::Post {
            worker: 3,
            seq: 5,
            payload: message(5),
        })
        .await;
    let (code, worker, text) = client.recv_error().await;
    assert_eq!((code, worker), (ErrorCode::UnexpectedFrame, Some(3)));
    assert!(text.contains("the next message is 2"), "{text}");
    assert_eq!(
        client.post(3, 2, &message(2)).await,
        twin.deliver(&message(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_in_flight_are_answered_in_order() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(4, 0);
    let mut twin = LocalWorker::counter(4, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    for seq in 1..=8 {
        client
            .send(&Frame::Post {
                worker: 4,
                seq,
                payload: message(seq),
            })
            .await;
    }
    for seq in 1..=8 {
        assert_eq!(client.replies_of(4, seq).await, twin.deliver(&message(seq)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_says_whether_it_holds_a_module() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(3, 0);
    let name = hex::encode(local.module.hash());
    let (status, body) = node.get(&format!("/modules/{name}")).await;
    assert_eq!((status, body.as_str()), (404, r#"{"held":false}"#));

    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    let (status, body) = node.get(&format!("/modules/{name}")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"held":true}"#));

    for bad in ["xyz", "00", &"g".repeat(64)] {
        let (status, body) = node.get(&format!("/modules/{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("sha-256"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_handled_without_sending_its_replies() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut local = LocalWorker::counter(9, 3);
    let mut twin = LocalWorker::counter(9, 3);
    let mut client = Client::hello(&node.url).await;
    assert_eq!(client.offload(&mut local).await, 3);
    // Messages 4 and 5 were answered elsewhere (on the device): the node handles them and
    // says only that it did.
    for seq in 4..=5 {
        twin.deliver(&message(seq));
        client
            .send(&Frame::Replay {
                worker: 9,
                seq,
                payload: message(seq),
            })
            .await;
        match client.recv().await {
            Frame::Handled {
                worker: 9,
                seq: s,
                replies: 0,
            } => assert_eq!(s, seq),
            other => panic!("expected Handled with no replies, got {other:?}"),
        }
    }
    // They count: the next message's replies are those of a worker that handled them.
    let replies = client.post(9, 6, &message(6)).await;
    assert!(!replies.is_empty());
    assert_eq!(replies, twin.deliver(&message(6)));
}
