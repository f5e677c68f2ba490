//! Pre-copy and deltas: a busy worker keeps handling messages while its state travels
//! edge to edge, and a worker coming back to a node sends only what changed.

use roam_node::{NodeRole, PrecopySettings};
use roam_proto::{Frame, WorkerId};

use crate::support::{Client, LocalWorker, TestNode};

pub const FILLER: &str = include_str!("fixtures/filler.wat");
/// 16 MiB of memory.
pub const PAGES: u32 = 256;

pub fn filler(pages: u32, percent: u32, seed: u32) -> Vec<u8> {
    [pages, percent, seed]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A filler worker whose 16 MiB are noise, offloaded to `node` (its twin stays here).
async fn busy_worker_on(node: &TestNode, id: WorkerId) -> (Client, LocalWorker, LocalWorker) {
    let wasm = wat::parse_str(FILLER).unwrap();
    let mut local = LocalWorker::start(&wasm, id, 0);
    let mut twin = LocalWorker::start(&wasm, id, 0);
    local.deliver(&filler(PAGES, 100, 7));
    twin.deliver(&filler(PAGES, 100, 7));
    let mut client = Client::hello(&node.url).await;
    assert_eq!(client.offload(&mut local).await, 1);
    (client, local, twin)
}

async fn attach(url: &str, worker: WorkerId, secret: [u8; 32]) -> (Client, u64) {
    let mut client = Client::hello(url).await;
    client.send(&Frame::Attach { worker, secret }).await;
    match client.recv().await {
        Frame::Attached { last_seq, .. } => (client, last_seq),
        other => panic!("expected Attached, got {other:?}"),
    }
}

/// Asks `client`'s node to hand `worker` to `destination` and keeps posting messages
/// (each rewriting 2 % of the memory) until Moved: returns the messages the source
/// handled after the MoveOut, the last one the destination's state holds, and the next
/// sequence number.
async fn handoff_while_posting(
    client: &mut Client,
    worker: WorkerId,
    destination: &str,
    seq: u64,
) -> (u64, u64, u64) {
    handoff_while_rewriting(client, worker, destination, seq, 2).await
}

/// [`handoff_while_posting`] with messages that each rewrite the same `percent` % of the
/// memory.
async fn handoff_while_rewriting(
    client: &mut Client,
    worker: WorkerId,
    destination: &str,
    mut seq: u64,
    percent: u32,
) -> (u64, u64, u64) {
    client
        .send(&Frame::MoveOut {
            worker,
            destination: destination.to_owned(),
        })
        .await;
    let mut handled_during = 0;
    loop {
        client
            .send(&Frame::Post {
                worker,
                seq,
                payload: filler(PAGES, percent, seq as u32),
            })
            .await;
        seq += 1;
        match client.recv().await {
            Frame::Reply { .. } => match client.recv().await {
                Frame::Handled { .. } => handled_during += 1,
                Frame::Moved { last_seq, .. } => return (handled_during, last_seq, seq),
                other => panic!("expected Handled, got {other:?}"),
            },
            Frame::Moved { last_seq, .. } => return (handled_during, last_seq, seq),
            other => panic!("expected a reply or Moved, got {other:?}"),
        }
    }
}

/// Attaches to `worker` at `url`, where the state of message `last_seq` arrived, replays
/// the messages after it up to `next` (each rewriting `percent` %), and checks the worker
/// then holds the memory of `twin`, which handled them all and never moved.
async fn ends_as_its_twin(
    url: &str,
    worker: WorkerId,
    local: &LocalWorker,
    twin: &mut LocalWorker,
    last_seq: u64,
    next: u64,
    percent: u32,
) {
    let (mut there, attached) = attach(url, worker, local.secret).await;
    assert_eq!(attached, last_seq);
    for seq in 2..next {
        let payload = filler(PAGES, percent, seq as u32);
        twin.deliver(&payload);
        if seq > last_seq {
            there.post(worker, seq, &payload).await;
        }
    }
    let state = there.take_back(worker).await;
    assert_eq!(state.manifest.last_seq, next - 1);
    let mut back = LocalWorker::start(&wat::parse_str(FILLER).unwrap(), worker, 0);
    back.restore(&state);
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the moved worker's memory differs from a worker that never moved"
    );
}

