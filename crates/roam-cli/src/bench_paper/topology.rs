//! The emulated network of `roam bench paper`: a cloud and two edges as `roam serve`
//! processes, and a `roam-link` proxy for every pair that talks, so each process reaches
//! the others through its own link with the settings of `BENCH.md`.
//!
//! A link between two processes is a pair of proxies, one for each side that dials (A dials
//! B for a handoff A → B, B dials A for B → A), both with the link's settings; no move uses
//! both at once. The bench process is the device: it dials the nodes through the device
//! links and never the other way. The nodes listen on ports picked before they start, so
//! that every node can be given its routes (`roam serve --route`) on its command line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use roam_link::{Direction, Link, LinkSpec};

/// A place in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// The bench process, running the application and the client.
    Device,
    /// Edge node A.
    EdgeA,
    /// Edge node B.
    EdgeB,
    /// The cloud node.
    Cloud,
}

impl Site {
    /// The three nodes.
    pub const NODES: [Site; 3] = [Site::Cloud, Site::EdgeA, Site::EdgeB];

    /// How the tables name it.
    pub fn name(self) -> &'static str {
        match self {
            Site::Device => "device",
            Site::EdgeA => "A",
            Site::EdgeB => "B",
            Site::Cloud => "cloud",
        }
    }
}

/// The settings of the link between two sites, and its name in `BENCH.md`.
pub fn bench_link(x: Site, y: Site) -> (&'static str, LinkSpec) {
    use Site::*;
    match (x.min(y), x.max(y)) {
        (Device, EdgeA | EdgeB) => ("device ↔ edge", LinkSpec::DEVICE_EDGE),
        (Device, Cloud) => ("device ↔ cloud", LinkSpec::DEVICE_CLOUD),
        (EdgeA, EdgeB) => ("edge ↔ edge", LinkSpec::EDGE_EDGE),
        (EdgeA | EdgeB, Cloud) => ("edge ↔ cloud", LinkSpec::EDGE_CLOUD),
        _ => unreachable!("no link from a site to itself"),
    }
}

/// A `roam serve` process, killed when dropped (also when the benchmark fails halfway).
pub struct NodeProcess {
    child: Child,
    /// Its own URL (what moves, tokens and the registry call it).
    pub url: String,
}

