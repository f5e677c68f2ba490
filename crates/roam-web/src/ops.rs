//! The operations the SDK calls, by name: modules and snapshots here, connections in
//! `conn`, placement in `plan`.

use roam_snapshot::{Snapshot, State, DEFAULT_CHUNK_SIZE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::json::{
    bytes32_arg, global_from_json, global_to_json, hex, str_arg, table_from_json, table_to_json,
    u32_arg, u64_arg,
};
use crate::store::{Module, Store};

/// The largest memory a snapshot restored in the browser may have: all of wasm32's 4 GiB.
const MAX_MEMORY: u64 = 1 << 32;

/// A call: its arguments (with `op`, the operation's name) and its binary blobs.
pub struct Request<'a> {
    /// A JSON object.
    pub args: Value,
    /// Module bytes, memory, frames, payloads: what each operation says.
    pub blobs: Vec<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// The blob at `index`, or an error naming what it should have been.
    pub fn blob(&self, index: usize, what: &str) -> Result<&'a [u8], String> {
        self.blobs
            .get(index)
            .copied()
            .ok_or_else(|| format!("the call lacks its {what}"))
    }
}

/// What a call returns: a JSON value and binary blobs.
#[derive(Debug, Default)]
pub struct Answer {
    /// A JSON value.
    pub json: Value,
    /// Prepared bytes, memory images, frames, payloads: what each operation says.
    pub blobs: Vec<Vec<u8>>,
}

impl Answer {
    /// An answer with no blobs.
    pub fn json(json: Value) -> Answer {
        Answer {
            json,
            blobs: Vec::new(),
        }
    }
}

/// Runs one call against `store`.
pub fn call(store: &mut Store, request: Request<'_>) -> Result<Answer, String> {
    let op = str_arg(&request.args, "op")?.to_owned();
    match op.as_str() {
        "prepare" => prepare(store, &request),
        "capture" => capture(store, &request),
        "restore" => {
            let id = u32_arg(&request.args, "snapshot")?;
            let snapshot = store
                .snapshots
                .get(&id)
                .ok_or_else(|| format!("no snapshot {id}"))?;
            restore(store, snapshot)
        }
        "drop_snapshot" => {
            store.snapshots.remove(&u32_arg(&request.args, "snapshot")?);
            Ok(Answer::json(Value::Null))
        }
        "open" | "send" | "receive" | "adopt" | "close" => crate::conn::call(store, &op, &request),
        "plan_new" | "plan_feed" | "plan_decide" | "plan_drop" | "calibration" => {
            crate::plan::call(store, &op, &request)
        }
        other => Err(format!("unknown operation `{other}`")),
    }
}

/// `prepare`: blob 0 is a module. Answers the module's hash and layout, and the prepared
/// bytes as blob 0.
fn prepare(store: &mut Store, request: &Request<'_>) -> Result<Answer, String> {
    let bytes = request.blob(0, "module bytes")?;
    if !bytes.starts_with(b"\0asm") {
        return Err(format!(
            "not a WebAssembly module: it starts with {} instead of 00 61 73 6d (\\0asm)",
            hex(&bytes[..bytes.len().min(4)])
        ));
    }
    let prepared = roam_prepare::prepare(bytes).map_err(|e| e.to_string())?;
    let hash: [u8; 32] = Sha256::digest(&prepared.bytes).into();
    let info = &prepared.info;
    let answer = json!({
        "hash": hex(&hash),
        "memory": { "min_pages": info.memory.min_pages, "max_pages": info.memory.max_pages },
        "globals": info.globals.iter().map(|g| json!({ "export": g.export, "type": g.ty.to_string() })).collect::<Vec<_>>(),
        "tables": info.tables.iter().map(|t| json!({ "export": t.export, "min": t.min, "max": t.max })).collect::<Vec<_>>(),
        "table_funcs": info.table_funcs.iter().map(|f| json!({ "index": f.index, "export": f.export })).collect::<Vec<_>>(),
        "has_init": info.has_init,
        "has_initialize": info.has_initialize,
        "wasi_imports": info.wasi_imports,
    });
    let blob = prepared.bytes.clone();
    store
        .modules
        .insert(hash, Module::new(hash, prepared.bytes, prepared.info));
    Ok(Answer {
        json: answer,
        blobs: vec![blob],
    })
}

