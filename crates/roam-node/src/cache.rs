//! The module cache: module bytes on disk, named by their sha-256, checked against the
//! name whenever they are read. Compiled artifacts live beside them (`compiled/`, kept by
//! the runtime), so a module is received and compiled once per node, across restarts.

use std::io;
use std::path::{Path, PathBuf};

use roam_proto::ModuleHash;
use sha2::{Digest, Sha256};

/// Module bytes in `data_dir/modules/<sha-256 hex>.wasm`.
#[derive(Debug, Clone)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    /// A cache in `dir`, created if missing.
    pub(crate) fn open(dir: &Path) -> io::Result<ModuleCache> {
        std::fs::create_dir_all(dir)?;
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{}.wasm", hex::encode(hash)))
    }

    /// The module's bytes, if the cache holds them intact. A file whose bytes do not hash
    /// to its name is damaged: it is deleted and treated as missing.
    pub(crate) fn get(&self, hash: &ModuleHash) -> Option<Vec<u8>> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        if Sha256::digest(&bytes).as_slice() == hash {
            Some(bytes)
        } else {
            tracing::warn!(path = %path.display(), "damaged module in the cache: deleting it");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Whether the cache holds the module intact.
    pub(crate) fn contains(&self, hash: &ModuleHash) -> bool {
        self.get(hash).is_some()
    }

    /// Whether the cache has a file for the module (not read: a damaged one is found, and
    /// replaced, when the module is used).
    pub(crate) fn holds(&self, hash: &ModuleHash) -> bool {
        self.path(hash).is_file()
    }

    /// Stores bytes already checked to hash to `hash`. Written to a temporary file and
    /// renamed, so a crash never leaves a half-written module under a valid name.
    pub(crate) fn put(&self, hash: &ModuleHash, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(hash);
        let tmp = self.dir.join(format!(".{}.tmp", hex::encode(hash)));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }
}
