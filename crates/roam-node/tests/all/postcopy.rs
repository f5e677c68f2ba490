//! Post-copy handoffs: the destination runs the worker before its memory has arrived,
//! fetching what the worker touches, and a worker whose source goes away mid-way is
//! reported lost (StateLost) instead of running on memory that never came.

use std::time::Duration;

use roam_node::{NodeRole, PostCopyUse};
use roam_proto::{ErrorCode, Frame, WorkerId};

use crate::precopy::{filler, metric, FILLER, PAGES};
use crate::support::{Client, LocalWorker, TestNode};

/// Node B, and node A reaching it over an emulated 25 Mbit/s link (16 MiB of noise takes
/// over 5 s to cross), A sending workers post-copy in one paused round.
async fn nodes() -> (TestNode, TestNode, roam_link::Link) {
    let b = TestNode::start(NodeRole::Edge).await;
    let link = roam_link::Link::start(
        roam_link::LinkSpec::symmetric(25_000_000, Duration::from_millis(2)),
        b.addr,
    )
    .unwrap();
    let a = TestNode::start_with(NodeRole::Edge, None, |c| {
        c.precopy.max_rounds = 0;
        c.precopy.post_copy = PostCopyUse::Always;
        c.routes.insert(b.url.clone(), link.url());
    })
    .await;
    (a, b, link)
}

/// Whether this machine can run post-copy (userfaultfd); a test that needs it says it is
/// skipped otherwise.
fn post_copy_here() -> bool {
    match roam_runtime::post_copy_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: post-copy is not available here ({why})");
            false
        }
    }
}

/// A filler worker whose 16 MiB are noise on `a`, handed to `b`: returns the client's
/// connection to B (attached) and the local twin that never moved.
async fn handed_off(a: &TestNode, b: &TestNode, id: WorkerId) -> (Client, LocalWorker) {
    let wasm = wat::parse_str(FILLER).unwrap();
    let mut local = LocalWorker::start(&wasm, id, 0);
    let mut twin = LocalWorker::start(&wasm, id, 0);
    local.deliver(&filler(PAGES, 100, 7));
    twin.deliver(&filler(PAGES, 100, 7));
    let mut at_a = Client::hello(&a.url).await;
    assert_eq!(at_a.offload(&mut local).await, 1);
    at_a.send(&Frame::MoveOut {
        worker: id,
        destination: b.url.clone(),
    })
    .await;
    match at_a.recv().await {
        Frame::Moved { last_seq, .. } => assert_eq!(last_seq, 1),
        other => panic!("expected Moved, got {other:?}"),
    }
    let mut at_b = Client::hello(&b.url).await;
    at_b.send(&Frame::Attach {
        worker: id,
        secret: local.secret,
    })
    .await;
    match at_b.recv().await {
        Frame::Attached { last_seq, .. } => assert_eq!(last_seq, 1),
        other => panic!("expected Attached, got {other:?}"),
    }
    (at_b, twin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_copy_handoff_runs_the_worker_before_its_memory_arrives() {
    if !post_copy_here() {
        return;
    }
    let (a, b, _link) = nodes().await;
    let (mut at_b, mut twin) = handed_off(&a, &b, 50).await;
    // The client was told to go to B before the state crossed: every message it posts now
    // touches pages that are still on their way, and must see them as they were.
    for seq in 2..6 {
        let payload = filler(PAGES, 2, seq as u32);
        let expected = twin.deliver(&payload);
        assert_eq!(
            at_b.post(50, seq, &payload).await,
            expected,
            "message {seq}"
        );
    }
    let state = at_b.take_back(50).await;
    let mut back = LocalWorker::start(&wat::parse_str(FILLER).unwrap(), 50, 0);
    back.restore(&state);
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the worker moved post-copy differs from a worker that never moved"
    );
    let (_, metrics) = b.get("/metrics").await;
    assert_eq!(metric(&metrics, "roam_post_copy_moves_total"), 1.0);
    assert!(
        metric(&metrics, "roam_post_copy_requests_total") >= 1.0,
        "the worker touched no chunk before it arrived: it did not run post-copy\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_post_copy_source_goes_away_is_reported_lost() {
    if !post_copy_here() {
        return;
    }
    let (a, b, link) = nodes().await;
    let (mut at_b, _) = handed_off(&a, &b, 51).await;
    // A's transfer to B breaks with most of the memory still on its way.
    link.set_down(true);
    at_b.send(&Frame::Post {
        worker: 51,
        seq: 2,
        payload: filler(PAGES, 100, 2),
    })
    .await;
    let (code, worker, message) = at_b.recv_error().await;
    assert_eq!(code, ErrorCode::StateLost, "{message}");
    assert_eq!(worker, Some(51));
    // B lets the lost worker go, and its memory with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = b.get("/metrics").await;
        if metric(&metrics, "roam_workers_hosted") == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still hosts the lost worker\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    at_b.send(&Frame::Post {
        worker: 51,
        seq: 3,
        payload: filler(PAGES, 100, 3),
    })
    .await;
    assert_eq!(at_b.recv_error().await.0, ErrorCode::UnknownWorker);
    // B keeps serving: another worker offloaded to it runs.
    let mut counter = LocalWorker::counter(52, 3);
    let mut client = Client::hello(&b.url).await;
    assert_eq!(client.offload(&mut counter).await, 3);
    let payload = crate::support::message(4);
    let expected = counter.deliver(&payload);
    assert_eq!(client.post(52, 4, &payload).await, expected);
}

/// A move asked for while the worker's memory is still arriving post-copy goes ahead: its
/// capture reads every page, and so waits for (or fetches) the ones not yet in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_asked_while_the_memory_arrives_waits_for_it() {
    if !post_copy_here() {
        return;
    }
    let (a, b, _link) = nodes().await;
    let (mut at_b, twin) = handed_off(&a, &b, 53).await;
    // 16 MiB of noise takes over 5 s to reach B: the return is asked for long before.
    let state = at_b.take_back(53).await;
    let mut back = LocalWorker::start(&wat::parse_str(FILLER).unwrap(), 53, 0);
    back.restore(&state);
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the returned worker differs from a worker that never moved"
    );
}
