//! Prepares a WebAssembly module to run as a Roam worker.
//!
//! Roam moves a running worker between a device, edge servers and the cloud
//! by capturing its state — linear memory, mutable globals, tables — between
//! two messages and restoring it elsewhere. A host can only read state the
//! module exports, so before a worker runs anywhere, [`prepare`]:
//!
//! 1. validates the module (a core module, with the wasm features wasmtime
//!    enables by default);
//! 2. checks the worker contract, ABI v1: it exports `memory`,
//!    `roam_alloc: (i32) -> i32` and `roam_on_message: (i32, i32) -> ()`,
//!    perhaps `roam_init: () -> ()`, and imports nothing but
//!    `roam.post_message: (i32, i32) -> ()` and a fixed list of
//!    `wasi_snapshot_preview1` functions ([`ALLOWED_WASI_IMPORTS`]);
//! 3. rewrites it to export every mutable global as `__roam_global_{index}`,
//!    every table as `__roam_table_{index}` and every function that can sit
//!    in a table as `__roam_func_{index}`, and marks it with a `roam-prepared`
//!    custom section holding [`PREPARE_VERSION`].
//!
//! Everything else is copied byte for byte, and preparing is idempotent:
//! preparing a prepared module returns the same bytes. So the hash of the
//! prepared bytes identifies a worker whichever form it was loaded from.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wasm = wat::parse_str(
//!     r#"(module
//!         (import "roam" "post_message" (func $post (param i32 i32)))
//!         (memory (export "memory") 1)
//!         (global $count (mut i32) (i32.const 0))
//!         (func (export "roam_alloc") (param i32) (result i32) i32.const 1024)
//!         (func (export "roam_on_message") (param i32 i32)
//!             (global.set $count (i32.add (global.get $count) (i32.const 1)))
//!             (call $post (local.get 0) (local.get 1)))
//!     )"#,
//! )?;
//!
//! let prepared = roam_prepare::prepare(&wasm)?;
//!
//! // The counter's state is now reachable by name.
//! assert_eq!(prepared.info.globals[0].export, "__roam_global_0");
//! assert_eq!(prepared.info.memory.min_pages, 1);
//!
//! // Preparing again changes nothing.
//! assert_eq!(roam_prepare::prepare(&prepared.bytes)?.bytes, prepared.bytes);
//!
//! // A module outside the contract is refused, and the error says why.
//! let wasm = wat::parse_str(r#"(module (import "env" "now" (func)))"#)?;
//! let error = roam_prepare::prepare(&wasm).unwrap_err();
//! assert!(matches!(error, roam_prepare::PrepareError::ImportNotAllowed { .. }));
//! assert!(error.to_string().starts_with("import `env.now` is not allowed"));
//! # Ok(())
//! # }
//! ```
//!
//! The crate does no I/O and starts no threads, so the browser runs the same
//! code compiled to wasm.

#![deny(missing_docs)]

mod analyze;
mod contract;
mod error;
mod info;
mod rewrite;

pub use contract::ALLOWED_WASI_IMPORTS;
pub use error::PrepareError;
pub use info::{FuncExport, GlobalInfo, GlobalType, MemoryInfo, ModuleInfo, TableInfo};

/// The version of the prepared form, stored little-endian as a `u32` in the
/// `roam-prepared` custom section. It changes whenever the rewrite does.
pub const PREPARE_VERSION: u32 = 1;

/// The name of the custom section that marks a prepared module.
pub const PREPARED_SECTION: &str = "roam-prepared";

/// The largest module [`prepare`] accepts unless told otherwise: 256 MiB.
pub const DEFAULT_MAX_MODULE_SIZE: usize = 256 << 20;

/// A worker module ready to run: the rewritten bytes and what a host needs to
/// know about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The prepared module.
    pub bytes: Vec<u8>,
    /// Its memory, state and data layout.
    pub info: ModuleInfo,
}

/// Limits on what [`prepare_with`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// The largest module accepted, in bytes. Defaults to
    /// [`DEFAULT_MAX_MODULE_SIZE`].
    pub max_module_size: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
        }
    }
}

/// Checks `bytes` against the worker contract and rewrites it so that all of
/// its state is exported, with the default [`PrepareOptions`].
pub fn prepare(bytes: &[u8]) -> Result<Prepared, PrepareError> {
    prepare_with(bytes, &PrepareOptions::default())
}

/// Like [`prepare`], with explicit limits.
pub fn prepare_with(bytes: &[u8], options: &PrepareOptions) -> Result<Prepared, PrepareError> {
    let analysis = analyze::analyze(bytes, options)?;
    let bytes = rewrite::rewrite(&analysis)?;
    Ok(Prepared {
        bytes,
        info: analysis.info,
    })
}

/// Checks `bytes` against the worker contract and describes it, without
/// rewriting it. The result is the same for a module and its prepared form.
pub fn module_info(bytes: &[u8]) -> Result<ModuleInfo, PrepareError> {
    analyze::analyze(bytes, &PrepareOptions::default()).map(|analysis| analysis.info)
}
