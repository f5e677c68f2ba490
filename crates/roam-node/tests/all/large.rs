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
    // A client posts four messages of 8 MiB before it reads (far more than the sockets
    // buffer either way), three times over. A node that stopped reading while a reply
    // waited to be written would leave both sides blocked on the first window.
    let mut seq = 1;
    for window in 0..3u8 {
        let messages: Vec<Vec<u8>> = (0..4u8).map(|i| vec![window * 4 + i; 8 << 20]).collect();
        for (offset, payload) in (0..).zip(&messages) {
            client
                .send(&Frame::Post {
                    worker: 60,
                    seq: seq + offset,
                    payload: payload.clone(),
                })
                .await;
        }
        for (offset, payload) in (0..).zip(&messages) {
            assert_eq!(
                client.replies_of(60, seq + offset).await,
                vec![payload.clone()]
            );
        }
        seq += messages.len() as u64;
    }
}
