//! The node's counters and their Prometheus text form (`GET /metrics`). Plain atomics:
//! every series is known up front, so no metrics library is needed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The kinds of move a node takes part in, as the `kind` label spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MoveKind {
    /// A client sent a worker here.
    Offload,
    /// This node handed a worker to another node.
    Handoff,
    /// The cloud fetched a worker from a node on a client's behalf.
    Fallback,
    /// This node sent a worker back to its client.
    Return,
}

const KINDS: [(MoveKind, &str); 4] = [
    (MoveKind::Offload, "offload"),
    (MoveKind::Handoff, "handoff"),
    (MoveKind::Fallback, "fallback"),
    (MoveKind::Return, "return"),
];

/// Upper bounds of the message-duration histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    10.0,
];

/// Every series the node exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    workers_hosted: AtomicI64,
    connections: AtomicI64,
    connections_accepted: AtomicU64,
    /// Indexed by kind, then outcome (0 = ok, 1 = error).
    moves: [[AtomicU64; 2]; 4],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// One count per bucket of [`BUCKETS`], then the +Inf bucket.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_ns: AtomicU64,
    duration_count: AtomicU64,
    /// Pre-copy rounds sent while workers ran, chunk-body bytes sent then, and while
    /// they were paused, and the time paused.
    precopy_rounds: AtomicU64,
    precopy_live_bytes: AtomicU64,
    precopy_paused_bytes: AtomicU64,
    precopy_paused_ns: AtomicU64,
    /// Chunk bodies a transfer did not ask for because this node held them.
    chunks_reused: AtomicU64,
    /// Copies of workers' state sent to their clients.
    checkpoints: AtomicU64,
    /// Workers received post-copy (run before their memory had arrived), and the chunks
    /// their code touched before the stream brought them.
    post_copy_moves: AtomicU64,
    post_copy_requests: AtomicU64,
    messages_ahead: AtomicU64,
}

impl Metrics {
    pub(crate) fn set_workers(&self, n: usize) {
        self.workers_hosted.store(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn record_move(&self, kind: MoveKind, ok: bool) {
        let k = KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.moves[k][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records a pre-copy that ended with the worker adopted elsewhere.
    pub(crate) fn observe_precopy(&self, rounds: u32, live: u64, paused: u64, took: Duration) {
        self.precopy_rounds
            .fetch_add(u64::from(rounds), Ordering::Relaxed);
        self.precopy_live_bytes.fetch_add(live, Ordering::Relaxed);
        self.precopy_paused_bytes
            .fetch_add(paused, Ordering::Relaxed);
        self.precopy_paused_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Records a checkpoint a client took.
    pub(crate) fn record_checkpoint(&self) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a worker received post-copy, and the chunks it asked the source for.
    pub(crate) fn observe_post_copy(&self, requests: u64) {
        self.post_copy_moves.fetch_add(1, Ordering::Relaxed);
        self.post_copy_requests
            .fetch_add(requests, Ordering::Relaxed);
    }

    /// Records messages a client sent ahead of its worker, handed to it on arrival.
    pub(crate) fn messages_ahead(&self, n: usize) {
        self.messages_ahead.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records chunk bodies a transfer took from this node's store instead of the wire.
    pub(crate) fn chunks_reused(&self, n: usize) {
        self.chunks_reused.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records how long a worker took to handle one message.
    pub(crate) fn observe_message(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every series.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP roam_workers_hosted Workers this node hosts now."
        );
        let _ = writeln!(out, "# TYPE roam_workers_hosted gauge");
        let _ = writeln!(
            out,
            "roam_workers_hosted {}",
            self.workers_hosted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP roam_connections WebSocket connections open now."
        );
        let _ = writeln!(out, "# TYPE roam_connections gauge");
        let _ = writeln!(
            out,
            "roam_connections {}",
            self.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP roam_connections_accepted_total WebSocket connections accepted since the node started."
        );
        let _ = writeln!(out, "# TYPE roam_connections_accepted_total counter");
        let _ = writeln!(
            out,
            "roam_connections_accepted_total {}",
            self.connections_accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP roam_moves_total Moves this node took part in, by kind and outcome."
        );
        let _ = writeln!(out, "# TYPE roam_moves_total counter");
        for (k, (_, kind)) in KINDS.iter().enumerate() {
            for (o, outcome) in ["ok", "error"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "roam_moves_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {}",
                    load(&self.moves[k][o])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP roam_bytes_total Frame bytes received and sent."
        );
        let _ = writeln!(out, "# TYPE roam_bytes_total counter");
        let _ = writeln!(
            out,
            "roam_bytes_total{{direction=\"in\"}} {}",
            load(&self.bytes_in)
        );
        let _ = writeln!(
            out,
            "roam_bytes_total{{direction=\"out\"}} {}",
            load(&self.bytes_out)
        );
        let _ = writeln!(
            out,
            "# HELP roam_message_duration_seconds Time a worker took to handle one message."
        );
        let _ = writeln!(out, "# TYPE roam_message_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += load(&self.duration_buckets[i]);
            let _ = writeln!(
                out,
                "roam_message_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += load(&self.duration_buckets[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "roam_message_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "roam_message_duration_seconds_sum {}",
            load(&self.duration_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "roam_message_duration_seconds_count {}",
            load(&self.duration_count)
        );
        let series: [(&str, &str, &str, f64); 9] = [
            (
                "roam_precopy_rounds_total",
                "Pre-copy rounds sent while the worker ran.",
                "",
                load(&self.precopy_rounds) as f64,
            ),
            (
                "roam_precopy_bytes_total",
                "Chunk-body bytes pre-copy sent, while the worker ran and while it was paused.",
                "{phase=\"live\"}",
                load(&self.precopy_live_bytes) as f64,
            ),
            (
                "roam_precopy_bytes_total",
                "",
                "{phase=\"paused\"}",
                load(&self.precopy_paused_bytes) as f64,
            ),
            (
                "roam_precopy_paused_seconds_total",
                "Time workers sent by pre-copy were paused, from the last round to adoption.",
                "",
                load(&self.precopy_paused_ns) as f64 / 1e9,
            ),
            (
                "roam_chunks_reused_total",
                "Chunk bodies transfers did not ask for because this node held them.",
                "",
                load(&self.chunks_reused) as f64,
            ),
            (
                "roam_post_copy_moves_total",
                "Workers received post-copy: run before every chunk of their memory had arrived.",
                "",
                load(&self.post_copy_moves) as f64,
            ),
            (
                "roam_post_copy_requests_total",
                "Chunks post-copy workers touched before they arrived, asked of their source.",
                "",
                load(&self.post_copy_requests) as f64,
            ),
            (
                "roam_messages_ahead_total",
                "Messages clients sent ahead of a worker on its way here (Expect), handed to it when it arrived.",
                "",
                load(&self.messages_ahead) as f64,
            ),
            (
                "roam_checkpoints_total",
                "Copies of workers' state sent to their clients as recovery points.",
                "",
                load(&self.checkpoints) as f64,
            ),
        ];
        for (name, help, labels, value) in series {
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out
    }
}
