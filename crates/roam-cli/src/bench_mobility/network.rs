//! The emulated world of one run: a cloud and the trace's edges as `roam serve` processes,
//! a `roam-link` proxy for every pair of nodes (fixed at `BENCH.md`'s edge ↔ edge and
//! edge ↔ cloud settings), and one device link per node that the trace drives: its spec
//! changes, it is cut (every connection through it reset) and restored, and the node's
//! process is put under a CPU quota when the trace says it is crowded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use roam_client::{Place, WorkerHandle, WorkerOptions};
use roam_link::{CpuQuota, Link, LinkSpec};

use super::trace::{Event, LinkSetting, CLOUD};
use crate::bench_paper::topology::{free_addr, NodeProcess};

/// One node and what the trace controls about it.
struct Node {
    process: NodeProcess,
    /// The device's link to it.
    device_link: Link,
    /// Its CPU quota while the trace has it below full speed.
    quota: Option<CpuQuota>,
}

/// The nodes and links of one run; everything stops when it is dropped.
pub struct Network {
    nodes: BTreeMap<String, Node>,
    /// The node ↔ node proxies, kept alive.
    _links: Vec<Link>,
    _dirs: Vec<tempfile::TempDir>,
    /// What went wrong applying CPU shares (the run goes on at full speed).
    pub cpu_problems: Vec<String>,
}

/// The fixed link between two nodes.
fn node_link(from: &str, to: &str) -> LinkSpec {
    if from == CLOUD || to == CLOUD {
        LinkSpec::EDGE_CLOUD
    } else {
        LinkSpec::EDGE_EDGE
    }
}

impl Network {
    /// Starts a node for every place (edges registered with the cloud) and every link.
    /// The device links start at `BENCH.md`'s settings; [`Network::apply`] replays the
    /// trace on them.
    pub fn start(roam: &Path, places: &[String]) -> Result<Network> {
        let addrs: BTreeMap<&str, SocketAddr> = places
            .iter()
            .map(|p| Ok((p.as_str(), free_addr()?)))
            .collect::<Result<_>>()?;
        let url = |p: &str| format!("ws://{}", addrs[p]);
        let mut links = Vec::new();
        let mut routes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for from in places {
            for to in places.iter().filter(|to| *to != from) {
                let link = Link::start(node_link(from, to), addrs[to.as_str()])
                    .with_context(|| format!("cannot start the link {from} → {to}"))?;
                routes
                    .entry(from)
                    .or_default()
                    .push(format!("{}={}", url(to), link.url()));
                links.push(link);
            }
        }
        let mut dirs = Vec::new();
        let mut nodes = BTreeMap::new();
        // The cloud first: the edges register with it as they start.
        let mut order: Vec<&String> = places.iter().filter(|p| *p == CLOUD).collect();
        order.extend(places.iter().filter(|p| *p != CLOUD));
        for place in order {
            let mut args: Vec<String> = vec!["--name".into(), place.clone(), "--role".into()];
            if place == CLOUD {
                args.push("cloud".into());
            } else {
                args.extend(["edge".into(), "--cloud".into(), url(CLOUD)]);
            }
            for route in routes.get(place.as_str()).into_iter().flatten() {
                args.extend(["--route".into(), route.clone()]);
            }
            let dir = tempfile::tempdir()?;
            let process = NodeProcess::start(roam, addrs[place.as_str()], dir.path(), &args)
                .with_context(|| format!("cannot start the node `{place}`"))?;
            dirs.push(dir);
            let device_link = Link::start(LinkSetting::bench(place).spec(), addrs[place.as_str()])
                .with_context(|| format!("cannot start the device's link to {place}"))?;
            nodes.insert(
                place.clone(),
                Node {
                    process,
                    device_link,
                    quota: None,
                },
            );
        }
        Ok(Network {
            nodes,
            _links: links,
            _dirs: dirs,
            cpu_problems: Vec::new(),
        })
    }

    /// Gives every node the worker's module, compiled, as the nodes of a deployment
    /// serving this application would hold it: a throwaway worker of the module visits
    /// each node directly (not through the device's links) and comes back. Moves in the
    /// runs are then warm, as `roam bench paper`'s warm moves are.
    pub fn warm(&self, wasm: &[u8]) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            for (place, node) in &self.nodes {
                let options = WorkerOptions {
                    checkpoint_every: None,
                    ..WorkerOptions::default()
                };
                let mut handle = WorkerHandle::start(wasm, options)?;
                let url = node.process.url.clone();
                handle
                    .move_to(Place::Node(url))
                    .await
                    .with_context(|| format!("cannot warm the node `{place}`"))?;
                handle
                    .move_to(Place::Local)
                    .await
                    .with_context(|| format!("cannot warm the node `{place}`"))?;
            }
            Ok(())
        })
    }

    /// A node's own URL (what the client and the other nodes call it).
    pub fn url(&self, place: &str) -> &str {
        &self.nodes[place].process.url
    }

    /// The device's routes: each node's URL → its device link.
    pub fn device_routes(&self) -> BTreeMap<String, String> {
        self.nodes
            .values()
            .map(|n| (n.process.url.clone(), n.device_link.url()))
            .collect()
    }

    /// Applies one event of the trace: link specs, cuts and restorations, CPU shares.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        for (place, setting) in &event.links {
            let node = &self.nodes[place];
            match setting {
                Some(setting) => {
                    node.device_link
                        .set_spec(setting.spec())
                        .with_context(|| format!("cannot set the link to {place}"))?;
                    node.device_link.set_down(false);
                }
                None => node.device_link.set_down(true),
            }
        }
        for (place, &share) in &event.cpu {
            let node = self.nodes.get_mut(place).expect("a validated trace");
            // Back at full speed first: a process is in one group at a time.
            node.quota = None;
            if share < 1.0 {
                match quota(share, node.process.pid()) {
                    Ok(q) => node.quota = Some(q),
                    Err(e) => self.cpu_problems.push(format!("{place} at {share}: {e:#}")),
                }
            }
        }
        Ok(())
    }
}

/// A CPU quota of `share` of one core on the process `pid`.
fn quota(share: f64, pid: u32) -> Result<CpuQuota> {
    let mut quota = CpuQuota::new(share).context("cannot create a CPU quota")?;
    quota
        .add_process(pid)
        .context("cannot put the node under the CPU quota")?;
    Ok(quota)
}
