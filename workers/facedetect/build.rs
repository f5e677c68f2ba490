//! Finds the SeetaFace model that the rustface package ships, so the worker can embed it
//! with `include_bytes!`: a worker has no file system to load it from at run time.
//!
//! Cargo tells build scripts nothing about where a dependency's sources are, so this asks
//! `cargo metadata` (at the locked versions) for the rustface package and passes its
//! directory on as `RUSTFACE_DIR`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The model file inside the rustface package.
const MODEL: &str = "model/seeta_fd_frontal_v1.0.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // Offline first: the build has fetched everything it compiles. But metadata also wants
    // the dev-dependencies, which a plain build never fetches, so let it fetch on failure.
    let output = cargo_metadata(&manifest_dir, true)
        .filter(|output| output.status.success())
        .or_else(|| cargo_metadata(&manifest_dir, false))
        .expect("run cargo metadata");
    if !output.status.success() {
        panic!(
            "cargo metadata failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata = String::from_utf8(output.stdout).expect("cargo metadata prints UTF-8");
    let dir = manifest_paths(&metadata)
        .filter_map(|manifest| manifest.parent().map(Path::to_path_buf))
        .find(|dir| is_rustface(dir))
        .unwrap_or_else(|| panic!("no rustface package with {MODEL} in cargo metadata"));
    println!("cargo:rustc-env=RUSTFACE_DIR={}", dir.display());
}

/// Runs `cargo metadata` for this package's workspace, at the locked versions.
fn cargo_metadata(manifest_dir: &Path, offline: bool) -> Option<Output> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["metadata", "--format-version", "1", "--locked"])
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"));
    if offline {
        command.arg("--offline");
    }
    command.output().ok()
}

/// Only the rustface package ships the model file, wherever it was fetched from
/// (registry, git checkout, vendored directory).
fn is_rustface(dir: &Path) -> bool {
    dir.join(MODEL).is_file()
}

/// Every `"manifest_path"` string in the metadata JSON, unescaped.
fn manifest_paths(json: &str) -> impl Iterator<Item = PathBuf> + '_ {
    const KEY: &str = "\"manifest_path\":\"";
    json.match_indices(KEY).map(move |(at, _)| {
        let mut path = String::new();
        let mut chars = json[at + KEY.len()..].chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => path.push('\n'),
                    Some('t') => path.push('\t'),
                    Some(other) => path.push(other),
                    None => break,
                },
                c => path.push(c),
            }
        }
        PathBuf::from(path)
    })
}