/// Two edges, A reaching B over an emulated 200 Mbit/s link (2 ms round trip), A's
/// pre-copy aiming at `downtime`: A, B and the link, which lives as long as it is held.
async fn edges_200_mbit_apart(
    downtime: std::time::Duration,
) -> (TestNode, TestNode, roam_link::Link) {
    let b = TestNode::start(NodeRole::Edge).await;
    let link = roam_link::Link::start(
        roam_link::LinkSpec::symmetric(200_000_000, std::time::Duration::from_millis(2)),
        b.addr,
    )
    .unwrap();
    let a = TestNode::start_with(NodeRole::Edge, None, |c| {
        c.precopy.downtime_target = downtime;
        c.routes.insert(b.url.clone(), link.url());
    })
    .await;
    (a, b, link)
}

pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_keeps_handling_messages_while_pre_copy_moves_it() {
    // A reaches B over an emulated 200 Mbit/s link, so the first round (16 MiB of noise)
    // takes about 0.7 s: messages certainly arrive while it travels, however loaded the
    // machine. No downtime target can be met on purpose: the rounds stop when they stop
    // shrinking.
    let (a, b, _link) = edges_200_mbit_apart(std::time::Duration::ZERO).await;
    let (mut at_a, local, mut twin) = busy_worker_on(&a, 40).await;

    let (handled_during, last_seq, next) = handoff_while_posting(&mut at_a, 40, &b.url, 2).await;
    assert!(
        handled_during > 0,
        "the worker handled no message while its state moved"
    );
    // Every message the source handled is in the state B adopted; the rest are replayed.
    assert_eq!(last_seq, 1 + handled_during);
    ends_as_its_twin(&b.url, 40, &local, &mut twin, last_seq, next, 2).await;

    let (_, metrics) = a.get("/metrics").await;
    // Whether a second round goes out depends on how many messages the worker handled
    // during the first: what is certain is that the first went out while it ran.
    assert!(
        metric(&metrics, "roam_precopy_rounds_total") >= 1.0,
        "{metrics}"
    );
    let live = metric(&metrics, "roam_precopy_bytes_total{phase=\"live\"}");
    let paused = metric(&metrics, "roam_precopy_bytes_total{phase=\"paused\"}");
    assert!(
        live > 16e6 && paused < live / 4.0,
        "{live} bytes sent while running, {paused} paused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunks_a_worker_keeps_rewriting_cross_once() {
    // Every message rewrites the same tenth of 16 MiB of noise. Sent in rounds as they
    // come, that tenth would cross in round 0, again in round 1 and again paused: 1.2
    // times the state. Left out of round 0 (the probe sees the worker rewrite it), it
    // crosses once, in the last round.
    let (a, b, _link) = edges_200_mbit_apart(PrecopySettings::default().downtime_target).await;
    let (mut at_a, local, mut twin) = busy_worker_on(&a, 42).await;
    // A few messages first, so the source knows how long one takes.
    for seq in 2..6 {
        at_a.post(42, seq, &filler(PAGES, 10, seq as u32)).await;
    }
    let (_, last_seq, next) = handoff_while_rewriting(&mut at_a, 42, &b.url, 6, 10).await;

    // A post-copy handoff tells the client before the last bodies leave the source: its
    // figures come when they have.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = a.get("/metrics").await.1;
        if metric(&metrics, "roam_precopy_rounds_total") > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let live = metric(&metrics, "roam_precopy_bytes_total{phase=\"live\"}");
    let paused = metric(&metrics, "roam_precopy_bytes_total{phase=\"paused\"}");
    // The state: 4,096 chunks of noise, stored raw, each with its 25-byte header.
    let state = 4096.0 * (4096.0 + 25.0);
    let sent = live + paused;
    assert!(
        sent > 0.95 * state && sent < 1.05 * state,
        "{live} bytes sent while the worker ran and {paused} paused, for a state of {state}"
    );

    ends_as_its_twin(&b.url, 42, &local, &mut twin, last_seq, next, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_backlog_leaves_in_rounds_without_working_it_off_first() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, mut twin) = busy_worker_on(&a, 41).await;
    // Messages that each rewrite all 16 MiB, posted without waiting: a backlog of
    // several hundred milliseconds of work when the handoff is asked for.
    const QUEUED: u64 = 40;
    for seq in 2..2 + QUEUED {
        at_a.send(&Frame::Post {
            worker: 41,
            seq,
            payload: filler(PAGES, 100, seq as u32),
        })
        .await;
    }
    at_a.send(&Frame::MoveOut {
        worker: 41,
        destination: b.url.clone(),
    })
    .await;
    let mut handled = 0;
    let last_seq = loop {
        match at_a.recv().await {
            Frame::Reply { .. } => {}
            Frame::Handled { .. } => handled += 1,
            Frame::Moved { last_seq, .. } => break last_seq,
            other => panic!("expected replies or Moved, got {other:?}"),
        }
    };
    assert_eq!(last_seq, 1 + handled);
    assert!(
        last_seq < 1 + QUEUED,
        "the source worked off its whole backlog before the move"
    );
    // The messages the source did not begin are replayed at the destination: the worker
    // ends exactly as one that never moved.
    let (mut at_b, attached) = attach(&b.url, 41, local.secret).await;
    assert_eq!(attached, last_seq);
    for seq in 2..2 + QUEUED {
        let payload = filler(PAGES, 100, seq as u32);
        twin.deliver(&payload);
        if seq > last_seq {
            at_b.post(41, seq, &payload).await;
        }
    }
    let state = at_b.take_back(41).await;
    assert_eq!(state.manifest.last_seq, 1 + QUEUED);
    let mut back = LocalWorker::start(&wat::parse_str(FILLER).unwrap(), 41, 0);
    back.restore(&state);
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the moved worker's memory differs from a worker that never moved"
    );
    // Its captures went ahead of the backlog: it was sent while it ran, not in one paused
    // round.
    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metric(&metrics, "roam_precopy_rounds_total") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_coming_back_sends_only_the_chunks_that_changed() {
    let a = TestNode::start(NodeRole::Edge).await;
    let b = TestNode::start(NodeRole::Edge).await;
    let (mut at_a, local, _twin) = busy_worker_on(&a, 41).await;
    let (_, _, next) = handoff_while_posting(&mut at_a, 41, &b.url, 2).await;
    let (mut at_b, last_seq) = attach(&b.url, 41, local.secret).await;
    for seq in last_seq + 1..next {
        at_b.post(41, seq, &filler(PAGES, 2, seq as u32)).await;
    }

    let (_, before) = a.get("/metrics").await;
    let bytes_before = metric(&before, "roam_bytes_total{direction=\"in\"}");
    at_b.send(&Frame::MoveOut {
        worker: 41,
        destination: a.url.clone(),
    })
    .await;
    assert!(matches!(at_b.recv().await, Frame::Moved { .. }));
    let (_, after) = a.get("/metrics").await;
    let received = metric(&after, "roam_bytes_total{direction=\"in\"}") - bytes_before;
    assert!(
        metric(&after, "roam_chunks_reused_total") > 3000.0,
        "A did not reuse the chunks it sent away: {after}"
    );
    // 16 MiB of noise, of which a few messages rewrote 2 % each.
    assert!(
        received < 4e6,
        "the worker's return to A took {received} bytes"
    );
    let (mut again, _) = attach(&a.url, 41, local.secret).await;
    again.post(41, next, &filler(PAGES, 2, 1)).await;
}