impl NodeProcess {
    /// Starts `roam serve` with `args`, listening on `addr`, and waits for its start line.
    pub fn start(roam: &Path, addr: SocketAddr, data_dir: &Path, args: &[String]) -> Result<Self> {
        let mut command = Command::new(roam);
        command
            .arg("serve")
            .args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(args);
        // ROAM_BENCH_POST_COPY=never|always|auto: the nodes' `--post-copy`, to compare.
        if let Ok(when) = std::env::var("ROAM_BENCH_POST_COPY") {
            command.args(["--post-copy", &when]);
        }
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", roam.display()))?;
        let mut node = NodeProcess {
            child,
            url: format!("ws://{addr}"),
        };
        let stdout = node.child.stdout.take().context("the node's stdout")?;
        let mut stderr = node.child.stderr.take().context("the node's stderr")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.contains(&addr.to_string()) {
            // It exited (or said something else): what it wrote to stderr says why.
            let _ = node.child.kill();
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            let said: Vec<&str> = said.lines().rev().take(5).collect();
            bail!(
                "the node on {addr} did not start: its first line was `{}`; its last words: {}",
                line.trim(),
                said.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        // Keep reading both, so a chatty node never blocks on a full pipe.
        // ROAM_BENCH_NODE_LOGS=DIR keeps each node's log there (`node-<port>.log`).
        let log: Box<dyn std::io::Write + Send> =
            match std::env::var_os("ROAM_BENCH_NODE_LOGS") {
                Some(dir) => {
                    let path = Path::new(&dir).join(format!("node-{}.log", addr.port()));
                    Box::new(std::fs::File::create(&path).with_context(|| {
                        format!("cannot create the node log {}", path.display())
                    })?)
                }
                None => Box::new(std::io::sink()),
            };
        std::thread::spawn(move || {
            let mut log = log;
            std::io::copy(&mut stderr, &mut log)
        });
        // Keep reading so a chatty node never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(node)
    }

    /// Its process id (to put it under a CPU quota).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on loopback; the node binds it right after.
///
/// Not one the kernel picks (`127.0.0.1:0`): those come from the ephemeral range, which
/// every outgoing connection draws its local port from too, and a benchmark opens many
/// (probes, links, moves) between choosing a node's port and the node binding it. One
/// taken meanwhile made the node exit before its first line. Ports below the ephemeral
/// range are taken only by whoever binds them on purpose.
pub fn free_addr() -> Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    const LOWEST: u32 = 10_000;
    if ephemeral_from <= LOWEST + 1_000 {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?);
    }
    let span = ephemeral_from - LOWEST;
    // Processes start apart from each other (by their id), and each goes on from there.
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let port = LOWEST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return Ok(listener.local_addr()?);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One proxy: `from` dials `to` through it.
pub struct Hop {
    /// The side that dials.
    pub from: Site,
    /// The side it reaches.
    pub to: Site,
    /// The name of the link in `BENCH.md`.
    pub name: &'static str,
    /// The proxy.
    pub link: Link,
}

/// The cloud, edges A and B, and the links between every two of them and the device.
pub struct Topology {
    /// The nodes, by site.
    pub nodes: BTreeMap<Site, NodeProcess>,
    /// Every proxy.
    pub hops: Vec<Hop>,
    /// What every bandwidth was multiplied by.
    pub scale: u64,
    _dirs: Vec<tempfile::TempDir>,
}

impl Topology {
    /// Starts the three nodes and the nine proxies. `scale` multiplies every bandwidth
    /// (1 for the settings of `BENCH.md`; the quick smoke run uses more).
    pub fn start(roam: &Path, scale: u64) -> Result<Topology> {
        let addrs: BTreeMap<Site, SocketAddr> = Site::NODES
            .iter()
            .map(|&s| Ok((s, free_addr()?)))
            .collect::<Result<_>>()?;
        let mut pairs = Vec::new();
        for &node in &Site::NODES {
            pairs.push((Site::Device, node));
        }
        for &from in &Site::NODES {
            for &to in &Site::NODES {
                if from != to {
                    pairs.push((from, to));
                }
            }
        }
        let mut hops = Vec::new();
        for (from, to) in pairs {
            let (name, spec) = bench_link(from, to);
            // The device is the link's "up" side: it uploads at 10 Mbit/s and downloads at 36.
            let spec = LinkSpec::new(spec.up_bps * scale, spec.down_bps * scale, spec.rtt);
            let link = Link::start(spec, addrs[&to])
                .with_context(|| format!("cannot start the {name} link {from:?} → {to:?}"))?;
            hops.push(Hop {
                from,
                to,
                name,
                link,
            });
        }
        let url = |s: Site| format!("ws://{}", addrs[&s]);
        let mut nodes = BTreeMap::new();
        let mut dirs = Vec::new();
        for &site in &Site::NODES {
            let mut args: Vec<String> = Vec::new();
            match site {
                Site::Cloud => args.extend(["--role".into(), "cloud".into()]),
                _ => args.extend([
                    "--role".into(),
                    "edge".into(),
                    "--cloud".into(),
                    url(Site::Cloud),
                ]),
            }
            args.extend(["--name".into(), site.name().into()]);
            for hop in hops.iter().filter(|h| h.from == site) {
                args.push("--route".into());
                args.push(format!("{}={}", url(hop.to), hop.link.url()));
            }
            let dir = tempfile::tempdir()?;
            nodes.insert(
                site,
                NodeProcess::start(roam, addrs[&site], dir.path(), &args)?,
            );
            dirs.push(dir);
        }
        Ok(Topology {
            nodes,
            hops,
            scale,
            _dirs: dirs,
        })
    }

    /// A node's own URL.
    pub fn url(&self, site: Site) -> &str {
        &self.nodes[&site].url
    }

    /// The proxy `from` dials `to` through.
    pub fn hop(&self, from: Site, to: Site) -> &Hop {
        self.hops
            .iter()
            .find(|h| h.from == from && h.to == to)
            .expect("every pair of sites has a hop")
    }

    /// The device's routes: each node's URL → the proxy of its device link.
    pub fn device_routes(&self) -> BTreeMap<String, String> {
        Site::NODES
            .iter()
            .map(|&s| {
                (
                    self.url(s).to_string(),
                    self.hop(Site::Device, s).link.url(),
                )
            })
            .collect()
    }

    /// Waits until the device's link to `site` is quiet: nothing queued in the proxy and
    /// no new bytes for `up_quiet` upwards (what the device posted is on the node) and
    /// for `down_quiet` downwards (no reply half-way across), up to `limit`.
    pub async fn wait_quiet(
        &self,
        site: Site,
        up_quiet: Duration,
        down_quiet: Duration,
        limit: Duration,
    ) {
        let link = &self.hop(Site::Device, site).link;
        let started = Instant::now();
        let mut last = link.stats();
        let (mut up_since, mut down_since) = (Instant::now(), Instant::now());
        while started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = link.stats();
            if now.up_bytes != last.up_bytes || now.up_queued > 0 {
                up_since = Instant::now();
            }
            if now.down_bytes != last.down_bytes || now.down_queued > 0 {
                down_since = Instant::now();
            }
            if up_since.elapsed() >= up_quiet && down_since.elapsed() >= down_quiet {
                return;
            }
            last = now;
        }
    }
}

/// The bandwidth a move's state crosses a link with, bits per second: from `from` to `to`
/// on the link between them, as the device's asymmetric links define up and down.
pub fn state_bps(from: Site, to: Site, scale: u64) -> u64 {
    let (_, spec) = bench_link(from, to);
    let direction = if from == Site::Device {
        Direction::Up
    } else if to == Site::Device {
        Direction::Down
    } else {
        Direction::Up
    };
    spec.bps(direction) * scale
}
