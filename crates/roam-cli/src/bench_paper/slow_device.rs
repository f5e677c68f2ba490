//! The slow device: a CPU quota on the thread that plays the device, with the cgroup v1
//! cpu controller (`cpu.cfs_quota_us` over `cpu.cfs_period_us`), writable as root here.
//! Stands in for `roam_link::cpu::CpuQuota` until that lands; [`slow_down_this_thread`]
//! is the one call to replace.

use std::path::PathBuf;

use anyhow::{Context, Result};

const CPU_CGROUP: &str = "/sys/fs/cgroup/cpu";
const PERIOD_US: u64 = 100_000;

/// The calling thread runs under a CPU quota until this is dropped.
pub struct SlowDevice {
    dir: PathBuf,
    tid: String,
    /// How the quota was applied, for the results.
    pub description: String,
}

/// Limits the calling thread (and threads it starts from now on) to `share` of one core.
pub fn slow_down_this_thread(share: f64) -> Result<SlowDevice> {
    let link = std::fs::read_link("/proc/thread-self").context("cannot find this thread's id")?;
    let tid = link
        .file_name()
        .context("no thread id in /proc/thread-self")?
        .to_string_lossy()
        .into_owned();
    let dir = PathBuf::from(CPU_CGROUP).join(format!("roam-bench-paper-{tid}"));
    let quota = ((share * PERIOD_US as f64) as u64).max(1000);
    let setup = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
        std::fs::write(dir.join("tasks"), &tid)
    };
    setup().with_context(|| format!("cannot set a CPU quota in {}", dir.display()))?;
    Ok(SlowDevice {
        description: format!(
            "{:.0} % of one core: cgroup v1 cpu.cfs_quota_us = {quota} of cpu.cfs_period_us = {PERIOD_US} on the device's thread",
            share * 100.0
        ),
        dir,
        tid,
    })
}

impl Drop for SlowDevice {
    fn drop(&mut self) {
        let _ = std::fs::write(PathBuf::from(CPU_CGROUP).join("tasks"), &self.tid);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
