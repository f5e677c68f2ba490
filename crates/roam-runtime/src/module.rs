//! The runtime (one wasmtime engine, its epoch clock and its linker) and loaded modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use roam_prepare::ModuleInfo;
use roam_snapshot::{
    ChunkBody, ChunkHash, Layout, Manifest, MemoryLimits, ModuleHash, Snapshot, TableLimits,
    ValType,
};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::error::{LoadError, PostCopyRestoreError, RestoreError, RuntimeError, StartError};
use crate::host::{define_imports, Host};
use crate::postcopy::Pager;
use crate::worker::Worker;
use crate::RuntimeConfig;

/// A wasmtime engine set up for workers. Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub engine: Engine,
    pub linker: Linker<Host>,
    pub config: RuntimeConfig,
    /// Modules loaded by this runtime, by hash, so loading the same bytes twice compiles once.
    loaded: Mutex<HashMap<ModuleHash, Weak<WorkerModule>>>,
    ticker: Option<EpochTicker>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

/// Advances the engine's epoch at a fixed interval so a running worker can be interrupted
/// when its time per call runs out.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: std::time::Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("roam-epoch".into())
            .spawn({
                let engine = engine.weak();
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                }
            })?;
        Ok(EpochTicker { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

impl Runtime {
    /// Creates a runtime with its own engine.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let mut wasm_config = Config::new();
        wasm_config
            .epoch_interruption(true)
            // The same bits on every node, whatever its CPU: a worker's state must not depend
            // on where it ran.
            .cranelift_nan_canonicalization(true);
        crate::postcopy::configure(&mut wasm_config);
        let engine = Engine::new(&wasm_config).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        let ticker = EpochTicker::start(&engine, config.epoch_tick)
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Runtime {
            shared: Arc::new(Shared {
                engine,
                linker,
                config,
                loaded: Mutex::new(HashMap::new()),
                ticker: Some(ticker),
            }),
        })
    }

    /// The settings this runtime was created with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Loads a worker module: checks the worker contract, prepares it (unless it already
    /// is), and compiles it — or takes the compiled artifact from the cache directory.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<WorkerModule>, LoadError> {
        let prepared = roam_prepare::prepare(bytes)?;
        let hash: ModuleHash = Sha256::digest(&prepared.bytes).into();
        if let Some(module) = self.loaded(&hash) {
            return Ok(module);
        }
        let module = self.compile(&hash, &prepared.bytes)?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let layout = layout_of(&hash, &prepared.info);
        let module = Arc::new(WorkerModule {
            hash,
            bytes: prepared.bytes.into(),
            info: prepared.info,
            layout,
            pre,
        });
        self.shared
            .loaded
            .lock()
            .expect("module table lock")
            .insert(hash, Arc::downgrade(&module));
        Ok(module)
    }

    fn loaded(&self, hash: &ModuleHash) -> Option<Arc<WorkerModule>> {
        let mut loaded = self.shared.loaded.lock().expect("module table lock");
        loaded.retain(|_, m| m.strong_count() > 0);
        loaded.get(hash).and_then(Weak::upgrade)
    }

    fn compile(&self, hash: &ModuleHash, prepared: &[u8]) -> Result<Module, LoadError> {
        let engine = &self.shared.engine;
        let Some(dir) = &self.shared.config.cache_dir else {
            return Module::new(engine, prepared).map_err(|e| LoadError::Compile(e.to_string()));
        };
        let path = artifact_path(dir, hash, engine);
        if let Some(module) = read_artifact(engine, &path) {
            return Ok(module);
        }
        let module =
            Module::new(engine, prepared).map_err(|e| LoadError::Compile(e.to_string()))?;
        match module.serialize() {
            Ok(artifact) => write_artifact(&path, &artifact),
            Err(e) => tracing::warn!("cannot serialize compiled module: {e}"),
        }
        Ok(module)
    }

    /// Starts a new worker: instantiates it and runs `_initialize` and `roam_init` if the
    /// module has them.
    pub fn start(&self, module: &Arc<WorkerModule>) -> Result<Worker, StartError> {
        Worker::start(self.clone(), module.clone())
    }

    /// Restores a worker from a snapshot into a fresh instance. The snapshot is checked
    /// against the module before anything of it is used; the module's init functions do not
    /// run again.
    pub fn restore(
        &self,
        module: &Arc<WorkerModule>,
        snapshot: &Snapshot,
    ) -> Result<Worker, RestoreError> {
        Worker::restore(self.clone(), module.clone(), snapshot)
    }

    /// Restores a worker *post-copy*: it can run before all of its memory has arrived.
    ///
    /// `manifest` is the snapshot's manifest, `hot` the chunk bodies already at hand (any
    /// subset; bodies the manifest does not name are ignored). The worker's globals, tables
    /// and hot chunks are restored now. When the worker touches a chunk whose body has not
    /// been supplied, it blocks, and `fetch` is called with the chunk's hash — once per
    /// content, from the runtime's fault thread: it should pass the request on (to the source,
    /// on a priority lane) and return without blocking. Every body that arrives goes to
    /// [`Pager::supply`] on the returned pager. Zero chunks, and memory the worker grows
    /// beyond the snapshot's size, read as zero without asking.
    ///
    /// If the source goes away before every chunk has arrived, call [`Pager::abandon`]: the
    /// worker then fails with [`Failure::StateLost`](crate::Failure::StateLost) rather than
    /// run on with memory that is not its own. Needs userfaultfd ([`post_copy_available`](crate::post_copy_available)).
    pub fn restore_post_copy(
        &self,
        module: &Arc<WorkerModule>,
        manifest: &Manifest,
        hot: &[ChunkBody],
        fetch: impl Fn(ChunkHash) + Send + Sync + 'static,
    ) -> Result<(Worker, Pager), PostCopyRestoreError> {
        Worker::restore_post_copy(self.clone(), module.clone(), manifest, hot, Arc::new(fetch))
    }

    /// Decodes snapshot bytes with this runtime's limits.
    pub fn decode_snapshot(&self, bytes: &[u8]) -> Result<Snapshot, RestoreError> {
        let limits = roam_snapshot::DecodeLimits {
            max_memory_size: self.shared.config.limits.max_memory,
            ..roam_snapshot::DecodeLimits::default()
        };
        Ok(Snapshot::decode(bytes, &limits)?)
    }
}

