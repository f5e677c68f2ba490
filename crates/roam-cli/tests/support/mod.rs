//! What the process-level tests share: the example workers, `roam serve` processes and
//! quick benchmark runs.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
        .stderr(Stdio::null());
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
