//! A slow device emulated by a CPU quota: a cgroup that lets its threads run for only a
//! share of one CPU's time.
//!
//! A [`CpuQuota`] creates the group, takes in threads or whole processes, and on drop moves
//! each one back to the group it came from and removes the group. It uses cgroup v2's
//! `cpu.max` when a writable v2 hierarchy offers the `cpu` controller, and otherwise cgroup
//! v1's `cpu` controller (`cpu.cfs_period_us` and `cpu.cfs_quota_us`). Both need root.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;

/// The scheduling period of a quota made with [`CpuQuota::new`]. Short, so that a slowed
/// thread runs in many small slices and a message handler of a few milliseconds is slowed
/// evenly instead of running at full speed and then stalling for most of a long period.
pub const DEFAULT_CPU_PERIOD: Duration = Duration::from_millis(10);

/// The kernel's smallest quota and period per period: 1 ms.
const MIN_QUOTA_US: u64 = 1_000;
/// The kernel's longest period: 1 s.
const MAX_PERIOD_US: u64 = 1_000_000;

/// Which cgroup hierarchy a [`CpuQuota`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The v1 `cpu` controller: `cpu.cfs_quota_us` over `cpu.cfs_period_us`.
    V1,
    /// The unified v2 hierarchy: `cpu.max`.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        })
    }
}