/// A loaded, prepared and compiled worker module, ready to start or restore workers.
pub struct WorkerModule {
    hash: ModuleHash,
    bytes: Arc<[u8]>,
    info: ModuleInfo,
    layout: Layout,
    pub(crate) pre: InstancePre<Host>,
}

impl WorkerModule {
    /// The module's identity: sha-256 of its prepared bytes. Snapshots carry it.
    pub fn hash(&self) -> &ModuleHash {
        &self.hash
    }

    /// The prepared module bytes (what a node receives when the module moves).
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// What preparing the module found out about it.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// What a snapshot of this module may contain.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

fn layout_of(hash: &ModuleHash, info: &ModuleInfo) -> Layout {
    Layout {
        module_hash: *hash,
        globals: info
            .globals
            .iter()
            .map(|g| match g.ty {
                roam_prepare::GlobalType::I32 => ValType::I32,
                roam_prepare::GlobalType::I64 => ValType::I64,
                roam_prepare::GlobalType::F32 => ValType::F32,
                roam_prepare::GlobalType::F64 => ValType::F64,
                roam_prepare::GlobalType::V128 => ValType::V128,
                roam_prepare::GlobalType::FuncRef => ValType::FuncRef,
            })
            .collect(),
        tables: info
            .tables
            .iter()
            .map(|t| TableLimits {
                min: t.min,
                max: t.max,
            })
            .collect(),
        memory: MemoryLimits {
            min_pages: info.memory.min_pages,
            max_pages: info.memory.max_pages,
        },
        func_count: info.func_count,
    }
}

/// Compiled artifacts are named by module hash and by the engine's compatibility hash, so
/// an artifact is only ever loaded into an engine that can run it.
fn artifact_path(dir: &Path, hash: &ModuleHash, engine: &Engine) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let module: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{module}-{:016x}.cwasm", h.finish()))
}

/// Artifact files end with the xxh3-64 of what precedes it, so a torn or damaged file is
/// recompiled instead of being handed to wasmtime.
fn read_artifact(engine: &Engine, path: &Path) -> Option<Module> {
    let file = std::fs::read(path).ok()?;
    let (artifact, sum) = file.split_at_checked(file.len().checked_sub(8)?)?;
    if xxhash_rust::xxh3::xxh3_64(artifact).to_le_bytes() != sum {
        tracing::warn!(path = %path.display(), "damaged compiled module in the cache, recompiling");
        return None;
    }
    // SAFETY: the file was written by `write_artifact` from `Module::serialize` of an engine
    // with the same compatibility hash (it is part of the name) and its checksum matches, so
    // it is an artifact wasmtime produced; the cache directory belongs to this runtime's
    // operator, who must not let others write to it (docs/operations.md).
    match unsafe { Module::deserialize(engine, artifact) } {
        Ok(module) => Some(module),
        Err(e) => {
            tracing::warn!(path = %path.display(), "unusable compiled module in the cache ({e}), recompiling");
            None
        }
    }
}

fn write_artifact(path: &Path, artifact: &[u8]) {
    let mut file = Vec::with_capacity(artifact.len() + 8);
    file.extend_from_slice(artifact);
    file.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(artifact).to_le_bytes());
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = std::fs::write(&tmp, &file).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), "cannot write compiled module to the cache: {e}");
    }
}
