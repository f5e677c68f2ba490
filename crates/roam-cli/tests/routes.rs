//! Dial routes: every process reaches the others through its own emulated link. A handoff
//! between two `roam serve` processes whose routes point through `roam-link` proxies
//! crosses those proxies, and every node and the client still go by their own URLs.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roam_cli::workloads::{counter_expected, counter_messages};
use roam_client::{MoveKind, Place, WorkerHandle, WorkerOptions};
use roam_link::{Link, LinkSpec};

/// An example worker, which `cargo xtask build-workers` builds (or `ROAM_WORKERS_DIR`).
fn worker(name: &str) -> PathBuf {
    std::env::var_os("ROAM_WORKERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/workers"))
        .join(format!("{name}.wasm"))
}

/// A `roam serve --role edge` process on a chosen port, killed when dropped.
struct Edge {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Edge {
    fn start(addr: SocketAddr, routes: &[(String, String)]) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roam"));
        cmd.args(["serve", "--role", "edge", "--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (from, to) in routes {
            cmd.arg("--route").arg(format!("{from}={to}"));
        }
        let mut child = cmd.spawn().expect("roam serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(&addr.to_string()),
            "unexpected start line `{line}`"
        );
        Edge {
            child,
            url: format!("ws://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on loopback (the node binds it right after).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_handoff_crosses_the_links_that_the_routes_name() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let fast = LinkSpec::symmetric(1_000_000_000, Duration::from_millis(2));
    let device_a = Link::start(fast, addr_a).unwrap();
    let device_b = Link::start(fast, addr_b).unwrap();
    let a_b = Link::start(LinkSpec::EDGE_EDGE, addr_b).unwrap();
    let b_url = format!("ws://{addr_b}");
    let a = Edge::start(addr_a, &[(b_url.clone(), a_b.url())]);
    let b = Edge::start(addr_b, &[]);
    assert_eq!(b.url, b_url);

    let options = WorkerOptions {
        routes: [
            (a.url.clone(), device_a.url()),
            (b.url.clone(), device_b.url()),
        ]
        .into(),
        ..WorkerOptions::default()
    };
    let counter = std::fs::read(worker("counter")).unwrap();
    let messages = counter_messages(300);
    let mut replies = Vec::new();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut handle = WorkerHandle::start(&counter, options).unwrap();
            handle.move_to(Place::Node(a.url.clone())).await.unwrap();
            assert_eq!(handle.place(), Place::Node(a.url.clone()));
            for m in &messages[..150] {
                handle.post(m.clone()).await.unwrap();
            }
            let report = handle
                .move_to(Place::Node(b.url.clone()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(report.kind, MoveKind::Handoff);
            assert_eq!(report.to, b.url, "the client names B by its own URL");
            for m in &messages[150..] {
                handle.post(m.clone()).await.unwrap();
            }
            while let Some(reply) = handle.next_reply().await.unwrap() {
                replies.push(reply.payload);
            }
        });
    assert_eq!(replies, counter_expected(&messages));
    // The state went A → B through A's route, and the client reached each node through its own.
    let handoff = a_b.stats();
    assert_eq!(handoff.connections, 1, "A dialled B once, through the link");
    assert!(handoff.up_bytes > 1_000, "the state crossed the A → B link");
    assert!(device_a.stats().connections >= 1);
    assert!(device_b.stats().connections >= 1);
    assert!(device_b.stats().up_bytes > 0);
}
