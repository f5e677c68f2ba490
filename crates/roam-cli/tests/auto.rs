//! Automatic placement against real `roam serve` processes: the placer finds the edges
//! the cloud lists and measures them; a worker goes by itself to an edge that runs it much
//! faster, losing and repeating nothing; and an application that requires the worker to
//! stay on the device keeps it there.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use roam_cli::records::encode_records;
use roam_cli::workloads::{physics_init, physics_step};
use roam_client::{AutoOptions, AutoPlacer, Place, Requirements, WorkerHandle, WorkerOptions};
use support::{output_within, runtime, worker, Node, HANG_LIMIT};

/// A cloud that calls itself slow and an edge that calls itself 100 times the reference
/// core: the edge is where a busy worker should go.
fn cluster() -> (Node, Node) {
    let cloud = Node::start_with("cloud", None, &["--speed", "0.01"]);
    let edge = Node::start_with("edge", Some(&cloud.url), &["--speed", "100"]);
    (cloud, edge)
}

/// Physics with `cubes` cubes, then `steps` single steps.
fn physics_messages(cubes: u32, steps: usize) -> Vec<Vec<u8>> {
    let mut messages = vec![physics_init(cubes, 7)];
    messages.extend((0..steps).map(|_| physics_step(1)));
    messages
}

#[test]
fn the_placer_finds_the_edges_the_cloud_lists_and_measures_them() {
    let (cloud, edge) = cluster();
    runtime().block_on(async {
        let wasm = std::fs::read(worker("counter")).unwrap();
        let mut handle = WorkerHandle::start(&wasm, WorkerOptions::default()).unwrap();
        let mut placer = AutoPlacer::new(AutoOptions {
            cloud: Some(cloud.url.clone()),
            probe_every: Duration::from_millis(100),
            discover_every: Duration::from_millis(200),
            ..AutoOptions::default()
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            placer.tick(&mut handle).await.unwrap();
            let found = placer.candidates();
            let edge_view = found.iter().find(|c| c.url == edge.url);
            let cloud_view = found.iter().find(|c| c.url == cloud.url);
            if let (Some(e), Some(c)) = (edge_view, cloud_view) {
                if let (Some(rtt), Some((up, down)), Some(_)) = (e.rtt, e.bandwidth, c.rtt) {
                    assert!(!e.cloud && c.cloud, "{found:?}");
                    assert_eq!(e.speed, Some(100.0));
                    assert!((c.speed.unwrap() - 0.01).abs() < 1e-6);
                    assert!(rtt < Duration::from_millis(500));
                    // Loopback: far above any mobile link.
                    assert!(up > 1e6 && down > 1e6, "{up} {down}");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the edge was not found and measured: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_busy_worker_goes_to_the_fast_edge_by_itself_and_loses_nothing() {
    let (cloud, edge) = cluster();
    let dir = tempfile::tempdir().unwrap();
    // A step every 5 ms is more than this machine can step 1,000 cubes at: a first
    // move, which pays for the module's transfer and compile, clearly pays.
    let messages = physics_messages(1000, 400);
    let input = dir.path().join("messages");
    std::fs::write(&input, encode_records(messages.iter().map(Vec::as_slice))).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let output = output_within(
            Command::new(env!("CARGO_BIN_EXE_roam"))
                .arg("exec")
                .arg(worker("physics"))
                .arg("--messages")
                .arg(&input)
                .arg("--out")
                .arg(out)
                .args(extra),
            HANG_LIMIT,
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "roam exec failed: {stderr}");
        stderr
    };
    let local = dir.path().join("local");
    run(&local, &[]);
    let auto = dir.path().join("auto");
    let log = run(
        &auto,
        &[
            "--plan",
            "auto",
            "--cloud",
            &cloud.url,
            "--interval-ms",
            "5",
        ],
    );
    assert!(
        log.contains(&format!("offload local -> {}", edge.url)),
        "the worker did not go to the edge:\n{log}"
    );
    assert!(
        log.contains(&format!("finished at {}", edge.url)),
        "the worker did not stay on the edge:\n{log}"
    );
    assert!(
        std::fs::read(&auto).unwrap() == std::fs::read(&local).unwrap(),
        "the replies differ from a run that never moved"
    );
}

#[test]
fn a_worker_required_to_stay_local_stays() {
    let (cloud, _edge) = cluster();
    runtime().block_on(async {
        let wasm = std::fs::read(worker("physics")).unwrap();
        let mut handle = WorkerHandle::start(&wasm, WorkerOptions::default()).unwrap();
        let mut placer = AutoPlacer::new(AutoOptions {
            cloud: Some(cloud.url.clone()),
            requirements: Requirements {
                stay_local: true,
                ..Requirements::default()
            },
            probe_every: Duration::from_millis(100),
            discover_every: Duration::from_millis(200),
            ..AutoOptions::default()
        });
        for message in physics_messages(400, 100) {
            handle.post(message).await.unwrap();
            assert!(placer.tick(&mut handle).await.unwrap().is_none());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handle.place(), Place::Local);
        assert!(
            placer.candidates().iter().any(|c| c.rtt.is_some()),
            "the edges were not even measured"
        );
    });
}

#[test]
fn an_offload_completes_while_the_application_waits_for_replies() {
    // Waiting for replies between posts drives the offload's rounds from the wait rather
    // than from the posts: each round must still reach the task that sends them.
    let edge = Node::start_with("edge", None, &[]);
    runtime().block_on(async {
        let wasm = std::fs::read(worker("physics")).unwrap();
        let mut handle = WorkerHandle::start(&wasm, WorkerOptions::default()).unwrap();
        handle.post(physics_init(1000, 3)).await.unwrap();
        handle
            .begin_move(Place::Node(edge.url.clone()))
            .await
            .unwrap();
        let mut posted = 1;
        let mut replies = handle.take_replies().len();
        let report = loop {
            assert!(posted < 2000, "the offload never ended");
            handle.post(physics_step(1)).await.unwrap();
            posted += 1;
            while let Some(_reply) = handle
                .next_reply_within(Duration::from_millis(5))
                .await
                .unwrap()
            {
                replies += 1;
            }
            if let Some(result) = handle.take_move_result() {
                break result.expect("the offload succeeds");
            }
        };
        assert_eq!(report.to, edge.url);
        while handle.next_reply().await.unwrap().is_some() {
            replies += 1;
        }
        replies += handle.take_replies().len();
        assert_eq!(replies, posted, "one reply per message");
    });
}
