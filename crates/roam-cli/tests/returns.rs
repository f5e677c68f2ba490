//! How a return treats the messages posted while the state comes home: in pre-copy they go
//! on to the node, which keeps answering; in stop-and-copy the handle holds them back and
//! runs them here once the state is in. Either way the replies are those of a worker that
//! never moved.

mod support;

use std::time::Duration;

use roam_cli::workloads::{physics_init, physics_step};
use roam_client::{MoveKind, MoveMode, Place, WorkerHandle, WorkerOptions};
use support::{metric, runtime, slow_link_to, worker, Node};

/// Messages the node has handled, from its `/metrics`.
const HANDLED: &str = "roam_message_duration_seconds_count";

/// The physics worker's scene of 1,000 cubes and `steps` steps of it.
fn physics_messages(steps: usize) -> Vec<Vec<u8>> {
    std::iter::once(physics_init(1000, 5))
        .chain((0..steps).map(|_| physics_step(1)))
        .collect()
}

/// The replies of `module` to `messages`, on a worker that never moves.
fn unmoved_replies(module: &[u8], messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    runtime().block_on(async {
        let mut twin = WorkerHandle::start(module, WorkerOptions::default()).unwrap();
        let mut replies = Vec::new();
        post_each(&mut twin, messages, &mut replies).await;
        replies
    })
}

/// Posts `messages` one at a time, waiting for each one's reply.
async fn post_each(handle: &mut WorkerHandle, messages: &[Vec<u8>], replies: &mut Vec<Vec<u8>>) {
    for m in messages {
        handle.post(m.clone()).await.unwrap();
        while let Some(r) = handle.next_reply().await.unwrap() {
            replies.push(r.payload);
        }
    }
}

/// Brings the worker home in `mode` while posting one of `messages` every 20 ms; returns
/// how many were posted before the return ended, and how many of them the node handled.
async fn return_while_posting(
    handle: &mut WorkerHandle,
    node: &str,
    mode: MoveMode,
    messages: &mut impl Iterator<Item = Vec<u8>>,
    replies: &mut Vec<Vec<u8>>,
) -> (u64, u64) {
    let handled_before = metric(node, HANDLED);
    handle.begin_move_with(Place::Local, mode).await.unwrap();
    let mut posted = 0;
    let report = loop {
        if let Some(result) = handle.take_move_result() {
            break result.expect("the return succeeds");
        }
        let m = messages
            .next()
            .expect("the return ends within the messages");
        handle.post(m).await.unwrap();
        posted += 1;
        while let Some(r) = handle
            .next_reply_within(Duration::from_millis(20))
            .await
            .unwrap()
        {
            replies.push(r.payload);
        }
    };
    assert_eq!(report.kind, MoveKind::Return);
    assert_eq!(handle.place(), Place::Local);
    (posted, metric(node, HANDLED) - handled_before)
}

#[test]
fn a_stop_and_copy_return_runs_the_messages_posted_meanwhile_here() {
    let node = Node::start("edge", None);
    // The state comes home over 10 Mbit/s: a return takes seconds, and messages are
    // posted all along.
    let (_link, options) = slow_link_to(&node);
    let physics = std::fs::read(worker("physics")).unwrap();
    let messages = physics_messages(700);
    let expected = unmoved_replies(&physics, &messages);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&physics, options).unwrap();
        let mut rest = messages.iter().cloned();
        post_each(&mut handle, &[rest.next().unwrap()], &mut replies).await;
        let to = Place::Node(node.url.clone());
        let mut outcomes = Vec::new();
        for mode in [MoveMode::PreCopy, MoveMode::StopAndCopy] {
            handle.move_to(to.clone()).await.unwrap();
            let some: Vec<Vec<u8>> = rest.by_ref().take(20).collect();
            post_each(&mut handle, &some, &mut replies).await;
            let outcome =
                return_while_posting(&mut handle, &node.url, mode, &mut rest, &mut replies)
                    .await;
            outcomes.push(outcome);
        }
        let left: Vec<Vec<u8>> = rest.collect();
        post_each(&mut handle, &left, &mut replies).await;

        let [(pre_posted, pre_handled), (stop_posted, stop_handled)] = outcomes[..] else {
            unreachable!("two returns")
        };
        assert!(
            pre_posted >= 5 && pre_handled >= 3,
            "pre-copy: the node handled {pre_handled} of the {pre_posted} messages posted during the return"
        );
        assert!(
            stop_posted >= 5,
            "stop-and-copy: only {stop_posted} messages posted during the return"
        );
        assert_eq!(
            stop_handled, 0,
            "stop-and-copy: the node handled messages posted after the return began"
        );
    });
    assert_eq!(replies.len(), messages.len(), "one reply per message");
    assert!(
        replies == expected,
        "the replies differ from a worker that never moved"
    );
}

#[test]
fn the_messages_held_through_a_return_run_one_per_reply_asked_for_or_leave_with_the_worker() {
    let node = Node::start("edge", None);
    let (_link, options) = slow_link_to(&node);
    let physics = std::fs::read(worker("physics")).unwrap();
    let messages = physics_messages(8);
    let held = messages.len() - 1;
    let expected = unmoved_replies(&physics, &messages);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&physics, options).unwrap();
        post_each(&mut handle, &messages[..1], &mut replies).await;
        handle.move_to(Place::Node(node.url.clone())).await.unwrap();
        // Stop-and-copy: the messages posted during the return wait here for the state.
        handle
            .begin_move_with(Place::Local, MoveMode::StopAndCopy)
            .await
            .unwrap();
        for m in &messages[1..] {
            handle.post(m.clone()).await.unwrap();
        }
        let report = handle.finish_move().await.unwrap().expect("a return");
        assert_eq!(report.kind, MoveKind::Return);
        assert_eq!(report.replayed, held as u64);
        // The return ends once the state is in: what waited runs as the application asks
        // for replies, so the first reply does not wait for the last message.
        assert_eq!(handle.backlog(), held, "the held messages wait to run here");
        assert!(handle.take_replies().is_empty());
        for left in (held - 3..held).rev() {
            let reply = handle.next_reply().await.unwrap().expect("a reply");
            replies.push(reply.payload);
            assert_eq!(
                handle.backlog(),
                left,
                "one message runs per reply asked for"
            );
        }
        // Offloaded again with messages still waiting here: they go to the node behind
        // the state, and none runs twice or not at all.
        let handled_before = metric(&node.url, HANDLED);
        handle.move_to(Place::Node(node.url.clone())).await.unwrap();
        assert_eq!(handle.backlog(), 0);
        while let Some(reply) = handle.next_reply().await.unwrap() {
            replies.push(reply.payload);
        }
        assert_eq!(
            metric(&node.url, HANDLED) - handled_before,
            (held - 3) as u64,
            "the node handles the messages that waited on the device"
        );
    });
    assert!(
        replies == expected,
        "the replies differ from a worker that never moved"
    );
}
