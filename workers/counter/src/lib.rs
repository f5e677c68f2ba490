//! The counter worker: the smallest worker with state worth moving, and the one the
//! message-rate benchmark drives.
//!
//! Every message, whatever its bytes, gets a 16-byte reply: the number of messages seen so
//! far including this one (u64, little-endian), then the FNV-1a 64-bit hash of all the
//! bytes of all messages so far, in order (u64, little-endian). A client that keeps its own
//! tally can tell from any single reply whether a message was lost or handled twice, even
//! across a move.

use roam_worker::{post_message, Worker};

/// FNV-1a 64 offset basis: the hash of no bytes.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds `bytes` into the running FNV-1a hash `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The worker state: the message count and the running hash.
pub struct Counter {
    count: u64,
    hash: u64,
}

impl Counter {
    /// The reply describing the state after the latest message.
    fn reply(&self) -> [u8; 16] {
        let mut reply = [0; 16];
        reply[..8].copy_from_slice(&self.count.to_le_bytes());
        reply[8..].copy_from_slice(&self.hash.to_le_bytes());
        reply
    }
}

impl Worker for Counter {
    fn init() -> Self {
        Counter {
            count: 0,
            hash: FNV_OFFSET,
        }
    }

    fn on_message(&mut self, message: &[u8]) {
        self.count += 1;
        self.hash = fnv1a(self.hash, message);
        post_message(&self.reply());
    }
}

roam_worker::export_worker!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use roam_worker::take_posted;

    fn decode(reply: &[u8]) -> (u64, u64) {
        assert_eq!(reply.len(), 16);
        (
            u64::from_le_bytes(reply[..8].try_into().unwrap()),
            u64::from_le_bytes(reply[8..].try_into().unwrap()),
        )
    }

    #[test]
    fn hash_matches_published_fnv1a_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn replies_count_messages_and_hash_all_bytes_so_far() {
        let mut counter = Counter::init();
        counter.on_message(b"foo");
        counter.on_message(b"");
        counter.on_message(b"bar");
        let replies: Vec<_> = take_posted().iter().map(|r| decode(r)).collect();
        assert_eq!(
            replies,
            vec![
                (1, fnv1a(FNV_OFFSET, b"foo")),
                (2, fnv1a(FNV_OFFSET, b"foo")),
                (3, fnv1a(FNV_OFFSET, b"foobar")),
            ]
        );
    }

    #[test]
    fn splitting_the_stream_differently_changes_only_the_count() {
        let mut one = Counter::init();
        one.on_message(b"foobar");
        let mut two = Counter::init();
        two.on_message(b"foo");
        two.on_message(b"bar");
        let posted = take_posted();
        assert_eq!(decode(&posted[0]).1, decode(&posted[2]).1);
        assert_eq!(decode(&posted[2]).0, 2);
    }
}
