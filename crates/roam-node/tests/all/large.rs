//! Large messages both ways at once: a client that keeps posting large messages without
//! reading while the node sends it large replies must not leave both sides blocked.

use roam_node::NodeRole;
use roam_proto::Frame;

use crate::support::{Client, LocalWorker, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_posts_and_large_replies_cross_without_blocking_each_other() {
    let node = TestNode::start(NodeRole::Edge).await;
    let wasm = wat::parse_str(include_str!("fixtures/echo.wat")).unwrap();
    let mut local = LocalWorker::start(&wasm, 60, 0);
    let mut client = Client::hello(&node.url).await;
    client.offload(&mut local).await;
    // Far more than the sockets buffer in either direction.
    let messages: Vec<Vec<u8>> = (1..=12u8).map(|i| vec![i; 8 << 20]).collect();
    for (seq, payload) in (1..).zip(&messages) {
        client
            .send(&Frame::Post {
                worker: 60,
                seq,
                payload: payload.clone(),
            })
            .await;
    }
    for (seq, payload) in (1..).zip(&messages) {
        assert_eq!(client.replies_of(60, seq).await, vec![payload.clone()]);
    }
}