/// [`CpuQuota::new`] or [`CpuQuota::with_period`] could not set up a quota.
#[derive(Debug, Error)]
pub enum CreateCpuQuotaError {
    /// the CPU share {share} over a period of {period:?} is out of range: the period must be 1 ms to 1 s, and the share of it at least 1 ms
    #[error("the CPU share {share} over a period of {period:?} is out of range: the period must be 1 ms to 1 s, and the share of it at least 1 ms")]
    InvalidShare {
        /// The share asked for.
        share: f64,
        /// The period asked for.
        period: Duration,
    },
    /// a CPU quota needs root; this process runs as uid {uid}
    #[error("a CPU quota needs root; this process runs as uid {uid}")]
    NotRoot {
        /// The process's user id.
        uid: u32,
    },
    /// no writable cgroup hierarchy has the cpu controller (cgroup v2: {v2}; cgroup v1: {v1})
    #[error(
        "no writable cgroup hierarchy has the cpu controller (cgroup v2: {v2}; cgroup v1: {v1})"
    )]
    NoCgroup {
        /// Why cgroup v2 cannot be used.
        v2: String,
        /// Why cgroup v1 cannot be used.
        v1: String,
    },
    /// cannot create the cgroup {path}
    #[error("cannot create the cgroup {}", path.display())]
    CreateGroup {
        /// The group's directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// cannot set the quota in {path}
    #[error("cannot set the quota in {}", path.display())]
    SetQuota {
        /// The file written.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// [`CpuQuota::add_current_thread`], [`CpuQuota::add_thread`] or [`CpuQuota::add_process`]
/// could not put a thread or process under the quota.
#[derive(Debug, Error)]
pub enum AddToCpuQuotaError {
    /// there is no thread or process {id}
    #[error("there is no thread or process {id}")]
    NoSuchTask {
        /// The thread or process id.
        id: u32,
    },
    /// cannot find which cgroup {kind} {id} is in
    #[error("cannot find which cgroup {kind} {id} is in")]
    FindGroup {
        /// A thread or a process.
        kind: TaskKind,
        /// Its id.
        id: u32,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// on cgroup v2 one quota holds either whole processes or threads of one process, and it already holds {holds}: make another quota for {kind} {id}
    #[error("on cgroup v2 one quota holds either whole processes or threads of one process, and it already holds {holds}: make another quota for {kind} {id}")]
    MixedOnV2 {
        /// What the quota already holds.
        holds: String,
        /// A thread or a process.
        kind: TaskKind,
        /// Its id.
        id: u32,
    },
    /// cannot prepare the cgroup for threads
    #[error("cannot prepare the cgroup for threads")]
    Prepare(#[source] CreateCpuQuotaError),
    /// cannot move {kind} {id} into {path}
    #[error("cannot move {kind} {id} into {}", path.display())]
    Move {
        /// A thread or a process.
        kind: TaskKind,
        /// Its id.
        id: u32,
        /// The file written.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// [`CpuQuota::remove`] could not undo everything; what it could undo, it did.
#[derive(Debug, Error)]
pub enum RemoveCpuQuotaError {
    /// cannot move {kind} {id} back to {path}
    #[error("cannot move {kind} {id} back to {}", path.display())]
    MoveBack {
        /// A thread or a process.
        kind: TaskKind,
        /// Its id.
        id: u32,
        /// The file written.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// cannot remove the cgroup {path}
    #[error("cannot remove the cgroup {}", path.display())]
    RemoveGroup {
        /// The group's directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What was put under a quota: one thread, or a whole process with all of its threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// One thread, by its thread id.
    Thread,
    /// A process, by its process id: every thread it has and will have.
    Process,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Thread => "thread",
            TaskKind::Process => "process",
        })
    }
}

/// A thread or process under the quota, and the group to move it back to.
#[derive(Debug)]
struct Member {
    kind: TaskKind,
    id: u32,
    home: PathBuf,
}

/// What a v2 group holds: v2 moves a single thread only within its process's threaded
/// subtree, so threads need a threaded group under their process's own group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V2Holds {
    Processes,
    ThreadsOf(u32),
}

/// A cgroup that lets its members run for a share of one CPU's time; dropping it moves
/// them back and removes the group.
///
/// ```no_run
/// use roam_link::CpuQuota;
///
/// // This thread now runs at a quarter of one CPU: a device 4 times slower.
/// let mut quota = CpuQuota::new(0.25)?;
/// quota.add_current_thread()?;
/// // ... run the client ...
/// drop(quota); // back at full speed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// New threads start in their creator's group, so threads a member spawns are slowed too;
/// removing the quota moves them back with their creator's old group.
///
/// On cgroup v2 one quota holds either whole processes or threads of a single process
/// (the kernel moves a single thread only within its process's threaded subtree); on v1
/// it holds any mix.
#[derive(Debug)]
pub struct CpuQuota {
    version: CgroupVersion,
    share: f64,
    period: Duration,
    /// The group's directory.
    group: PathBuf,
    /// On v2, the mount point of the unified hierarchy and what the group holds.
    v2: Option<(PathBuf, V2Holds)>,
    /// A group whose `cgroup.subtree_control` got `+cpu` from us, to undo on removal.
    enabled_cpu_in: Option<PathBuf>,
    members: Vec<Member>,
    removed: bool,
}

/// Makes group names unique within this process.
static NEXT_GROUP: AtomicU32 = AtomicU32::new(0);

impl CpuQuota {
    /// Creates a group that runs its members for `share` of one CPU (0.25: a quarter, a
    /// device 4 times slower; above 1, that many CPUs), in periods of
    /// [`DEFAULT_CPU_PERIOD`].
    pub fn new(share: f64) -> Result<CpuQuota, CreateCpuQuotaError> {
        CpuQuota::with_period(share, DEFAULT_CPU_PERIOD)
    }

    /// Like [`CpuQuota::new`] with another scheduling period: each period the members run
    /// for `share × period` in all, then wait for the next.
    pub fn with_period(share: f64, period: Duration) -> Result<CpuQuota, CreateCpuQuotaError> {
        let period_us = period.as_micros() as u64;
        let quota_us = share * period_us as f64;
        if !(quota_us.is_finite()
            && quota_us >= MIN_QUOTA_US as f64
            && (MIN_QUOTA_US..=MAX_PERIOD_US).contains(&period_us))
        {
            return Err(CreateCpuQuotaError::InvalidShare { share, period });
        }
        let quota_us = quota_us.round() as u64;
        let uid = current_uid();
        if uid != 0 {
            return Err(CreateCpuQuotaError::NotRoot { uid });
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let name = format!(
            "roam-cpu-quota-{}-{}",
            std::process::id(),
            NEXT_GROUP.fetch_add(1, Ordering::Relaxed)
        );
        let mut quota = match (usable_v2(&mounts), usable_v1(&mounts)) {
            (Ok(mount), _) => CpuQuota {
                version: CgroupVersion::V2,
                share,
                period,
                group: mount.join(&name),
                v2: Some((mount, V2Holds::Processes)),
                enabled_cpu_in: None,
                members: Vec::new(),
                removed: false,
            },
            (Err(_), Ok(mount)) => CpuQuota {
                version: CgroupVersion::V1,
                share,
                period,
                group: mount.join(&name),
                v2: None,
                enabled_cpu_in: None,
                members: Vec::new(),
                removed: false,
            },
            (Err(v2), Err(v1)) => return Err(CreateCpuQuotaError::NoCgroup { v2, v1 }),
        };
        quota.create_group(quota_us, period_us)?;
        Ok(quota)
    }

    /// Creates the group directory and writes its quota; on v2, first lets the parent
    /// give its children the `cpu` controller.
    fn create_group(&mut self, quota_us: u64, period_us: u64) -> Result<(), CreateCpuQuotaError> {
        let parent = self
            .group
            .parent()
            .expect("a group has a parent")
            .to_path_buf();
        if self.version == CgroupVersion::V2 {
            if let Some((_, V2Holds::ThreadsOf(_))) = self.v2 {
                fs::create_dir(&self.group).map_err(|source| CreateCpuQuotaError::CreateGroup {
                    path: self.group.clone(),
                    source,
                })?;
                // Threaded first: the kernel enables `cpu` for a group that has
                // processes only once its children are threaded.
                let type_file = self.group.join("cgroup.type");
                write_file(&type_file, "threaded").map_err(|source| {
                    CreateCpuQuotaError::CreateGroup {
                        path: type_file,
                        source,
                    }
                })?;
                self.enable_cpu(&parent)?;
            } else {
                self.enable_cpu(&parent)?;
                fs::create_dir(&self.group).map_err(|source| CreateCpuQuotaError::CreateGroup {
                    path: self.group.clone(),
                    source,
                })?;
            }
            let file = self.group.join("cpu.max");
            write_file(&file, &format!("{quota_us} {period_us}"))
                .map_err(|source| CreateCpuQuotaError::SetQuota { path: file, source })?;
        } else {
            fs::create_dir(&self.group).map_err(|source| CreateCpuQuotaError::CreateGroup {
                path: self.group.clone(),
                source,
            })?;
            // The period first: the kernel checks the quota against it.
            for (name, value) in [
                ("cpu.cfs_period_us", period_us),
                ("cpu.cfs_quota_us", quota_us),
            ] {
                let file = self.group.join(name);
                write_file(&file, &value.to_string())
                    .map_err(|source| CreateCpuQuotaError::SetQuota { path: file, source })?;
            }
        }
        Ok(())
    }

    /// Adds `cpu` to `parent`'s `cgroup.subtree_control` unless it is there already.
    fn enable_cpu(&mut self, parent: &Path) -> Result<(), CreateCpuQuotaError> {
        let control = parent.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control)
            .map_err(|source| CreateCpuQuotaError::CreateGroup {
                path: control.clone(),
                source,
            })?
            .split_whitespace()
            .any(|c| c == "cpu");
        if !enabled {
            write_file(&control, "+cpu").map_err(|source| CreateCpuQuotaError::CreateGroup {
                path: control,
                source,
            })?;
            self.enabled_cpu_in = Some(parent.to_path_buf());
        }
        Ok(())
    }

    /// Which hierarchy the quota uses.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The share of one CPU the members get.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The scheduling period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.group
    }

    /// Puts the calling thread under the quota.
    pub fn add_current_thread(&mut self) -> Result<(), AddToCpuQuotaError> {
        let id = current_thread_id().map_err(|source| AddToCpuQuotaError::FindGroup {
            kind: TaskKind::Thread,
            id: 0,
            source,
        })?;
        self.add_thread(id)
    }

    /// Puts the thread `tid` (of any process) under the quota.
    pub fn add_thread(&mut self, tid: u32) -> Result<(), AddToCpuQuotaError> {
        self.add(TaskKind::Thread, tid)
    }

    /// Puts the process `pid` under the quota, with every thread it has and will have.
    pub fn add_process(&mut self, pid: u32) -> Result<(), AddToCpuQuotaError> {
        self.add(TaskKind::Process, pid)
    }

    fn add(&mut self, kind: TaskKind, id: u32) -> Result<(), AddToCpuQuotaError> {
        let tgid = thread_group(id)?;
        if kind == TaskKind::Process && tgid != id {
            // A thread id that is not its process's: the kernel would move the whole
            // process, which is not what the caller named.
            return Err(AddToCpuQuotaError::NoSuchTask { id });
        }
        let home = self
            .group_of(tgid, id)
            .map_err(|source| AddToCpuQuotaError::FindGroup { kind, id, source })?;
        if let Some((_, holds)) = self.v2 {
            self.fit_v2_group(kind, id, tgid, &home, holds)?;
        }
        let file = self.group.join(self.membership_file(kind));
        write_file(&file, &id.to_string()).map_err(|source| match source.raw_os_error() {
            Some(ESRCH) => AddToCpuQuotaError::NoSuchTask { id },
            _ => AddToCpuQuotaError::Move {
                kind,
                id,
                path: file.clone(),
                source,
            },
        })?;
        self.members.push(Member { kind, id, home });
        Ok(())
    }

    /// On v2, makes sure the group can take `kind` `id`: while it is empty, a quota made
    /// for processes becomes a threaded group under the thread's process's group.
    fn fit_v2_group(
        &mut self,
        kind: TaskKind,
        id: u32,
        tgid: u32,
        home: &Path,
        holds: V2Holds,
    ) -> Result<(), AddToCpuQuotaError> {
        let wanted = match kind {
            TaskKind::Process => V2Holds::Processes,
            TaskKind::Thread => V2Holds::ThreadsOf(tgid),
        };
        if wanted == holds {
            return Ok(());
        }
        if !self.members.is_empty() {
            return Err(AddToCpuQuotaError::MixedOnV2 {
                holds: match holds {
                    V2Holds::Processes => "whole processes".into(),
                    V2Holds::ThreadsOf(pid) => format!("threads of process {pid}"),
                },
                kind,
                id,
            });
        }
        let (mount, _) = self.v2.clone().expect("a v2 quota");
        self.remove_group().map_err(|e| {
            AddToCpuQuotaError::Prepare(CreateCpuQuotaError::CreateGroup {
                path: self.group.clone(),
                source: io::Error::other(e.to_string()),
            })
        })?;
        let name = self
            .group
            .file_name()
            .expect("a group has a name")
            .to_owned();
        self.group = match wanted {
            V2Holds::Processes => mount.join(name),
            V2Holds::ThreadsOf(_) => home.join(name),
        };
        self.v2 = Some((mount, wanted));
        let period_us = self.period.as_micros() as u64;
        let quota_us = (self.share * period_us as f64).round() as u64;
        self.create_group(quota_us, period_us)
            .map_err(AddToCpuQuotaError::Prepare)
    }

    /// The file that takes a member of `kind`.
    fn membership_file(&self, kind: TaskKind) -> &'static str {
        match (self.version, kind) {
            (CgroupVersion::V1, TaskKind::Thread) => "tasks",
            (CgroupVersion::V2, TaskKind::Thread) => "cgroup.threads",
            (_, TaskKind::Process) => "cgroup.procs",
        }
    }

    /// The directory of the group thread `tid` of process `tgid` is in, in this quota's
    /// hierarchy.
    fn group_of(&self, tgid: u32, tid: u32) -> io::Result<PathBuf> {
        let file = format!("/proc/{tgid}/task/{tid}/cgroup");
        let text = fs::read_to_string(&file)?;
        let mounts = fs::read_to_string("/proc/self/mountinfo")?;
        let (mount, root, path) = match self.version {
            CgroupVersion::V2 => {
                let path = text
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .ok_or_else(|| io::Error::other(format!("{file} has no cgroup v2 line")))?;
                let (mount, root) = find_mount(&mounts, |fstype, _| fstype == "cgroup2")
                    .ok_or_else(|| io::Error::other("cgroup v2 is no longer mounted"))?;
                (mount, root, path)
            }
            CgroupVersion::V1 => {
                let path = text
                    .lines()
                    .find_map(|l| {
                        let mut fields = l.splitn(3, ':');
                        let (_, controllers, path) =
                            (fields.next()?, fields.next()?, fields.next()?);
                        controllers.split(',').any(|c| c == "cpu").then_some(path)
                    })
                    .ok_or_else(|| {
                        io::Error::other(format!("{file} has no cpu controller line"))
                    })?;
                let (mount, root) = find_mount(&mounts, is_v1_cpu).ok_or_else(|| {
                    io::Error::other("the cgroup v1 cpu controller is no longer mounted")
                })?;
                (mount, root, path)
            }
        };
        let relative = Path::new(path).strip_prefix(&root).map_err(|_| {
            io::Error::other(format!(
                "cgroup {path} is outside the mounted {}",
                root.display()
            ))
        })?;
        Ok(mount.join(relative))
    }

    /// Moves every member back to its group, then removes the group. Dropping the quota
    /// does the same, logging what fails instead of returning it.
    pub fn remove(mut self) -> Result<(), RemoveCpuQuotaError> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), RemoveCpuQuotaError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut first_error = None;
        for member in self.members.drain(..).rev() {
            let kind = member.kind;
            let file = member.home.join(match (self.version, kind) {
                (CgroupVersion::V1, TaskKind::Thread) => "tasks",
                (CgroupVersion::V2, TaskKind::Thread) => "cgroup.threads",
                (_, TaskKind::Process) => "cgroup.procs",
            });
            match write_file(&file, &member.id.to_string()) {
                Ok(()) => {}
                // Gone already: nothing to move back.
                Err(e) if e.raw_os_error() == Some(ESRCH) => {}
                Err(source) => {
                    first_error.get_or_insert(RemoveCpuQuotaError::MoveBack {
                        kind,
                        id: member.id,
                        path: file,
                        source,
                    });
                }
            }
        }
        if let Err(e) = self.remove_group() {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Moves whatever is still in the group (threads its members started) to the parent
    /// group, removes the group, and takes back a `+cpu` we gave its parent.
    fn remove_group(&mut self) -> Result<(), RemoveCpuQuotaError> {
        let parent = self
            .group
            .parent()
            .expect("a group has a parent")
            .to_path_buf();
        let (list, into) = match self.v2 {
            Some((_, V2Holds::ThreadsOf(_))) => ("cgroup.threads", "cgroup.threads"),
            Some((_, V2Holds::Processes)) => ("cgroup.procs", "cgroup.procs"),
            None => ("tasks", "tasks"),
        };
        if let Ok(left) = fs::read_to_string(self.group.join(list)) {
            for id in left.split_whitespace() {
                // Best effort: a task that exits meanwhile is fine, and a failure shows
                // up as the group being busy below.
                let _ = write_file(&parent.join(into), id);
            }
        }
        if let Err(source) = fs::remove_dir(&self.group) {
            if source.kind() != io::ErrorKind::NotFound {
                return Err(RemoveCpuQuotaError::RemoveGroup {
                    path: self.group.clone(),
                    source,
                });
            }
        }
        if let Some(parent) = self.enabled_cpu_in.take() {
            // Best effort: another group may use the controller by now.
            let _ = write_file(&parent.join("cgroup.subtree_control"), "-cpu");
        }
        Ok(())
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "removing a CPU quota");
        }
    }
}

