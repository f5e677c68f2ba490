//! `roam exec --plan` against real nodes: a cloud and two edges, each a `roam serve`
//! process on 127.0.0.1 port 0. For every example worker and a plan that makes every kind
//! of move, the replies are byte-identical to the all-local run.

mod support;

use std::path::Path;
use std::process::Command;

use roam_cli::records::encode_records;
use roam_cli::workloads;
use support::{output_within, worker, Node, HANG_LIMIT};

fn exec(dir: &Path, wasm: &Path, input: &[u8], extra: &[String]) -> Vec<u8> {
    let messages = dir.join("in.rec");
    let out = dir.join("out.rec");
    std::fs::write(&messages, input).unwrap();
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_roam"))
            .arg("exec")
            .arg(wasm)
            .arg("--messages")
            .arg(&messages)
            .arg("--out")
            .arg(&out)
            .args(extra),
        HANG_LIMIT,
    );
    assert!(
        output.status.success(),
        "roam exec failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(out).unwrap()
}

struct Cluster {
    cloud: Node,
    a: Node,
    b: Node,
}

impl Cluster {
    fn start() -> Cluster {
        let cloud = Node::start("cloud", None);
        let a = Node::start("edge", Some(&cloud.url));
        let b = Node::start("edge", Some(&cloud.url));
        Cluster { cloud, a, b }
    }

    /// local → A → B (handoff) → B' through the cloud (fallback) → cloud → local, with
    /// `n` messages per step.
    fn every_move(&self, n: usize) -> Vec<String> {
        let (a, b, cloud) = (&self.a.url, &self.b.url, &self.cloud.url);
        let plan =
            format!("{n}@local,{n}@{a},{n}@{b},{n}@relay:{a},{n}@{cloud},{n}@{b},rest@local");
        vec!["--plan".into(), plan, "--cloud".into(), cloud.to_string()]
    }
}

fn plan_matches_local(cluster: &Cluster, name: &str, messages: &[Vec<u8>], per_step: usize) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = worker(name);
    let input = encode_records(messages.iter().map(Vec::as_slice));
    let local = exec(dir.path(), &wasm, &input, &[]);
    let moved = exec(dir.path(), &wasm, &input, &cluster.every_move(per_step));
    assert!(
        moved == local,
        "{name}: the replies differ when the worker moves"
    );
}

#[test]
fn every_worker_gives_the_local_replies_whatever_the_plan() {
    let cluster = Cluster::start();
    let counter = workloads::counter_messages(300);
    plan_matches_local(&cluster, "counter", &counter, 37);
    plan_matches_local(&cluster, "c_counter", &counter, 11);
    let physics: Vec<Vec<u8>> = std::iter::once(workloads::physics_init(200, 5))
        .chain((0..60).map(|_| workloads::physics_step(1)))
        .collect();
    plan_matches_local(&cluster, "physics", &physics, 9);
    let faces: Vec<Vec<u8>> = (0..8)
        .map(|i| workloads::facedetect_message(240, 180, i))
        .collect();
    plan_matches_local(&cluster, "facedetect", &faces, 1);
    let blur: Vec<Vec<u8>> = (0..8)
        .map(|i| workloads::blur_message(160, 120, 2.0, i))
        .collect();
    plan_matches_local(&cluster, "blur", &blur, 1);
}

#[test]
fn the_counter_sees_every_message_once_across_moves() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let messages = workloads::counter_messages(500);
    let input = encode_records(messages.iter().map(Vec::as_slice));
    let out = exec(
        dir.path(),
        &worker("counter"),
        &input,
        &cluster.every_move(50),
    );
    let expected = workloads::counter_expected(&messages);
    assert_eq!(
        out,
        encode_records(expected.iter().map(Vec::as_slice)),
        "a message lost or handled twice would change the count or the hash"
    );
}
