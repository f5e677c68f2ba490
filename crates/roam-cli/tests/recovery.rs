//! A node killed with SIGKILL — while messages are in flight, in the middle of a handoff,
//! or before a fallback — loses nothing and duplicates nothing: the counter worker's replies
//! (message count and a hash of every byte, in order) come out exactly as in an
//! uninterrupted local run. The client recovers from the last snapshot it holds and replays.

mod support;

use std::time::Duration;

use roam_cli::workloads::{counter_expected, counter_messages};
use roam_client::{MoveKind, Place, WorkerHandle, WorkerOptions};
use support::{metric, relayed, runtime, slow_link_to, worker, Node};

/// WebSocket connections a node accepted, from its `/metrics`.
const ACCEPTED: &str = "roam_connections_accepted_total";

/// Posts `messages` (window of 8 in flight), collecting replies as they come.
async fn post_all(handle: &mut WorkerHandle, messages: &[Vec<u8>], replies: &mut Vec<Vec<u8>>) {
    for m in messages {
        handle.post(m.clone()).await.unwrap();
        replies.extend(handle.take_replies().into_iter().map(|r| r.payload));
    }
}

async fn finish(handle: &mut WorkerHandle, replies: &mut Vec<Vec<u8>>) {
    while let Some(r) = handle.next_reply().await.unwrap() {
        replies.push(r.payload);
    }
}

fn counter() -> Vec<u8> {
    std::fs::read(worker("counter")).unwrap()
}

#[test]
fn a_node_killed_with_messages_in_flight_loses_nothing() {
    let mut a = Node::start("edge", None);
    let messages = counter_messages(400);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), WorkerOptions::default()).unwrap();
        post_all(&mut handle, &messages[..50], &mut replies).await;
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        post_all(&mut handle, &messages[50..200], &mut replies).await;
        // Up to a window of messages is in flight, some handled, some not.
        a.kill_hard();
        post_all(&mut handle, &messages[200..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
        assert_eq!(handle.place(), Place::Local, "recovered locally");
    });
    assert_eq!(replies, counter_expected(&messages));
}

#[test]
fn a_node_killed_during_a_handoff_loses_nothing() {
    let mut a = Node::start("edge", None);
    let b = Node::start("edge", None);
    let messages = counter_messages(600);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), WorkerOptions::default()).unwrap();
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        post_all(&mut handle, &messages[..300], &mut replies).await;
        // Kill A while the handoff to B is under way.
        let pid = a.child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let report = handle
            .move_to(Place::Node(b.url.clone()))
            .await
            .unwrap()
            .unwrap();
        killer.join().unwrap();
        a.kill_hard();
        eprintln!("the handoff ended as {:?}", report.kind);
        // Whether A died before or after handing over, the worker is on B now.
        assert!(
            matches!(report.kind, MoveKind::Handoff | MoveKind::Recovery),
            "{:?}",
            report.kind
        );
        assert_eq!(handle.place(), Place::Node(b.url.clone()));
        post_all(&mut handle, &messages[300..], &mut replies).await;
        handle.move_to(Place::Local).await.unwrap();
        finish(&mut handle, &mut replies).await;
    });
    assert_eq!(replies, counter_expected(&messages));
}

#[test]
fn a_fallback_from_a_dead_node_recovers_and_lands_where_asked() {
    let cloud = Node::start("cloud", None);
    let mut a = Node::start("edge", Some(&cloud.url));
    let b = Node::start("edge", Some(&cloud.url));
    let messages = counter_messages(300);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), WorkerOptions::default()).unwrap();
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        post_all(&mut handle, &messages[..150], &mut replies).await;
        a.kill_hard();
        // Neither the client nor the cloud can reach A any more.
        let report = handle.move_to(relayed(&cloud, &b)).await.unwrap().unwrap();
        assert_eq!(report.kind, MoveKind::Recovery);
        assert_eq!(handle.place(), Place::Node(b.url.clone()));
        post_all(&mut handle, &messages[150..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
    });
    assert_eq!(replies, counter_expected(&messages));
}