/// `ESRCH` on Linux: no such process.
const ESRCH: i32 = 3;

/// Writes `value` to an existing cgroup file in one write, as the kernel wants it.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// The real user id of this process, from `/proc/self/status`; `u32::MAX` if unreadable.
fn current_uid() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(u32::MAX)
}

/// The kernel's id of the calling thread.
fn current_thread_id() -> io::Result<u32> {
    // `/proc/thread-self` links to `PID/task/TID`.
    let link = fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|name| name.to_str()?.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!("unexpected /proc/thread-self: {}", link.display()))
        })
}

/// The process thread `id` belongs to.
fn thread_group(id: u32) -> Result<u32, AddToCpuQuotaError> {
    let status = fs::read_to_string(format!("/proc/{id}/status"))
        .map_err(|_| AddToCpuQuotaError::NoSuchTask { id })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(AddToCpuQuotaError::NoSuchTask { id })
}

/// Whether a mount of `fstype` with super options `options` is the v1 `cpu` controller.
fn is_v1_cpu(fstype: &str, options: &str) -> bool {
    fstype == "cgroup" && options.split(',').any(|o| o == "cpu")
}

/// The mount point and root of the first mount in `mountinfo` that `matches` its
/// filesystem type and super options, if it is mounted read-write.
fn find_mount(mountinfo: &str, matches: impl Fn(&str, &str) -> bool) -> Option<(PathBuf, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (root, mount, options) = (left.get(3)?, left.get(4)?, left.get(5)?);
        let (fstype, super_options) = (right.first()?, right.get(2).unwrap_or(&""));
        (matches(fstype, super_options) && options.split(',').any(|o| o == "rw")).then(|| {
            (
                PathBuf::from(unescape(mount)),
                PathBuf::from(unescape(root)),
            )
        })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The v2 mount point, if v2 is mounted read-write and its root offers `cpu`.
fn usable_v2(mountinfo: &str) -> Result<PathBuf, String> {
    let (mount, root) = find_mount(mountinfo, |fstype, _| fstype == "cgroup2")
        .ok_or_else(|| "not mounted read-write".to_string())?;
    if root != Path::new("/") {
        return Err(format!("only {} of it is mounted", root.display()));
    }
    let controllers = fs::read_to_string(mount.join("cgroup.controllers")).map_err(|e| {
        format!(
            "cannot read {}: {e}",
            mount.join("cgroup.controllers").display()
        )
    })?;
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        return Err(format!(
            "{} has no cpu controller (controllers: {:?})",
            mount.display(),
            controllers.trim()
        ));
    }
    Ok(mount)
}

