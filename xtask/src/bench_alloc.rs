//! `cargo xtask bench alloc`: the guest SDK's `zero-freed` allocator, on and off.
//!
//! Builds the example workers twice — as usual into `target/workers/`, and with
//! `--no-default-features` (every worker's `zero-freed` feature off) into
//! `target/workers-without-zeroing/` — then runs `roam bench alloc` on both, which writes
//! `bench/results/alloc.json` and `alloc.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, root, run, step};

/// The Rust workers the benchmark runs.
const WORKERS: [&str; 3] = ["physics", "facedetect", "blur"];

/// Builds both variants of the workers and runs the benchmark.
pub fn run_bench() -> Result<()> {
    // The variant without first: both share the workers' target dir (only the workers and
    // the SDK differ), and the usual build last leaves it as `build-workers` expects.
    let without = build_without_zeroing()?;
    crate::workers::build()?;
    let roam = crate::roam_binary()?;
    let results = root().join("bench/results");
    fs::create_dir_all(&results)?;
    step("benchmark: alloc");
    run(Command::new(roam)
        .args(["bench", "alloc", "--workers"])
        .arg(root().join("target/workers"))
        .arg("--without-zeroing")
        .arg(&without)
        .arg("--out")
        .arg(&results))
}

/// Builds the Rust workers with every feature off and copies them to
/// `target/workers-without-zeroing/`; returns that directory.
fn build_without_zeroing() -> Result<PathBuf> {
    step("building the Rust workers without zero-freed (release)");
    let workspace = root().join("workers");
    let target_dir = workspace.join("target");
    // From the workspace, so its `.cargo/config.toml` applies as to the other build.
    run(cargo()
        .current_dir(&workspace)
        .args(["build", "--release", "--no-default-features"])
        .args(["--target", "wasm32-unknown-unknown", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))?;
    let built = target_dir.join("wasm32-unknown-unknown/release");
    let out = root().join("target/workers-without-zeroing");
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    for name in WORKERS {
        copy_checked(&built.join(format!("{name}.wasm")), &out)?;
    }
    Ok(out)
}

/// Copies a worker module into `out_dir` after checking it against the worker contract.
fn copy_checked(module: &Path, out_dir: &Path) -> Result<()> {
    let bytes = fs::read(module).with_context(|| format!("read {}", module.display()))?;
    roam_prepare::module_info(&bytes)
        .with_context(|| format!("{} breaks the worker ABI", module.display()))?;
    let name = module.file_name().context("a module file has a name")?;
    fs::write(out_dir.join(name), &bytes)?;
    println!(
        "  {:<11} {:>9} bytes (without zero-freed)",
        name.to_string_lossy(),
        bytes.len()
    );
    Ok(())
}
