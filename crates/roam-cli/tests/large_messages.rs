//! Large messages posted while a worker leaves its node wait for the destination instead
//! of crossing the uplink to a source that has stopped taking messages — and are handled
//! exactly once wherever the worker ends up, when the move succeeds and when it fails. A
//! fallback to the cloud sends the messages its lost node did not answer ahead of the
//! worker, while the cloud fetches it.

mod support;

use roam_cli::workloads::counter_expected;
use roam_client::{MoveKind, Place, WorkerHandle, WorkerOptions};
use support::{metric, relayed, runtime, slow_link_to, worker, Node};

/// Frame bytes node `url` has received.
fn bytes_in(url: &str) -> u64 {
    metric(url, "roam_bytes_total{direction=\"in\"}")
}

fn counter() -> Vec<u8> {
    std::fs::read(worker("counter")).unwrap()
}

/// Message `i`: a small one, or every third one 600 KiB (over the size that waits).
fn message(i: usize) -> Vec<u8> {
    let len = if i.is_multiple_of(3) { 600 << 10 } else { 40 };
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// What a move made while posting showed.
struct Outcome {
    /// The move's kind, or its error.
    moved: Result<MoveKind, String>,
    /// Every reply, in order.
    replies: Vec<Vec<u8>>,
    /// Where the worker is after it.
    place: Place,
    /// Frame bytes the source received from the move's start to its end.
    source_bytes_in: u64,
}

/// Moves the worker from `a` to `to` in the background, posting `during` while it moves.
async fn move_while_posting(a: &str, to: Place, before: &[Vec<u8>], during: &[Vec<u8>]) -> Outcome {
    let mut handle = WorkerHandle::start(&counter(), WorkerOptions::default()).unwrap();
    let mut replies = Vec::new();
    handle.move_to(Place::Node(a.to_string())).await.unwrap();
    for m in before {
        handle.post(m.clone()).await.unwrap();
    }
    // Everything posted so far has reached the source.
    while let Some(r) = handle.next_reply().await.unwrap() {
        replies.push(r.payload);
    }
    let bytes_before = bytes_in(a);
    handle.begin_move(to).await.unwrap();
    for m in during {
        handle.post(m.clone()).await.unwrap();
        replies.extend(handle.take_replies().into_iter().map(|r| r.payload));
    }
    while handle.moving() {
        if let Some(r) = handle.next_reply().await.unwrap() {
            replies.push(r.payload);
        }
    }
    let moved = handle
        .take_move_result()
        .expect("the move reports its outcome")
        .map(|report| report.kind)
        .map_err(|e| e.to_string());
    let source_bytes_in = bytes_in(a) - bytes_before;
    while let Some(r) = handle.next_reply().await.unwrap() {
        replies.push(r.payload);
    }
    Outcome {
        moved,
        replies,
        place: handle.place(),
        source_bytes_in,
    }
}

#[test]
fn large_messages_posted_during_a_handoff_are_handled_once_at_the_destination() {
    let a = Node::start("edge", None);
    let b = Node::start("edge", None);
    let messages: Vec<Vec<u8>> = (0..24).map(message).collect();
    let out = runtime().block_on(move_while_posting(
        &a.url,
        Place::Node(b.url.clone()),
        &messages[..6],
        &messages[6..],
    ));
    assert_eq!(out.moved, Ok(MoveKind::Handoff));
    assert_eq!(out.place, Place::Node(b.url.clone()));
    assert_eq!(out.replies, counter_expected(&messages));
    // Message 6, the first posted during the move, is 600 KiB: it never went to A.
    assert!(
        out.source_bytes_in < 64 << 10,
        "A received {} bytes during the handoff",
        out.source_bytes_in
    );
}

#[test]
fn large_messages_posted_during_a_return_are_handled_once_here() {
    let a = Node::start("edge", None);
    let messages: Vec<Vec<u8>> = (0..24).map(message).collect();
    let out = runtime().block_on(move_while_posting(
        &a.url,
        Place::Local,
        &messages[..6],
        &messages[6..],
    ));
    assert_eq!(out.moved, Ok(MoveKind::Return));
    assert_eq!(out.place, Place::Local);
    assert_eq!(out.replies, counter_expected(&messages));
    assert!(
        out.source_bytes_in < 64 << 10,
        "A received {} bytes during the return",
        out.source_bytes_in
    );
}

#[test]
fn large_messages_that_waited_for_a_failed_handoff_go_to_the_source() {
    let a = Node::start("edge", None);
    // A port nobody listens on: the source cannot reach the destination.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let messages: Vec<Vec<u8>> = (0..24).map(message).collect();
    let out = runtime().block_on(move_while_posting(
        &a.url,
        Place::Node(nowhere.clone()),
        &messages[..6],
        &messages[6..],
    ));
    let error = out.moved.expect_err("the handoff cannot succeed");
    assert!(error.contains(&nowhere), "{error}");
    assert_eq!(
        out.place,
        Place::Node(a.url.clone()),
        "the worker stayed at the source"
    );
    assert_eq!(out.replies, counter_expected(&messages));
}

#[test]
fn large_messages_posted_during_a_slow_handoff_go_ahead_to_the_destination() {
    // A reaches B through a link with a 300 ms round trip: the handoff takes several of
    // them, while the client reaches B directly and sends it the large messages ahead.
    let b = Node::start("edge", None);
    let b_addr = b.url.strip_prefix("ws://").unwrap().parse().unwrap();
    let a_to_b = roam_link::Link::start(
        roam_link::LinkSpec::symmetric(1_000_000_000, std::time::Duration::from_millis(300)),
        b_addr,
    )
    .unwrap();
    let route = format!("{}={}", b.url, a_to_b.url());
    let a = Node::start_with("edge", None, &["--route", &route]);
    let messages: Vec<Vec<u8>> = (0..24).map(message).collect();
    let out = runtime().block_on(move_while_posting(
        &a.url,
        Place::Node(b.url.clone()),
        &messages[..6],
        &messages[6..],
    ));
    assert_eq!(out.moved, Ok(MoveKind::Handoff));
    assert_eq!(out.replies, counter_expected(&messages));
    assert!(
        out.source_bytes_in < 64 << 10,
        "A received {} bytes during the handoff",
        out.source_bytes_in
    );
    let ahead = metric(&b.url, "roam_messages_ahead_total");
    assert!(
        ahead >= 3,
        "B was sent {ahead} messages ahead of the worker; the 18 posted during the move waited"
    );
}

#[test]
fn messages_unanswered_at_a_fallback_go_ahead_to_the_cloud() {
    let cloud = Node::start("cloud", None);
    let b = Node::start("edge", Some(&cloud.url));
    let (link, options) = slow_link_to(&b);
    let messages: Vec<Vec<u8>> = (0..12).map(message).collect();
    let replies = runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), options).unwrap();
        let mut replies = Vec::new();
        handle.move_to(Place::Node(b.url.clone())).await.unwrap();
        for m in &messages[..6] {
            handle.post(m.clone()).await.unwrap();
        }
        while let Some(r) = handle.next_reply().await.unwrap() {
            replies.push(r.payload);
        }
        // Message 6 is 600 KiB, half a second at 10 Mbit/s: the device loses B before
        // it and the two after it are answered.
        for m in &messages[6..9] {
            handle.post(m.clone()).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        link.set_down(true);
        let report = handle
            .move_to(relayed(&cloud, &cloud))
            .await
            .unwrap()
            .expect("a fallback");
        assert_eq!(report.kind, MoveKind::Fallback);
        for m in &messages[9..] {
            handle.post(m.clone()).await.unwrap();
        }
        while let Some(r) = handle.next_reply().await.unwrap() {
            replies.push(r.payload);
        }
        replies
    });
    assert_eq!(replies, counter_expected(&messages));
    assert_eq!(
        metric(&cloud.url, "roam_messages_ahead_total"),
        3,
        "the cloud held the three unanswered messages until the worker arrived"
    );
}