#[test]
fn a_node_killed_while_a_slow_worker_has_a_full_window_loses_nothing() {
    // Physics steps take milliseconds, so when the node dies the window holds messages it
    // has not handled yet and the client is waiting for room to post the next one.
    let physics = std::fs::read(worker("physics")).unwrap();
    let messages: Vec<Vec<u8>> = std::iter::once(roam_cli::workloads::physics_init(300, 2))
        .chain((0..30).map(|_| roam_cli::workloads::physics_step(2)))
        .collect();
    let mut expected = Vec::new();
    let mut replies = Vec::new();
    let mut a = Node::start("edge", None);
    runtime().block_on(async {
        let mut local = WorkerHandle::start(&physics, WorkerOptions::default()).unwrap();
        post_all(&mut local, &messages, &mut expected).await;
        finish(&mut local, &mut expected).await;

        let mut handle = WorkerHandle::start(&physics, WorkerOptions::default()).unwrap();
        post_all(&mut handle, &messages[..1], &mut replies).await;
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        post_all(&mut handle, &messages[1..12], &mut replies).await;
        a.kill_hard();
        post_all(&mut handle, &messages[12..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
    });
    assert_eq!(replies.len(), messages.len());
    assert!(replies == expected, "the frames differ from the local run");
}

#[test]
fn a_worker_failing_on_a_node_is_reported_not_waited_for() {
    let trap = wat::parse_str(
        r#"(module
          (import "roam" "post_message" (func $post (param i32 i32)))
          (memory (export "memory") 1)
          (func (export "roam_alloc") (param i32) (result i32) (i32.const 16))
          (func (export "roam_on_message") (param $p i32) (param $n i32)
            (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 9)) (then unreachable))
            (call $post (local.get $p) (local.get $n))))"#,
    )
    .unwrap();
    let a = Node::start("edge", None);
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&trap, WorkerOptions::default()).unwrap();
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        handle.post(vec![1]).await.unwrap();
        assert_eq!(handle.next_reply().await.unwrap().unwrap().payload, vec![1]);
        handle.post(vec![9]).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(20), handle.next_reply())
            .await
            .expect("the failure is reported, not waited for")
            .unwrap_err();
        assert!(
            matches!(err, roam_client::ClientError::WorkerFailed { seq: 2, .. }),
            "{err}"
        );
    });
}

#[test]
fn a_relay_to_the_node_that_holds_the_worker_is_refused() {
    let cloud = Node::start("cloud", None);
    let a = Node::start("edge", Some(&cloud.url));
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), WorkerOptions::default()).unwrap();
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        let err = handle.move_to(relayed(&cloud, &a)).await.unwrap_err();
        assert!(err.to_string().contains("already runs on"), "{err}");
        // The worker is where it was and still answers.
        handle.post(b"still here".to_vec()).await.unwrap();
        assert!(handle.next_reply().await.unwrap().is_some());
    });
}

#[test]
fn checkpoints_move_the_recovery_point_up_and_a_recovery_replays_only_what_followed() {
    let mut a = Node::start("edge", None);
    let messages = counter_messages(400);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let options = WorkerOptions {
            checkpoint_every: Some(Duration::from_millis(100)),
            ..WorkerOptions::default()
        };
        let mut handle = WorkerHandle::start(&counter(), options).unwrap();
        post_all(&mut handle, &messages[..50], &mut replies).await;
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        assert_eq!(handle.recovery_point(), Some(50));
        // Messages keep coming while the copies are taken.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut next = 50;
        while handle.recovery_point() <= Some(100) {
            assert!(
                std::time::Instant::now() < deadline && next < 300,
                "no checkpoint taken after message 100: the recovery point is {:?}",
                handle.recovery_point()
            );
            post_all(&mut handle, &messages[next..next + 10], &mut replies).await;
            next += 10;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let point = handle.recovery_point().unwrap();
        assert!(point <= next as u64, "{point} > {next}");
        a.kill_hard();
        post_all(&mut handle, &messages[next..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
        assert_eq!(handle.place(), Place::Local, "recovered locally");
    });
    let expected = counter_expected(&messages);
    let first_difference = replies.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        replies.len() == expected.len() && first_difference.is_none(),
        "{} replies for {} messages; the first that differs is reply {first_difference:?}",
        replies.len(),
        expected.len()
    );
}

