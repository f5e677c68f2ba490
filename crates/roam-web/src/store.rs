//! What the browser core keeps between calls: the prepared modules, the snapshots taken,
//! the open connections and the placement planners, each under a small handle the SDK passes back.

use std::collections::HashMap;

use roam_prepare::ModuleInfo;
use roam_snapshot::{Layout, MemoryLimits, ModuleHash, Snapshot, TableLimits, ValType};

use crate::conn::Conn;
use crate::plan::Plan;

/// A prepared module: its bytes, what capture and restore need to know about it, and the
/// layout a snapshot is checked against before it is restored.
pub struct Module {
    /// The prepared bytes (what a node receives when the module moves).
    pub bytes: Vec<u8>,
    /// The state the module exports, and where.
    pub info: ModuleInfo,
    /// What a snapshot of it must fit.
    pub layout: Layout,
}

impl Module {
    /// Remembers a prepared module whose sha-256 is `hash`.
    pub fn new(hash: ModuleHash, bytes: Vec<u8>, info: ModuleInfo) -> Module {
        let layout = Layout {
            module_hash: hash,
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
        };
        Module {
            bytes,
            info,
            layout,
        }
    }
}

/// Everything the browser core holds.
#[derive(Default)]
pub struct Store {
    /// Prepared modules by hash.
    pub modules: HashMap<ModuleHash, Module>,
    /// Snapshots by handle.
    pub snapshots: HashMap<u32, Snapshot>,
    /// Connections by handle.
    pub conns: HashMap<u32, Conn>,
    /// Placement planners by handle.
    pub plans: HashMap<u32, Plan>,
    next_handle: u32,
}

impl Store {
    /// A handle not used before.
    pub fn handle(&mut self) -> u32 {
        self.next_handle += 1;
        self.next_handle
    }

    /// The prepared module `hash`, or an error saying it was never prepared here.
    pub fn module(&self, hash: &ModuleHash) -> Result<&Module, String> {
        self.modules.get(hash).ok_or_else(|| {
            format!(
                "module {} was not prepared here",
                crate::json::hex(&hash[..8])
            )
        })
    }
}