/// `capture`: the worker's module, globals, tables, `last_seq` and `clock_ns`; blob 0 is
/// its memory. Keeps the snapshot and answers its handle and sizes.
fn capture(store: &mut Store, request: &Request<'_>) -> Result<Answer, String> {
    let args = &request.args;
    let module_hash = bytes32_arg(args, "module")?;
    let module = store.module(&module_hash)?;
    let globals = list(args, "globals")?
        .iter()
        .enumerate()
        .map(|(i, g)| global_from_json(i, g))
        .collect::<Result<Vec<_>, _>>()?;
    let tables = list(args, "tables")?
        .iter()
        .enumerate()
        .map(|(i, t)| table_from_json(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    if globals.len() != module.info.globals.len() || tables.len() != module.info.tables.len() {
        return Err(format!(
            "the module has {} mutable globals and {} tables; the capture gave {} and {}",
            module.info.globals.len(),
            module.info.tables.len(),
            globals.len(),
            tables.len()
        ));
    }
    let state = State {
        module_hash,
        globals,
        tables,
        last_seq: u64_arg(args, "last_seq")?,
        clock_ns: u64_arg(args, "clock_ns")?,
    };
    let memory = request.blob(0, "memory")?;
    let snapshot =
        Snapshot::capture(memory, DEFAULT_CHUNK_SIZE, state).map_err(|e| e.to_string())?;
    let body_bytes: usize = snapshot.bodies().iter().map(|b| b.encoded_len()).sum();
    let answer = json!({
        "memory_bytes": memory.len(),
        "chunks": snapshot.manifest.chunks.len(),
        "bodies": snapshot.bodies().len(),
        "manifest_bytes": snapshot.manifest.encoded_len(),
        "body_bytes": body_bytes,
    });
    let id = store.handle();
    store.snapshots.insert(id, snapshot);
    let mut answer = answer;
    answer["snapshot"] = json!(id);
    Ok(Answer::json(answer))
}

fn list<'v>(args: &'v Value, name: &str) -> Result<&'v Vec<Value>, String> {
    crate::json::field(args, name)?
        .as_array()
        .ok_or_else(|| format!("`{name}` must be a list"))
}

/// Checks `snapshot` against its module and answers the state to restore: globals,
/// tables, `last_seq`, `clock_ns` and `memory_size`, with the whole memory image as blob 0.
pub(crate) fn restore(store: &Store, snapshot: &Snapshot) -> Result<Answer, String> {
    let manifest = &snapshot.manifest;
    let module = store.module(&manifest.module_hash)?;
    snapshot
        .check_against(&module.layout, MAX_MEMORY)
        .map_err(|e| format!("the snapshot does not fit the module: {e}"))?;
    let size = usize::try_from(manifest.memory_size)
        .map_err(|_| "the snapshot's memory does not fit in this address space".to_string())?;
    // A zeroed image with no possibly-non-zero ranges: every chunk is written, every zero
    // chunk stays zero, so the image is the whole memory as captured.
    let mut image = vec![0u8; size];
    snapshot
        .restore_memory(&mut image, &[])
        .map_err(|e| format!("the snapshot's memory cannot be restored: {e}"))?;
    Ok(Answer {
        json: json!({
            "memory_size": manifest.memory_size,
            "globals": manifest.globals.iter().map(global_to_json).collect::<Vec<_>>(),
            "tables": manifest.tables.iter().map(table_to_json).collect::<Vec<_>>(),
            "last_seq": manifest.last_seq,
            "clock_ns": manifest.clock_ns,
        }),
        blobs: vec![image],
    })
}
