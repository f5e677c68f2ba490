//! A node's life: the registry of edges, a failing worker among healthy ones, and a
//! graceful shutdown that loses no worker state across a restart.

use std::time::Duration;

use roam_node::NodeRole;
use roam_proto::{Frame, PeerKind};

use crate::support::{message, Client, LocalWorker, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_registers_with_its_cloud_and_is_listed() {
    let cloud = TestNode::start(NodeRole::Cloud).await;
    let cloud_url = cloud.url.clone();
    let edge = TestNode::start_with(NodeRole::Edge, None, move |c| {
        c.cloud = Some(cloud_url);
        c.name = "edge-a".into();
        c.location = "lab".into();
    })
    .await;
    let mut asker = Client::hello_as(&cloud.url, PeerKind::Node).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        asker.send(&Frame::ListNodes).await;
        let Frame::Nodes { nodes } = asker.recv().await else {
            panic!("expected Nodes")
        };
        if let Some(info) = nodes.iter().find(|n| n.node.node_id == "edge-a") {
            assert_eq!(info.node.url, edge.url);
            assert_eq!(info.node.role, NodeRole::Edge);
            assert_eq!(info.node.location, "lab");
            assert!(info.node.cores >= 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "edge-a never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An edge refuses the cloud's registry frames.
    let mut at_edge = Client::hello(&edge.url).await;
    at_edge.send(&Frame::ListNodes).await;
    let (_, _, text) = at_edge.recv_error().await;
    assert!(text.contains("cloud"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_keeps_trying_when_its_cloud_is_away() {
    // Nobody listens at the cloud's address: the edge still serves.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let edge = TestNode::start_with(NodeRole::Edge, None, move |c| c.cloud = Some(nowhere)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut local = LocalWorker::counter(30, 0);
    let mut client = Client::hello(&edge.url).await;
    client.offload(&mut local).await;
    assert_eq!(client.post(30, 1, &message(1)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_reported_and_the_others_keep_running() {
    let node = TestNode::start(NodeRole::Edge).await;
    let mut healthy = LocalWorker::counter(31, 0);
    let mut twin = LocalWorker::counter(31, 0);
    let mut first = Client::hello(&node.url).await;
    first.offload(&mut healthy).await;

    let wasm = wat::parse_str(include_str!("fixtures/failing.wat")).unwrap();
    let mut fragile = LocalWorker::start(&wasm, 32, 0);
    let mut second = Client::hello(&node.url).await;
    second.offload(&mut fragile).await;
    assert_eq!(second.post(32, 1, b"ok").await.len(), 1);
    second
        .send(&Frame::Post {
            worker: 32,
            seq: 2,
            payload: b"boom".to_vec(),
        })
        .await;
    match second.recv().await {
        Frame::WorkerFailed {
            worker,
            seq,
            reason,
        } => {
            assert_eq!((worker, seq), (32, 2));
            assert!(reason.contains("trap"), "{reason}");
        }
        other => panic!("expected WorkerFailed, got {other:?}"),
    }
    assert_eq!(
        first.post(31, 1, &message(1)).await,
        twin.deliver(&message(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_saves_every_worker_and_a_restart_brings_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(NodeRole::Edge, Some(dir.path().to_path_buf()), |_| {}).await;
    let mut local = LocalWorker::counter(40, 1);
    let mut twin = LocalWorker::counter(40, 1);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    for seq in 2..=3 {
        assert_eq!(
            client.post(40, seq, &message(seq)).await,
            twin.deliver(&message(seq))
        );
    }
    // A message still in flight when the shutdown starts is finished, not lost.
    client
        .send(&Frame::Post {
            worker: 40,
            seq: 4,
            payload: message(4),
        })
        .await;
    assert_eq!(client.replies_of(40, 4).await, twin.deliver(&message(4)));
    node.stop().await;
    assert_eq!(
        client.next().await,
        Some(Frame::Goodbye {
            reason: "the node is shutting down".into()
        })
    );
    let saved: Vec<_> = std::fs::read_dir(dir.path().join("workers"))
        .unwrap()
        .collect();
    assert_eq!(saved.len(), 1, "one saved worker");
    assert_eq!(
        std::fs::read_dir(dir.path().join("modules"))
            .unwrap()
            .count(),
        1,
        "the module is cached"
    );

    let node = TestNode::start_with(NodeRole::Edge, Some(dir.path().to_path_buf()), |_| {}).await;
    let mut client = Client::hello(&node.url).await;
    client
        .send(&Frame::Attach {
            worker: 40,
            secret: local.secret,
        })
        .await;
    assert_eq!(
        client.recv().await,
        Frame::Attached {
            worker: 40,
            last_seq: 4
        }
    );
    assert_eq!(
        client.post(40, 5, &message(5)).await,
        twin.deliver(&message(5))
    );
}
