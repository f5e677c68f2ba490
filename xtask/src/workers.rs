//! Builds the example workers in `workers/` for wasm32 and collects them in `target/workers/`.
//!
//! The Rust workers are one Cargo workspace built for `wasm32-unknown-unknown`; the C
//! worker is compiled with clang against wasi-libc. Every module is checked against the
//! worker ABI (its imports and exports) before it is copied, so a dependency that starts
//! importing from the JavaScript glue or the host fails the build here rather than at
//! load time on a node.

use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Rust target the workers are built for.
const TARGET: &str = "wasm32-unknown-unknown";

/// The Rust workers: crate names in `workers/`, and the names of their `.wasm` files.
const RUST_WORKERS: [&str; 4] = ["counter", "physics", "facedetect", "blur"];

/// Builds every example worker and returns the paths of the `.wasm` files.
pub fn build() -> Result<Vec<PathBuf>> {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives inside the repository")?
        .to_path_buf();
    let out_dir = root.join("target").join("workers");
    fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;

    let mut built = Vec::new();
    for (name, module) in build_rust_workers(&root)? {
        built.push(install(&out_dir, name, &module)?);
    }
    match build_c_worker(&root)? {
        Some(module) => built.push(install(&out_dir, "c_counter", &module)?),
        None => println!("skipped c_counter: see the note above"),
    }
    println!(
        "built {} workers in {:.1} s into {}",
        built.len(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    Ok(built)
}

/// Builds the Rust workspace in `workers/` and returns each worker's module path.
fn build_rust_workers(root: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    ensure_rust_target()?;
    let workspace = root.join("workers");
    // The workers' own target dir (ignored by git), so their builds never wait on the
    // main workspace's build lock or invalidate its artifacts.
    let target_dir = workspace.join("target");
    println!("building Rust workers for {TARGET} (release)...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Run from the workspace so its `.cargo/config.toml` (SIMD on) applies.
    run(Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))?;
    let release = target_dir.join(TARGET).join("release");
    Ok(RUST_WORKERS
        .iter()
        .map(|&name| (name, release.join(format!("{name}.wasm"))))
        .collect())
}

/// Adds the wasm32 target with rustup when it is not installed yet.
fn ensure_rust_target() -> Result<()> {
    let installed = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.trim() == TARGET),
        // No rustup (a distribution's Rust): let cargo say whether the target is there.
        _ => return Ok(()),
    };
    if !installed {
        println!("adding the {TARGET} target with rustup...");
        run(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    Ok(())
}

/// Compiles `workers/c/counter.c`; `None` when the C toolchain is missing and cannot be
/// installed here.
fn build_c_worker(root: &Path) -> Result<Option<PathBuf>> {
    if !c_toolchain_ready() {
        if !is_root() {
            println!(
                "note: the C worker needs clang, lld, wasi-libc and the wasm32 clang runtime \
                 (Debian: apt-get install clang lld wasi-libc libclang-rt-<clang major>-dev-wasm32); \
                 they are missing and installing them needs root"
            );
            return Ok(None);
        }
        install_c_toolchain()?;
        ensure!(
            c_toolchain_ready(),
            "the C toolchain is still incomplete after apt-get install"
        );
    }
    println!("building the C worker with clang...");
    let out = root
        .join("workers")
        .join("target")
        .join("c")
        .join("c_counter.wasm");
    fs::create_dir_all(out.parent().expect("has a parent"))?;
    run(Command::new("clang")
        .args(CLANG_WASI)
        // Debian's wasi-libc carries DWARF; the function names stay for trap backtraces.
        .args([
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--strip-debug",
            "-o",
        ])
        .arg(&out)
        .arg(root.join("workers").join("c").join("counter.c")))?;
    Ok(Some(out))
}

/// clang's flags for a WASI reactor against Debian's wasi-libc, whose headers and
/// libraries sit under /usr (`include/wasm32-wasi`, `lib/wasm32-wasi`).
const CLANG_WASI: [&str; 3] = [
    "--target=wasm32-wasi",
    "-mexec-model=reactor",
    "--sysroot=/usr",
];

/// True when clang, wasm-ld, wasi-libc and clang's wasm32 builtins are all installed.
fn c_toolchain_ready() -> bool {
    let clang_runs = Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    let lld_runs = Command::new("wasm-ld")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    let libc_installed = Path::new("/usr/lib/wasm32-wasi/libc.a").is_file();
    if !(clang_runs && lld_runs && libc_installed) {
        return false;
    }
    // clang names the builtins library it will link; it must exist.
    Command::new("clang")
        .args(CLANG_WASI)
        .arg("-print-libgcc-file-name")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .is_some_and(|builtins| builtins.is_file())
}

/// Whether this process runs as root (and so may use apt-get).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Installs the C toolchain with apt-get.
fn install_c_toolchain() -> Result<()> {
    println!("installing the C toolchain with apt-get...");
    let apt_install = |packages: &[String]| -> Result<()> {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    run(Command::new("apt-get").arg("update"))?;
    // The builtins package is versioned with clang, so clang comes first.
    apt_install(&["clang".into(), "lld".into(), "wasi-libc".into()])?;
    let version = Command::new("clang")
        .arg("--version")
        .output()
        .context("run clang --version")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let major = version
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .with_context(|| format!("no version in clang --version: {version}"))?
        .to_string();
    apt_install(&[format!("libclang-rt-{major}-dev-wasm32")])
}

/// Checks `module` against the worker ABI, copies it to `out_dir/NAME.wasm` and prints
/// its size.
fn install(out_dir: &Path, name: &str, module: &Path) -> Result<PathBuf> {
    let bytes = fs::read(module).with_context(|| format!("read {}", module.display()))?;
    check_abi(&bytes)
        .with_context(|| format!("{name} ({}) breaks the worker ABI", module.display()))?;
    let dest = out_dir.join(format!("{name}.wasm"));
    fs::write(&dest, &bytes).with_context(|| format!("write {}", dest.display()))?;
    println!("  {name:<11} {:>9} bytes  {}", bytes.len(), dest.display());
    Ok(dest)
}

/// Runs `command`, failing with its exit status.
fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Checks a module against the worker contract with the same checker nodes use, and that
/// it has a `roam_init` (every example worker does).
fn check_abi(bytes: &[u8]) -> Result<()> {
    let info = roam_prepare::module_info(bytes)?;
    ensure!(info.has_init, "does not export roam_init");
    Ok(())
}
