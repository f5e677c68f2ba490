//! The browser SDK's commands: build it (the Rust core for wasm32, then the TypeScript in
//! `js/`), serve the demo page and the test pages from a small static server, and run the
//! browser tests and benchmark in headless Chromium driven by playwright-core.
//!
//! - `cargo xtask test` ends with [`test`];
//! - `cargo xtask demo` ends with [`demo`], and `cargo xtask demo browser` runs only it;
//! - `cargo xtask bench browser` runs [`bench`].
//!
//! Each starts a cloud and two edge nodes on loopback and tells the pages where they are
//! through `/config.json`; the tests start a third edge that reports itself 100 times as
//! fast as the reference core (`--speed 100`), for automatic placement to find.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{nodes, root, run, step};

/// Where Debian's chromium lives; the tests launch it from there.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The Cargo target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        })
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the `roam` binary (release) and returns its path.
fn roam_binary() -> Result<PathBuf> {
    step("building roam (release)");
    run(cargo().args(["build", "--release", "-p", "roam-cli"]))?;
    Ok(target_dir().join("release/roam"))
}

/// Builds the SDK: the Rust core for wasm32 and the TypeScript, into `js/build/`.
fn build_sdk() -> Result<()> {
    step("browser SDK: the Rust core for wasm32 (roam-web)");
    run(cargo().args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "roam-web",
    ]))?;
    let core = target_dir().join("wasm32-unknown-unknown/release/roam_web.wasm");
    let bytes = std::fs::read(&core).with_context(|| format!("read {}", core.display()))?;
    let stripped = strip_debug_sections(&bytes)?;

    let js = root().join("js");
    let lock = js.join("package-lock.json");
    let installed = js.join("node_modules/.package-lock.json");
    let stale = match (modified(&lock), modified(&installed)) {
        (Some(lock), Some(installed)) => lock > installed,
        _ => true,
    };
    if stale {
        step("browser SDK: npm ci");
        run_in(&js, Command::new("npm").arg("ci")).context(
            "npm ci failed: Node.js 20 and npm must be installed, and the npm registry reachable",
        )?;
    }
    step("browser SDK: TypeScript");
    run_in(&js, Command::new("npm").args(["run", "build"]))?;
    let out = js.join("build/src/roam_web.wasm");
    std::fs::write(&out, &stripped).with_context(|| format!("write {}", out.display()))?;
    println!(
        "roam_web.wasm: {} KiB (without debug sections)",
        stripped.len() / 1024
    );
    Ok(())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Drops the custom sections whose names start with `.debug` from a wasm module: the
/// browser needs none of them, and they are most of the release build's bytes.
fn strip_debug_sections(wasm: &[u8]) -> Result<Vec<u8>> {
    fn leb(bytes: &[u8], at: &mut usize) -> Result<usize> {
        let mut value = 0usize;
        for shift in (0..35).step_by(7) {
            let byte = *bytes.get(*at).context("truncated wasm module")?;
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("bad LEB128 in the wasm module")
    }
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        bail!("roam_web.wasm is not a wasm module");
    }
    let mut out = wasm[..8].to_vec();
    let mut at = 8;
    while at < wasm.len() {
        let start = at;
        let id = wasm[at];
        at += 1;
        let len = leb(wasm, &mut at)?;
        let body = at;
        at = body.checked_add(len).context("truncated wasm module")?;
        if at > wasm.len() {
            bail!("truncated wasm module");
        }
        if id == 0 {
            let mut name_at = body;
            let name_len = leb(wasm, &mut name_at)?;
            let name = wasm.get(name_at..name_at + name_len).unwrap_or_default();
            if name.starts_with(b".debug") {
                continue;
            }
        }
        out.extend_from_slice(&wasm[start..at]);
    }
    Ok(out)
}

/// Installs Debian's chromium when it is missing (as root), as the tests need it.
fn ensure_chromium() -> Result<()> {
    if Path::new(CHROMIUM).exists() {
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root_user {
        bail!("{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`), or run as root to have it installed");
    }
    step("installing chromium (apt-get)");
    if run(Command::new("apt-get").args(["install", "-y", "chromium"])).is_err() {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "chromium"]))?;
    }
    Ok(())
}

/// A cloud and two edges on loopback (and, for the tests, a fast edge), stopped when
/// dropped.
struct Cluster {
    /// The cloud, edge A, edge B and the fast edge if any.
    nodes: Vec<nodes::Node>,
    data: PathBuf,
}

impl Cluster {
    fn start(roam: &Path, fast_edge: bool) -> Result<Cluster> {
        let data = std::env::temp_dir().join(format!("roam-browser-{}", std::process::id()));
        let cloud = nodes::Node::start(roam, "cloud", None, &data.join("cloud"))?;
        let edge_a = nodes::Node::start(roam, "edge", Some(cloud.url()), &data.join("edge-a"))?;
        let edge_b = nodes::Node::start(roam, "edge", Some(cloud.url()), &data.join("edge-b"))?;
        let mut nodes = vec![cloud, edge_a, edge_b];
        if fast_edge {
            let fast = nodes::Node::start_with(
                roam,
                "edge",
                Some(nodes[0].url()),
                &data.join("edge-fast"),
                &["--speed", "100"],
            )?;
            nodes.push(fast);
        }
        Ok(Cluster { nodes, data })
    }

    fn cloud(&self) -> &str {
        self.nodes[0].url()
    }

    fn edge_a(&self) -> &str {
        self.nodes[1].url()
    }

    fn edge_b(&self) -> &str {
        self.nodes[2].url()
    }

