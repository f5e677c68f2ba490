//! `cargo xtask`: the project's own commands.
//!
//! - `demo`: sets up what is missing, runs the physics worker through capture/restore cycles
//!   and moves, then serves the browser demo page (`demo browser`: the page alone);
//! - `test`: sets up what is missing and runs every test (what CI runs; `test browser`: the
//!   browser tests alone);
//! - `bench core|moves|paper|mobility|browser|alloc`: a benchmark, written to `bench/results/`;
//! - `fuzz [TARGET] [SECONDS]`: runs the cargo-fuzz targets (not part of CI);
//! - `build-workers`: builds the example workers into `target/workers/`.
//!
//! xtask itself depends only on std, anyhow and roam-prepare (to check the workers it
//! builds) so that running it never compiles wasmtime a second time: everything heavy runs
//! through `cargo` in the release profile, which the tests, the demo and the benchmarks share.

mod bench_alloc;
mod browser;
mod nodes;
mod setup;
mod workers;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("build-workers") => workers::build().map(|_| ()),
        Some("demo") if rest == ["browser"] => workers::build().and_then(|_| browser::demo()),
        Some("demo") => demo().and_then(|()| browser::demo()),
        Some("test") if rest == ["browser"] => workers::build().and_then(|_| browser::test()),
        Some("test") => test(),
        Some("bench") => bench(&rest),
        Some("fuzz") => fuzz(&rest),
        _ => bail!(
            "usage: cargo xtask <command>\n\n  demo            set up and run the demo\n  test            set up and run every test\n  bench core      capture/restore, message rate, worker state (bench/results/core.*)\n  bench moves     round trip through a node, handoff, idle workers (bench/results/moves.*)\n  bench browser   frame rate local (CPU slowed 4x) vs offloaded, capture/restore in chromium (bench/results/browser.*)\n  bench paper [--quick]\n                  the SoCC 2019 evaluation on emulated links (bench/results/paper.*)\n  bench mobility [--quick]\n                  traces of a device on the move replayed under each placement policy (bench/results/mobility.*)\n  bench alloc     the workers with and without the zero-freed allocator (bench/results/alloc.*)\n  fuzz [TARGET] [SECONDS]\n                  run the fuzz targets (installs cargo-fuzz; not in CI)\n  build-workers   build the example workers into target/workers/"
        ),
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// Prints a step header.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs a command in the repository root, failing with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The release build of the `roam` binary.
fn roam_binary() -> Result<PathBuf> {
    step("building roam (release)");
    run(cargo().args(["build", "--release", "-p", "roam-cli"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), |dir| root().join(dir));
    Ok(target.join("release/roam"))
}

fn test() -> Result<()> {
    workers::build()?;

    step("formatting");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;

    step("guest-side crates build for wasm32 (the browser uses them)");
    run(cargo().args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "roam-snapshot",
        "-p",
        "roam-prepare",
        "-p",
        "roam-worker",
        "-p",
        "roam-proto",
        "-p",
        "roam-place",
    ]))?;

    // Debug: the workers' release profile uses LTO, which only slows a native test build.
    step("worker logic, natively");
    run(cargo().args(["test", "--manifest-path", "workers/Cargo.toml"]))?;

    step("workspace tests (release: wasmtime compiles workers fast, and the demo and benchmarks share the build)");
    run(cargo().args(["test", "--release", "--workspace"]))?;

    step("clippy");
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    browser::test()?;
    eprintln!("\nall tests passed");
    Ok(())
}

fn demo() -> Result<()> {
    workers::build()?;
    let roam = roam_binary()?;
    let workers = root().join("target/workers");
    step("demo 1: a physics worker captured and restored into fresh engines while it runs");
    run(Command::new(&roam)
        .arg("demo")
        .arg("--workers")
        .arg(&workers))?;

    step("demo 2: the worker moves between a cloud and two edge nodes on this machine");
    let data = std::env::temp_dir().join(format!("roam-demo-{}", std::process::id()));
    let cloud = nodes::Node::start(&roam, "cloud", None, &data.join("cloud"))?;
    let a = nodes::Node::start(&roam, "edge", Some(cloud.url()), &data.join("edge-a"))?;
    let b = nodes::Node::start(&roam, "edge", Some(cloud.url()), &data.join("edge-b"))?;
    eprintln!(
        "cloud {}, edge A {}, edge B {}",
        cloud.url(),
        a.url(),
        b.url()
    );
    let result = run(Command::new(&roam)
        .arg("demo")
        .arg("--workers")
        .arg(&workers)
        .args(["--cubes", "1000", "--cloud", cloud.url()])
        .args(["--edge", a.url(), "--edge", b.url()]));
    drop((a, b, cloud));
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn bench(args: &[&str]) -> Result<()> {
    let which = args.first().copied().unwrap_or("core");
    if which == "alloc" {
        return bench_alloc::run_bench();
    }
    if !["core", "moves", "paper", "browser", "mobility"].contains(&which) {
        bail!("unknown benchmark `{which}` (known: core, moves, paper, mobility, browser, alloc)");
    }
    workers::build()?;
    if which == "browser" {
        return browser::bench();
    }
    let roam = roam_binary()?;
    let results = root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    step(&format!("benchmark: {which}"));
    run(Command::new(roam)
        .args(["bench", which, "--workers"])
        .arg(root().join("target/workers"))
        .arg("--out")
        .arg(&results)
        .args(&args[1..]))
}

fn fuzz(args: &[&str]) -> Result<()> {
    let targets = ["frame_decode", "prepare", "snapshot_decode"];
    let chosen: Vec<&str> = match args.first() {
        Some(t) if targets.contains(t) => vec![*t],
        Some(t) => bail!("unknown fuzz target `{t}` (known: {})", targets.join(", ")),
        None => targets.to_vec(),
    };
    let seconds = args.get(1).copied().unwrap_or("60");
    setup::ensure_cargo_fuzz()?;
    for target in chosen {
        step(&format!("fuzzing {target} for {seconds} s"));
        run(cargo()
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
