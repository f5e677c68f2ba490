//! The worker contract, ABI v1: which exports a worker must provide, which
//! imports it may ask for, and the signatures of both.
//!
//! Everything a host has to implement for a worker is listed here, so a
//! module that passes these checks can be run by any Roam node or browser.

use std::fmt::Write as _;

use wasmparser::{FuncType, ValType};

const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

/// A function signature of the contract.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signature {
    pub params: &'static [ValType],
    pub results: &'static [ValType],
}

impl Signature {
    const fn new(params: &'static [ValType], results: &'static [ValType]) -> Self {
        Signature { params, results }
    }

    pub(crate) fn matches(&self, ty: &FuncType) -> bool {
        ty.params() == self.params && ty.results() == self.results
    }

    pub(crate) fn describe(&self) -> String {
        describe_signature(self.params, self.results)
    }
}

/// Renders a function type the way error messages show it: `func (i32, i32) -> i32`.
pub(crate) fn describe_func(ty: &FuncType) -> String {
    describe_signature(ty.params(), ty.results())
}

fn describe_signature(params: &[ValType], results: &[ValType]) -> String {
    let mut out = String::from("func (");
    push_list(&mut out, params);
    out.push_str(") -> ");
    match results {
        [single] => {
            let _ = write!(out, "{single}");
        }
        _ => {
            out.push('(');
            push_list(&mut out, results);
            out.push(')');
        }
    }
    out
}

fn push_list(out: &mut String, types: &[ValType]) {
    for (i, ty) in types.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{ty}");
    }
}

/// The name under which a worker exports its one memory.
pub(crate) const MEMORY_EXPORT: &str = "memory";

/// The exported function the host calls to get a buffer for a message.
pub(crate) const ALLOC_EXPORT: (&str, Signature) = ("roam_alloc", Signature::new(&[I32], &[I32]));

/// The exported function the host calls with each message.
pub(crate) const ON_MESSAGE_EXPORT: (&str, Signature) =
    ("roam_on_message", Signature::new(&[I32, I32], &[]));

/// The optional exported function called once on a worker's first start.
pub(crate) const INIT_EXPORT: (&str, Signature) = ("roam_init", Signature::new(&[], &[]));

/// The optional WASI reactor initialiser, called before `roam_init`.
pub(crate) const INITIALIZE_EXPORT: (&str, Signature) = ("_initialize", Signature::new(&[], &[]));

/// The module of the host's own import.
pub(crate) const ROAM_MODULE: &str = "roam";

/// The host function a worker calls to send a message back.
pub(crate) const POST_MESSAGE_IMPORT: (&str, Signature) =
    ("post_message", Signature::new(&[I32, I32], &[]));

/// The module name of the WASI preview 1 imports.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The WASI preview 1 functions a worker may import, with their core wasm
/// signatures (pointers and sizes are i32, timestamps, file offsets i64, every
/// function but `proc_exit` returns an errno).
pub(crate) const WASI_FUNCTIONS: [(&str, Signature); 19] = [
    ("fd_write", Signature::new(&[I32, I32, I32, I32], &[I32])),
    ("fd_read", Signature::new(&[I32, I32, I32, I32], &[I32])),
    ("fd_close", Signature::new(&[I32], &[I32])),
    ("fd_seek", Signature::new(&[I32, I64, I32, I32], &[I32])),
    ("fd_fdstat_get", Signature::new(&[I32, I32], &[I32])),
    ("fd_fdstat_set_flags", Signature::new(&[I32, I32], &[I32])),
    ("fd_filestat_get", Signature::new(&[I32, I32], &[I32])),
    ("fd_prestat_get", Signature::new(&[I32, I32], &[I32])),
    (
        "fd_prestat_dir_name",
        Signature::new(&[I32, I32, I32], &[I32]),
    ),
    ("fd_sync", Signature::new(&[I32], &[I32])),
    ("clock_time_get", Signature::new(&[I32, I64, I32], &[I32])),
    ("clock_res_get", Signature::new(&[I32, I32], &[I32])),
    ("random_get", Signature::new(&[I32, I32], &[I32])),
    ("proc_exit", Signature::new(&[I32], &[])),
    ("sched_yield", Signature::new(&[], &[I32])),
    ("args_get", Signature::new(&[I32, I32], &[I32])),
    ("args_sizes_get", Signature::new(&[I32, I32], &[I32])),
    ("environ_get", Signature::new(&[I32, I32], &[I32])),
    ("environ_sizes_get", Signature::new(&[I32, I32], &[I32])),
];

/// The `wasi_snapshot_preview1` functions a worker may import (ABI v1), in
/// the order the contract lists them. A host must provide all of them.
pub const ALLOWED_WASI_IMPORTS: [&str; 19] = {
    let mut names = [""; 19];
    let mut i = 0;
    while i < WASI_FUNCTIONS.len() {
        names[i] = WASI_FUNCTIONS[i].0;
        i += 1;
    }
    names
};

/// The signature an import must have, or `None` if the contract does not allow it.
pub(crate) fn allowed_import(module: &str, name: &str) -> Option<Signature> {
    match module {
        ROAM_MODULE if name == POST_MESSAGE_IMPORT.0 => Some(POST_MESSAGE_IMPORT.1),
        WASI_MODULE => WASI_FUNCTIONS
            .iter()
            .find(|(wasi_name, _)| *wasi_name == name)
            .map(|(_, signature)| *signature),
        _ => None,
    }
}

/// The comma-separated list of WASI functions, for error messages.
pub(crate) fn allowed_wasi_list() -> String {
    ALLOWED_WASI_IMPORTS.join(", ")
}
