//! Installs the tools `cargo xtask fuzz` needs. (The workers' build installs its own
//! toolchain: see `workers.rs`.)

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::{run, step};

/// Installs cargo-fuzz when it is missing.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    step("installing cargo-fuzz");
    run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
        .context("cargo-fuzz is needed for `cargo xtask fuzz`")
}
