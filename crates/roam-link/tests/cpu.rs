//! A CPU quota as its users see it: a busy thread under a quarter of one CPU takes about
//! four times as long, and removing the quota puts every thread and process back where it
//! was and leaves no group behind.
//!
//! The tests need root and a writable cgroup hierarchy with the cpu controller; without
//! one they print why and pass.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use roam_link::{CgroupVersion, CpuQuota, CreateCpuQuotaError};

/// The tests take turns: the timing one wants the CPU to itself.
static CGROUPS: Mutex<()> = Mutex::new(());

fn cgroups() -> MutexGuard<'static, ()> {
    CGROUPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A quota, or `None` with the reason printed when this machine cannot make one.
fn quota(share: f64) -> Option<CpuQuota> {
    match CpuQuota::new(share) {
        Ok(quota) => Some(quota),
        Err(e @ (CreateCpuQuotaError::NotRoot { .. } | CreateCpuQuotaError::NoCgroup { .. })) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!(
            "cannot make a CPU quota: {e} ({:?})",
            std::error::Error::source(&e)
        ),
    }
}

/// A fixed amount of integer work.
fn spin(iterations: u64) -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

/// Time a thread spent on a CPU so far, from the scheduler's own account.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("read schedstat");
    let ns = stat.split_whitespace().next().expect("a first field");
    Duration::from_nanos(ns.parse().expect("nanoseconds"))
}

/// Runs `iterations` of [`spin`] on a fresh thread, under `quota` if given, and returns the
/// wall-clock time and the CPU time it took.
fn timed_spin(iterations: u64, quota: Option<&mut CpuQuota>) -> (Duration, Duration) {
    thread::scope(|scope| {
        scope
            .spawn(move || {
                if let Some(quota) = quota {
                    quota.add_current_thread().expect("add the spinning thread");
                }
                let (started, cpu) = (Instant::now(), thread_cpu_time());
                spin(iterations);
                (started.elapsed(), thread_cpu_time() - cpu)
            })
            .join()
            .expect("the spinning thread")
    })
}

/// The cgroup lines of a thread or process, to compare before and after.
fn cgroup_of(task: &str) -> String {
    std::fs::read_to_string(format!("/proc/{task}/cgroup")).expect("read the cgroup file")
}

#[test]
fn a_quarter_of_a_cpu_makes_a_busy_thread_about_four_times_slower() {
    let _turn = cgroups();
    let Some(mut quarter) = quota(0.25) else {
        return;
    };
    // About 0.3 s of work on a CPU.
    let mut iterations = 1u64 << 20;
    while timed_spin(iterations, None).1 < Duration::from_millis(300) {
        iterations *= 2;
    }
    // The slowdown is the throttled run's wall-clock time over the work's CPU time: what
    // the same work takes on a CPU of its own. Comparing with an unthrottled wall-clock
    // time instead would measure the machine's other load as well (this machine is
    // shared), which slows the unthrottled run but barely the throttled one.
    let mut slowdowns = Vec::new();
    for attempt in 1..=3 {
        let (free_wall, free_cpu) = timed_spin(iterations, None);
        let (throttled, throttled_cpu) = timed_spin(iterations, Some(&mut quarter));
        let work = free_cpu.min(throttled_cpu);
        let slowdown = throttled.as_secs_f64() / work.as_secs_f64();
        eprintln!(
            "attempt {attempt} ({}, period {:?}): {:.1} ms of CPU work; {:.1} ms without the quota, \
             {:.1} ms under a quarter of one CPU: {slowdown:.2}x slower",
            quarter.version(),
            quarter.period(),
            work.as_secs_f64() * 1e3,
            free_wall.as_secs_f64() * 1e3,
            throttled.as_secs_f64() * 1e3
        );
        if (3.5..=4.6).contains(&slowdown) {
            return;
        }
        slowdowns.push(slowdown);
    }
    panic!("the slowdowns {slowdowns:?} are not about 4x");
}

#[test]
fn removing_the_quota_moves_threads_and_processes_back_and_removes_the_group() {
    let _turn = cgroups();
    let Some(mut quota) = quota(0.5) else {
        return;
    };
    let group: PathBuf = quota.path().to_path_buf();
    assert!(
        group.is_dir(),
        "{} exists while the quota does",
        group.display()
    );
    let group_name = group.file_name().unwrap().to_str().unwrap().to_string();

    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .expect("start sleep");
    let child_id = child.id().to_string();
    let child_before = cgroup_of(&child_id);

    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sleeper = thread::spawn(move || {
        let tid = std::fs::read_link("/proc/thread-self").unwrap();
        let tid = tid.file_name().unwrap().to_str().unwrap().to_string();
        tid_tx.send(tid).unwrap();
        let _ = done_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let thread_task = format!("{}/task/{tid}", std::process::id());
    let thread_before = cgroup_of(&thread_task);

    let on_v2 = quota.version() == CgroupVersion::V2;
    if on_v2 {
        // One quota per kind on v2: the process goes under its own.
        let mut for_process = CpuQuota::new(0.5).expect("a second quota");
        for_process
            .add_process(child.id())
            .expect("add the process");
        assert!(cgroup_of(&child_id).contains("roam-cpu-quota-"));
        drop(for_process);
    } else {
        quota.add_process(child.id()).expect("add the process");
        assert!(cgroup_of(&child_id).contains(&group_name));
    }
    quota
        .add_thread(tid.parse().unwrap())
        .expect("add the thread");
    assert!(cgroup_of(&thread_task).contains(&group_name));
    let group = quota.path().to_path_buf();

    quota.remove().expect("remove the quota");
    assert_eq!(cgroup_of(&thread_task), thread_before);
    assert_eq!(cgroup_of(&child_id), child_before);
    assert!(!group.exists(), "{} is gone", group.display());

    done_tx.send(()).unwrap();
    sleeper.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
