//! Pre-copy and deltas: a busy worker keeps handling messages while its state travels
//! edge to edge, and a worker coming back to a node sends only what changed.

use roam_node::NodeRole;
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
    mut seq: u64,
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
                payload: filler(PAGES, 2, seq as u32),
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
    let b = TestNode::start(NodeRole::Edge).await;
    let link = roam_link::Link::start(
        roam_link::LinkSpec::symmetric(200_000_000, std::time::Duration::from_millis(2)),
        b.addr,
    )
    .unwrap();
    let a = TestNode::start_with(NodeRole::Edge, None, |c| {
        c.precopy.downtime_target = std::time::Duration::ZERO;
        c.routes.insert(b.url.clone(), link.url());
    })
    .await;
    let (mut at_a, local, mut twin) = busy_worker_on(&a, 40).await;

    let (handled_during, last_seq, next) = handoff_while_posting(&mut at_a, 40, &b.url, 2).await;
    assert!(
        handled_during > 0,
        "the worker handled no message while its state moved"
    );
    // Every message the source handled is in the state B adopted; the rest are replayed.
    assert_eq!(last_seq, 1 + handled_during);
    let (mut at_b, attached) = attach(&b.url, 40, local.secret).await;
    assert_eq!(attached, last_seq);
    for seq in 2..next {
        let payload = filler(PAGES, 2, seq as u32);
        twin.deliver(&payload);
        if seq > last_seq {
            at_b.post(40, seq, &payload).await;
        }
    }
    let state = at_b.take_back(40).await;
    assert_eq!(state.manifest.last_seq, next - 1);
    let mut back = LocalWorker::start(&wat::parse_str(FILLER).unwrap(), 40, 0);
    back.restore(&state);
    assert!(
        back.worker.memory() == twin.worker.memory(),
        "the moved worker's memory differs from a worker that never moved"
    );

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
