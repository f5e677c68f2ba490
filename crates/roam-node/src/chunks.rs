//! The node's chunk store: compressed chunk bodies this node has seen, by hash, so a
//! transfer asks only for chunks it lacks (deltas). Bodies come from workers that arrived
//! here, workers that left (a worker that comes back finds its unchanged chunks), and the
//! initial memory of each cached module (its data segments). The store is bounded in bytes
//! and forgets the oldest bodies first; a body it forgot is simply asked for again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use roam_proto::{ChunkHash, ModuleHash};
use roam_snapshot::{hash_chunk, ChunkBody, DEFAULT_CHUNK_SIZE};

/// Default bound on the bodies kept, in compressed bytes.
pub const DEFAULT_CHUNK_STORE_BYTES: usize = 512 << 20;

/// Compressed chunk bodies by hash, oldest forgotten first.
pub(crate) struct ChunkStore {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    bodies: HashMap<ChunkHash, ChunkBody>,
    /// Insertion order, for eviction.
    order: VecDeque<ChunkHash>,
    bytes: usize,
    /// Modules whose initial memory is in the store.
    modules: HashSet<ModuleHash>,
}

impl ChunkStore {
    /// A store that keeps at most `capacity` bytes of bodies (0 keeps none).
    pub(crate) fn new(capacity: usize) -> ChunkStore {
        ChunkStore {
            inner: Mutex::new(Inner {
                bodies: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                modules: HashSet::new(),
            }),
            capacity,
        }
    }

    /// The body of `hash`, if the store holds it.
    pub(crate) fn get(&self, hash: ChunkHash) -> Option<ChunkBody> {
        self.inner
            .lock()
            .expect("chunk store")
            .bodies
            .get(&hash)
            .cloned()
    }

    /// Keeps `bodies`, forgetting the oldest ones past the capacity.
    pub(crate) fn put<'a>(&self, bodies: impl IntoIterator<Item = &'a ChunkBody>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("chunk store");
        for body in bodies {
            if inner.bodies.contains_key(&body.hash()) {
                continue;
            }
            inner.bytes += body.encoded_len();
            inner.order.push_back(body.hash());
            inner.bodies.insert(body.hash(), body.clone());
        }
        while inner.bytes > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(body) = inner.bodies.remove(&oldest) {
                inner.bytes -= body.encoded_len();
            }
        }
    }

    /// Puts the chunks of a module's initial memory (its active data segments) in the
    /// store, once per module. A worker's memory keeps most of them unchanged, so a
    /// worker of a module this node has cached arrives without them.
    pub(crate) fn put_module(&self, hash: &ModuleHash, wasm: &[u8]) {
        if self.capacity == 0
            || self
                .inner
                .lock()
                .expect("chunk store")
                .modules
                .contains(hash)
        {
            return;
        }
        let bodies = match initial_memory_chunks(wasm) {
            Ok(bodies) => bodies,
            Err(e) => {
                tracing::debug!("no initial-memory chunks for the module: {e}");
                Vec::new()
            }
        };
        self.put(&bodies);
        self.inner
            .lock()
            .expect("chunk store")
            .modules
            .insert(*hash);
    }

    /// Bodies held and their compressed bytes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("chunk store");
        (inner.bodies.len(), inner.bytes)
    }
}

/// The non-zero chunks of the memory a fresh instance of `wasm` starts with: every active
/// data segment of memory 0 with a constant offset, laid out as instantiation would.
fn initial_memory_chunks(wasm: &[u8]) -> Result<Vec<ChunkBody>, String> {
    use wasmparser::{DataKind, Operator, Parser, Payload};

    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let mut image: Vec<u8> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let Payload::DataSection(reader) = payload.map_err(|e| e.to_string())? else {
            continue;
        };
        for data in reader {
            let data = data.map_err(|e| e.to_string())?;
            let DataKind::Active {
                memory_index: 0,
                offset_expr,
            } = data.kind
            else {
                continue;
            };
            let offset = match offset_expr.get_operators_reader().read() {
                Ok(Operator::I32Const { value }) => value as u32 as usize,
                Ok(Operator::I64Const { value }) => value as usize,
                _ => continue,
            };
            let end = offset
                .checked_add(data.data.len())
                .filter(|&end| end <= roam_prepare::DEFAULT_MAX_MODULE_SIZE.max(64 << 20))
                .ok_or("a data segment lies beyond what a node lays out")?;
            if image.len() < end {
                image.resize(end.next_multiple_of(chunk), 0);
            }
            image[offset..end].copy_from_slice(data.data);
        }
    }
    let mut bodies = Vec::new();
    let mut seen = HashSet::new();
    for piece in image.chunks_exact(chunk) {
        if piece.iter().all(|&b| b == 0) || !seen.insert(hash_chunk(piece)) {
            continue;
        }
        bodies.push(ChunkBody::compress(piece).map_err(|e| e.to_string())?);
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fill: u8) -> ChunkBody {
        ChunkBody::compress(&vec![fill; DEFAULT_CHUNK_SIZE as usize]).unwrap()
    }

    #[test]
    fn forgets_the_oldest_bodies_past_its_capacity() {
        let one = body(1).encoded_len();
        let store = ChunkStore::new(2 * one);
        store.put(&[body(1), body(2)]);
        store.put(&[body(3)]);
        assert!(store.get(body(1).hash()).is_none());
        assert!(store.get(body(2).hash()).is_some());
        assert!(store.get(body(3).hash()).is_some());
        assert_eq!(store.len(), (2, 2 * one));
    }

    #[test]
    fn holds_the_chunks_of_a_modules_data_segments() {
        let wasm = wat::parse_str(
            r#"(module (memory 2)
                 (data (i32.const 5000) "hello, roam")
                 (data (i32.const 70000) "second page"))"#,
        )
        .unwrap();
        let store = ChunkStore::new(1 << 20);
        store.put_module(&[7; 32], &wasm);
        let mut page = vec![0u8; DEFAULT_CHUNK_SIZE as usize];
        page[5000 - 4096..5000 - 4096 + 11].copy_from_slice(b"hello, roam");
        assert!(store.get(hash_chunk(&page)).is_some());
        assert_eq!(store.len().0, 2);
    }
}