#[test]
fn a_node_killed_during_a_return_recovers_from_the_returns_first_round() {
    use roam_cli::workloads::{physics_init, physics_step};

    let mut a = Node::start("edge", None);
    // The state comes home over 10 Mbit/s: its rounds take seconds, time enough to lose
    // the node after the first is in and before the return ends.
    let (_link, options) = slow_link_to(&a);
    let physics = std::fs::read(worker("physics")).unwrap();
    let mut messages = vec![physics_init(1000, 5)];
    messages.extend((0..400).map(|_| physics_step(1)));
    let mut replies = Vec::new();
    let mut expected = Vec::new();
    runtime().block_on(async {
        // What a worker that never moves answers.
        let mut twin = WorkerHandle::start(&physics, WorkerOptions::default()).unwrap();
        post_all(&mut twin, &messages, &mut expected).await;
        finish(&mut twin, &mut expected).await;

        let mut handle = WorkerHandle::start(&physics, options).unwrap();
        post_all(&mut handle, &messages[..1], &mut replies).await;
        handle.move_to(Place::Node(a.url.clone())).await.unwrap();
        let mut next = 1;
        for m in &messages[next..40] {
            handle.post(m.clone()).await.unwrap();
            while let Some(r) = handle.next_reply().await.unwrap() {
                replies.push(r.payload);
            }
        }
        next = 40;
        let offloaded_at = handle.recovery_point().expect("the offload's snapshot");
        handle.begin_move(Place::Local).await.unwrap();
        // One message at a time, so the worker never has a backlog (which would send it
        // in one paused round, with no first round to keep).
        let moved_up = loop {
            assert!(next < messages.len(), "the return's first round never came");
            handle.post(messages[next].clone()).await.unwrap();
            next += 1;
            while let Some(r) = handle
                .next_reply_within(Duration::from_millis(20))
                .await
                .unwrap()
            {
                replies.push(r.payload);
            }
            assert!(
                handle.take_move_result().is_none(),
                "the return ended before its first round was seen"
            );
            match handle.recovery_point() {
                Some(seq) if seq > offloaded_at => break seq,
                _ => {}
            }
        };
        a.kill_hard();
        post_all(&mut handle, &messages[next..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
        assert_eq!(handle.place(), Place::Local, "recovered locally");
        assert_eq!(handle.recoveries(), 1);
        assert!(
            moved_up > offloaded_at + 30,
            "recovered from message {moved_up}"
        );
    });
    assert_eq!(replies.len(), messages.len(), "one reply per message");
    assert!(
        replies == expected,
        "the replies differ from a worker that never moved"
    );
}

#[test]
fn a_fallback_delivers_the_replies_the_lost_link_never_brought() {
    fallback_after_a_reply_is_lost(WorkerOptions::default().recovery_bytes);
}

#[test]
fn a_fallback_without_a_recovery_point_still_delivers_every_reply() {
    // The client cannot make the lost reply again: the one B kept comes through the cloud.
    fallback_after_a_reply_is_lost(0);
}

/// The device reaches B through a link; the cloud reaches B directly. The link is cut
/// after B handled the last message but while its reply was still on the way: the state
/// the cloud takes from B has handled it. Every reply must reach the application, once and
/// in order, with a client that keeps a recovery point while `recovery_bytes` of messages
/// since its last copy of the worker allow.
fn fallback_after_a_reply_is_lost(recovery_bytes: usize) {
    let cloud = Node::start("cloud", None);
    let b = Node::start("edge", Some(&cloud.url));
    let (link, options) = slow_link_to(&b);
    let options = WorkerOptions {
        recovery_bytes,
        ..options
    };
    let messages = counter_messages(60);
    let mut replies = Vec::new();
    runtime().block_on(async {
        let mut handle = WorkerHandle::start(&counter(), options).unwrap();
        handle.move_to(Place::Node(b.url.clone())).await.unwrap();
        post_all(&mut handle, &messages[..29], &mut replies).await;
        finish(&mut handle, &mut replies).await;
        // One message, and a link slow enough to cut it with its reply half-way back.
        link.set_spec(roam_link::LinkSpec::symmetric(
            100_000_000,
            Duration::from_millis(2000),
        ))
        .unwrap();
        handle.post(messages[29].clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1400)).await;
        link.set_down(true);
        let accepted = metric(&cloud.url, ACCEPTED);
        let report = handle
            .move_to(relayed(&cloud, &cloud))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.kind, MoveKind::Fallback);
        assert_eq!(report.replayed, 0, "B had handled message 30");
        // The worker stays in the cloud, attached on the connection that asked for it (no
        // set-up after the move); a second one, opened meanwhile to send message 30 ahead,
        // closed at Moved: B had handled it.
        assert_eq!(metric(&cloud.url, ACCEPTED), accepted + 2);
        post_all(&mut handle, &messages[30..], &mut replies).await;
        finish(&mut handle, &mut replies).await;
    });
    assert_eq!(replies, counter_expected(&messages));
}
