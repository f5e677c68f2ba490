//! Starts `roam serve` processes for the demo and reads the address each one listens on.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A node process, stopped with SIGTERM (a graceful shutdown) when dropped.
pub struct Node {
    child: Child,
    url: String,
}

impl Node {
    /// Starts a node on a free loopback port and waits until it listens.
    pub fn start(roam: &Path, role: &str, cloud: Option<&str>, data_dir: &Path) -> Result<Node> {
        Node::start_with(roam, role, cloud, data_dir, &[])
    }

    /// [`Node::start`] with more arguments for `roam serve`.
    pub fn start_with(
        roam: &Path,
        role: &str,
        cloud: Option<&str>,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<Node> {
        let mut cmd = Command::new(roam);
        cmd.args([
            "serve",
            "--role",
            role,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped());
        if let Some(cloud) = cloud {
            cmd.args(["--cloud", cloud]);
        }
        cmd.args(extra);
        let mut child = cmd.spawn().context("cannot start roam serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("roam serve said nothing")?;
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) else {
            let _ = child.kill();
            bail!("roam serve did not say where it listens: `{}`", line.trim());
        };
        Ok(Node {
            url: url.to_string(),
            child,
        })
    }

    /// The node's WebSocket URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM first, so the node shuts down gracefully; kill only if it hangs.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
