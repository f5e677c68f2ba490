//! Workers saved across a restart. A node shutting down captures every hosted worker
//! and writes it to `data_dir/workers/<worker id hex>.snap` with its owner and module
//! (whose bytes are in the module cache); a node starting reloads them, so a restart
//! loses no worker state, and each client re-attaches with its secret.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use roam_proto::WorkerId;
use roam_runtime::{Runtime, WorkerModule};
use roam_snapshot::Snapshot;

use crate::cache::ModuleCache;
use crate::hosting::Captured;

/// Opens every saved worker file.
const MAGIC: &[u8; 8] = b"ROAMWKR1";

/// Bytes before the snapshot: magic, worker id, owner hash, module hash.
const HEADER: usize = 8 + 16 + 32 + 32;

fn path(dir: &Path, worker: WorkerId) -> PathBuf {
    dir.join(format!("{worker:032x}.snap"))
}

/// Writes a captured worker to `dir`, making sure its module's bytes are in the cache.
pub(crate) fn save(
    dir: &Path,
    cache: &ModuleCache,
    worker: WorkerId,
    captured: &Captured,
) -> io::Result<()> {
    let module = &captured.module;
    if !cache.contains(module.hash()) {
        cache.put(module.hash(), module.bytes())?;
    }
    let snapshot = captured.snapshot.encode();
    let mut bytes = Vec::with_capacity(HEADER + snapshot.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&worker.to_le_bytes());
    bytes.extend_from_slice(&captured.owner);
    bytes.extend_from_slice(module.hash());
    bytes.extend_from_slice(&snapshot);
    let tmp = dir.join(format!(".{worker:032x}.tmp"));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path(dir, worker))
}

/// A saved worker, read back.
pub(crate) struct Saved {
    pub worker: WorkerId,
    pub owner: [u8; 32],
    pub module: Arc<WorkerModule>,
    pub snapshot: Snapshot,
    /// The file it came from, deleted once the worker runs again.
    pub file: PathBuf,
}

/// Why a saved worker could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadSavedError {
    /// the file cannot be read: {0}
    #[error("the file cannot be read: {0}")]
    Read(#[from] io::Error),
    /// the file is not a saved worker
    #[error("the file is not a saved worker")]
    NotSaved,
    /// the worker's module {0} is not in the module cache
    #[error("the worker's module {0} is not in the module cache")]
    ModuleMissing(String),
    /// the worker's module does not load: {0}
    #[error("the worker's module does not load: {0}")]
    Module(String),
    /// the snapshot does not decode: {0}
    #[error("the snapshot does not decode: {0}")]
    Snapshot(String),
}

fn load_one(file: &Path, runtime: &Runtime, cache: &ModuleCache) -> Result<Saved, LoadSavedError> {
    let bytes = std::fs::read(file)?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(LoadSavedError::NotSaved);
    }
    let worker = u128::from_le_bytes(bytes[8..24].try_into().expect("16 bytes"));
    let owner: [u8; 32] = bytes[24..56].try_into().expect("32 bytes");
    let module_hash: [u8; 32] = bytes[56..88].try_into().expect("32 bytes");
    let module_bytes = cache
        .get(&module_hash)
        .ok_or_else(|| LoadSavedError::ModuleMissing(hex::encode(module_hash)))?;
    let module = runtime
        .load(&module_bytes)
        .map_err(|e| LoadSavedError::Module(e.to_string()))?;
    let snapshot = runtime
        .decode_snapshot(&bytes[HEADER..])
        .map_err(|e| LoadSavedError::Snapshot(e.to_string()))?;
    Ok(Saved {
        worker,
        owner,
        module,
        snapshot,
        file: file.to_path_buf(),
    })
}

/// Every worker saved in `dir`. A file that cannot be read back is reported and left
/// where it is, for someone to look at.
pub(crate) fn load_all(dir: &Path, runtime: &Runtime, cache: &ModuleCache) -> Vec<Saved> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut saved = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        if file.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        match load_one(&file, runtime, cache) {
            Ok(worker) => saved.push(worker),
            Err(e) => tracing::warn!(file = %file.display(), "cannot reload a saved worker: {e}"),
        }
    }
    saved
}
