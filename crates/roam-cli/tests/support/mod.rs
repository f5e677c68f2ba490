//! What the process-level tests share: the example workers, `roam serve` processes and
//! quick benchmark runs.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a `roam` command in these tests may take before it counts as hung: minutes
/// more than any of them needs on a loaded machine, and far less than CI's limit.
pub const HANG_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cmd` to its end like [`Command::output`], unless it runs longer than `limit`:
/// then it is killed and the test fails with what it wrote, so that a hang shows where it
/// stopped instead of holding the whole run.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the command can be waited for") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{cmd:?} ran longer than {limit:?} and was killed; its stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Where a node's stderr goes: a file in `$ROAM_TEST_LOGS` when that is set (set
/// `RUST_LOG` too to choose what the nodes log), nowhere otherwise.
fn node_stderr(role: &str) -> Stdio {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("ROAM_TEST_LOGS") else {
        return Stdio::null();
    };
    let name = format!(
        "{role}-{}-{}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::create_dir_all(&dir).expect("ROAM_TEST_LOGS can be created");
    std::fs::File::create(Path::new(&dir).join(name))
        .map(Stdio::from)
        .expect("a node log can be created in ROAM_TEST_LOGS")
}

pub fn workers_dir() -> PathBuf {
    std::env::var_os("ROAM_WORKERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/workers"))
}

/// Runs `roam bench NAME --quick` on the example workers with `extra` arguments, writing
/// into `out`, and returns `NAME.json`.
pub fn quick_bench(name: &str, extra: &[&std::ffi::OsStr], out: &Path) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["bench", name, "--quick", "--workers"])
        .arg(workers_dir())
        .args(extra)
        .arg("--out")
        .arg(out)
        .status()
        .expect("roam starts");
    assert!(
        status.success(),
        "roam bench {name} --quick failed: {status}"
    );
    let json = std::fs::read(out.join(format!("{name}.json"))).unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// A single-threaded runtime, as an application's worker thread has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The path of an example worker, which `cargo xtask build-workers` builds.
pub fn worker(name: &str) -> PathBuf {
    let path = workers_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the workers with `cargo xtask build-workers`",
        path.display()
    );
    path
}

/// The value of the metric line that starts with `prefix` in the `/metrics` of the node at
/// `url` (a plain HTTP/1.0 GET).
pub fn metric(url: &str, prefix: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A `roam serve` process, killed when dropped.
pub struct Node {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Node {
    #[allow(dead_code)] // not every test binary starts plain nodes
    pub fn start(role: &str, cloud: Option<&str>) -> Node {
        Node::start_with(role, cloud, &[])
    }

    /// Starts a node with more `roam serve` arguments.
    pub fn start_with(role: &str, cloud: Option<&str>, args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roam"));
        cmd.args([
            "serve",
            "--role",
            role,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(node_stderr(role));
        if let Some(cloud) = cloud {
            cmd.args(["--cloud", cloud]);
        }
        cmd.args(args);
        let mut child = cmd.spawn().expect("roam serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no URL in `{line}`"))
            .to_string();
        Node {
            child,
            url,
            _dir: dir,
        }
    }

    /// Kills the node the hard way: SIGKILL, no chance to save anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// A link of 10 Mbit/s each way and 5 ms of delay in front of `node`, and the options of a
/// worker handle that reaches the node through it (without checkpoints, which would share
/// the link): moves of a few MiB take seconds.
pub fn slow_link_to(node: &Node) -> (roam_link::Link, roam_client::WorkerOptions) {
    let addr = node.url.strip_prefix("ws://").unwrap().parse().unwrap();
    let link = roam_link::Link::start(
        roam_link::LinkSpec::symmetric(10_000_000, Duration::from_millis(5)),
        addr,
    )
    .unwrap();
    let options = roam_client::WorkerOptions {
        routes: [(node.url.clone(), link.url())].into(),
        checkpoint_every: None,
        ..roam_client::WorkerOptions::default()
    };
    (link, options)
}

/// Where a fallback through `cloud` takes the worker: to `to`, which fetches it from the
/// node the device lost.
pub fn relayed(cloud: &Node, to: &Node) -> roam_client::Place {
    roam_client::Place::Relay {
        cloud: cloud.url.clone(),
        to: to.url.clone(),
    }
}