    /// What the pages read from `/config.json` (`fastEdge` is null without one).
    fn config(&self) -> String {
        let fast = self
            .nodes
            .get(3)
            .map_or("null".to_string(), |n| format!(r#""{}""#, n.url()));
        format!(
            r#"{{"cloud":"{}","edgeA":"{}","edgeB":"{}","fastEdge":{fast}}}"#,
            self.cloud(),
            self.edge_a(),
            self.edge_b()
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes save their workers into the data directory as they stop.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Serves the demo and test pages on a free loopback port, on a thread of its own, for
/// as long as the process runs. Returns the page's base URL.
fn serve(config: String) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let url = format!("http://{}", listener.local_addr()?);
    let site = Site {
        js: root().join("js"),
        workers: root().join("target/workers"),
        config,
    };
    let site: &'static Site = Box::leak(Box::new(site));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Err(e) = site.answer(stream) {
                    eprintln!("page server: {e}");
                }
            });
        }
    });
    Ok(url)
}

/// What the page server serves: `/` the demo, `/config.json`, `/workers/NAME.wasm` from
/// `target/workers/`, and `build/`, `demo/` and `pages/` under `js/`.
struct Site {
    js: PathBuf,
    workers: PathBuf,
    config: String,
}

impl Site {
    fn answer(&self, stream: TcpStream) -> Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
        }
        let mut parts = request.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let mut stream = stream;
        if method != "GET" && method != "HEAD" {
            return respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"GET only",
            );
        }
        let body = match self.resolve(path) {
            Some(Served::Bytes(bytes, kind)) => Some((bytes, kind)),
            Some(Served::File(file)) => std::fs::read(&file).ok().map(|b| (b, mime(&file))),
            None => None,
        };
        match body {
            Some((bytes, kind)) => {
                let bytes = if method == "HEAD" { Vec::new() } else { bytes };
                respond(&mut stream, "200 OK", kind, &bytes)
            }
            None => respond(&mut stream, "404 Not Found", "text/plain", b"not found"),
        }
    }

    fn resolve(&self, path: &str) -> Option<Served> {
        if path
            .split('/')
            .any(|part| part == ".." || part.starts_with('.') && !part.is_empty())
        {
            return None;
        }
        match path {
            "/" => return Some(Served::File(self.js.join("demo/index.html"))),
            "/config.json" => {
                return Some(Served::Bytes(
                    self.config.clone().into_bytes(),
                    "application/json",
                ))
            }
            _ => {}
        }
        let rest = path.strip_prefix('/')?;
        if let Some(name) = rest.strip_prefix("workers/") {
            return (!name.contains('/')).then(|| Served::File(self.workers.join(name)));
        }
        let top = rest.split('/').next()?;
        ["build", "demo", "pages"]
            .contains(&top)
            .then(|| Served::File(self.js.join(rest)))
    }
}

enum Served {
    Bytes(Vec<u8>, &'static str),
    File(PathBuf),
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    Ok(())
}

/// Runs a script of `js/build/test/` with node, telling it where the pages are.
fn run_script(script: &str, page: &str, extra: &[(&str, PathBuf)]) -> Result<()> {
    let mut cmd = Command::new("node");
    cmd.arg(format!("build/test/{script}"))
        .env("ROAM_PAGE", page)
        .env("ROAM_CHROMIUM", CHROMIUM);
    for (key, value) in extra {
        cmd.env(key, value);
    }
    run_in(&root().join("js"), &mut cmd)
}

/// Runs a command in `dir` (`crate::run` runs in the repository root), failing with its
/// exit status.
fn run_in(dir: &Path, cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?} in {}", dir.display());
    let status = cmd
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// The browser tests: builds what they need, starts the nodes and the page server, runs
/// `js/test/browser.test.ts`; the demo page's screenshot lands in `target/browser/`.
pub fn test() -> Result<()> {
    let started = Instant::now();
    let roam = roam_binary()?;
    ensure_chromium()?;
    build_sdk()?;
    let cluster = Cluster::start(&roam, true)?;
    let page = serve(cluster.config())?;
    step(&format!(
        "browser tests (headless chromium, pages at {page})"
    ));
    let artifacts = root().join("target/browser");
    std::fs::create_dir_all(&artifacts)?;
    run_script("browser.test.js", &page, &[("ROAM_ARTIFACTS", artifacts)])?;
    drop(cluster);
    println!(
        "browser tests passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The demo page: builds the SDK, starts the nodes and serves the page until Ctrl-C.
pub fn demo() -> Result<()> {
    let roam = roam_binary()?;
    build_sdk()?;
    let cluster = Cluster::start(&roam, false)?;
    let page = serve(cluster.config())?;
    step("demo: the browser page");
    println!(
        "cloud {}, edge A {}, edge B {}",
        cluster.cloud(),
        cluster.edge_a(),
        cluster.edge_b()
    );
    println!("\n  open {page}/ in a browser; press Enter (or Ctrl-C) to stop\n");
    let mut line = String::new();
    // Without a terminal (stdin at its end) the page stays up until the process is stopped.
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        loop {
            std::thread::park();
        }
    }
    drop(cluster);
    Ok(())
}

/// The browser benchmark: frame rate of N cubes, local on a CPU slowed 4× versus
/// offloaded, and capture/restore throughput in the browser; results in
/// `bench/results/browser.json` and `.md`.
pub fn bench() -> Result<()> {
    let roam = roam_binary()?;
    ensure_chromium()?;
    build_sdk()?;
    let cluster = Cluster::start(&roam, false)?;
    let page = serve(cluster.config())?;
    step("benchmark: browser");
    let results = root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    run_script("bench.js", &page, &[("ROAM_RESULTS", results)])
}
