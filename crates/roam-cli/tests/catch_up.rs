//! An offload that catches up (`MoveMode::CatchUp`) sends the state once without pausing
//! the worker: the node adopts that state and catches up by handling the messages the
//! worker handled here since, and the handle switches over once it has. Every reply comes
//! out as from a worker that never moved.

mod support;

use std::time::Duration;

use roam_cli::workloads::{physics_init, physics_step};
use roam_client::{MoveKind, MoveMode, Place, WorkerHandle, WorkerOptions};
use support::{metric, worker, Node};

#[test]
fn an_offload_that_catches_up_never_pauses_the_worker_and_loses_nothing() {
    let a = Node::start("edge", None);
    let wasm = std::fs::read(worker("physics")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut handle = WorkerHandle::start(&wasm, WorkerOptions::default()).unwrap();
        let mut twin = WorkerHandle::start(&wasm, WorkerOptions::default()).unwrap();
        let mut messages = vec![physics_init(300, 7)];
        messages.extend((0..10).map(|_| physics_step(1)));
        let mut replies = Vec::new();
        for m in &messages {
            handle.post(m.clone()).await.unwrap();
        }
        replies.extend(handle.take_replies().into_iter().map(|r| r.payload));
        let before = messages.len() as u64;

        handle
            .begin_move_with(Place::Node(a.url.clone()), MoveMode::CatchUp)
            .await
            .unwrap();
        // Messages answered at once, here, while the move ran.
        let mut answered_here = 0u64;
        let started = std::time::Instant::now();
        while handle.moving() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the offload did not end"
            );
            // An application's pace: a step every 2 ms (the node compiles the module
            // meanwhile, as it is new to it).
            tokio::time::sleep(Duration::from_millis(2)).await;
            messages.push(physics_step(1));
            handle.post(physics_step(1)).await.unwrap();
            let now = handle.take_replies();
            if handle.place() == Place::Local && !now.is_empty() {
                answered_here += 1;
            }
            replies.extend(now.into_iter().map(|r| r.payload));
        }
        let report = handle
            .take_move_result()
            .expect("the move reports its outcome")
            .unwrap();
        assert_eq!(report.kind, MoveKind::Offload);
        assert_eq!(handle.place(), Place::Node(a.url.clone()));
        for _ in 0..10 {
            messages.push(physics_step(1));
            handle.post(physics_step(1)).await.unwrap();
        }
        while let Some(r) = handle.next_reply().await.unwrap() {
            replies.push(r.payload);
        }

        let mut expected = Vec::new();
        for m in &messages {
            twin.post(m.clone()).await.unwrap();
        }
        while let Some(r) = twin.next_reply().await.unwrap() {
            expected.push(r.payload);
        }
        assert_eq!(replies.len(), expected.len());
        assert!(
            replies == expected,
            "the replies differ from a worker that never moved"
        );

        // Handled here and handled there overlap: the node handled again, to catch up,
        // messages that had been answered here.
        let total = messages.len() as u64;
        let here = before + answered_here;
        let there = metric(&a.url, "roam_message_duration_seconds_count");
        assert!(
            here + there > total,
            "{here} messages handled here and {there} there, of {total}: no catching up"
        );
        assert!(report.replayed > 0);
    });
}