/// The v1 `cpu` controller's mount point, if it is mounted read-write at its root.
fn usable_v1(mountinfo: &str) -> Result<PathBuf, String> {
    let (mount, root) = find_mount(mountinfo, is_v1_cpu)
        .ok_or_else(|| "no read-write cpu controller mounted".to_string())?;
    if root != Path::new("/") {
        return Err(format!("only {} of it is mounted", root.display()));
    }
    if !mount.join("cpu.cfs_quota_us").exists() {
        return Err(format!("{} has no cpu.cfs_quota_us", mount.display()));
    }
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_points_and_roots() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu\\040x rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 /sub /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
";
        assert_eq!(
            find_mount(info, |t, _| t == "cgroup2"),
            Some(("/sys/fs/cgroup/unified".into(), "/".into()))
        );
        assert_eq!(
            find_mount(info, is_v1_cpu),
            Some(("/sys/fs/cgroup/cpu x".into(), "/".into()))
        );
        // Read-only mounts do not count.
        assert_eq!(find_mount(info, |_, o| o.contains("memory")), None);
    }

    #[test]
    fn shares_that_give_less_than_a_millisecond_per_period_are_refused() {
        for (share, period) in [
            (0.0, DEFAULT_CPU_PERIOD),
            (-1.0, DEFAULT_CPU_PERIOD),
            (f64::NAN, DEFAULT_CPU_PERIOD),
            (0.05, DEFAULT_CPU_PERIOD),
            (0.5, Duration::from_secs(2)),
        ] {
            assert!(
                matches!(
                    CpuQuota::with_period(share, period),
                    Err(CreateCpuQuotaError::InvalidShare { .. })
                ),
                "share {share}, period {period:?}"
            );
        }
    }
}
