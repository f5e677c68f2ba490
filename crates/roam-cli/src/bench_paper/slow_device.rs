//! The slow device: a CPU quota (`roam_link::CpuQuota`: cgroup v2 `cpu.max` where
//! the unified hierarchy has the cpu controller, the v1 cpu controller otherwise) on the
//! thread that plays the device.

use anyhow::{Context, Result};
use roam_link::{CgroupVersion, CpuQuota};

/// The calling thread runs under a CPU quota until this is dropped.
pub struct SlowDevice {
    _quota: CpuQuota,
    /// How the quota was applied, for the results.
    pub description: String,
}

/// Limits the calling thread to `share` of one core.
pub fn slow_down_this_thread(share: f64) -> Result<SlowDevice> {
    let mut quota = CpuQuota::new(share).context("cannot create a CPU quota")?;
    quota
        .add_current_thread()
        .context("cannot put the device's thread under the CPU quota")?;
    let how = match quota.version() {
        CgroupVersion::V1 => "cgroup v1 cpu.cfs_quota_us over cpu.cfs_period_us",
        CgroupVersion::V2 => "cgroup v2 cpu.max",
    };
    Ok(SlowDevice {
        description: format!(
            "{:.0} % of one core ({how}, period {} ms) on the device's thread",
            share * 100.0,
            quota.period().as_millis()
        ),
        _quota: quota,
    })
}
