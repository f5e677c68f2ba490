//! Move tokens: a node accepts a worker's state from another node only with a token that
//! a node of the same cluster signed for exactly that worker, that destination, and a
//! short time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::WorkerId;
use crate::wire::{PutLe, Reader};
use crate::{DecodeFrameError, TokenError};

type HmacSha256 = Hmac<Sha256>;

/// Separates this MAC from any other use of the cluster key.
const DOMAIN: &[u8] = b"roam-move-token-v1";

/// Permission for one move of one worker to one destination, until a deadline.
///
/// The source node issues it with the cluster key that all nodes share; the destination
/// verifies it with the same key before it accepts the state.
///
/// ```
/// use roam_proto::{MoveToken, TokenError};
///
/// let key = b"a cluster key shared by every node";
/// let token = MoveToken::issue(key, 7, "ws://edge-a:7000", "ws://edge-b:7000", 60_000);
/// assert_eq!(token.verify(key, 7, "ws://edge-b:7000", 1_000), Ok(()));
/// assert!(matches!(
///     token.verify(key, 7, "ws://edge-b:7000", 60_000),
///     Err(TokenError::Expired { .. })
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoveToken {
    /// The worker that may move.
    pub worker: WorkerId,
    /// The URL of the node that issued the token and sends the state.
    pub source: String,
    /// The URL of the node that may accept the state.
    pub destination: String,
    /// The token is valid before this instant, in milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// HMAC-SHA256 with the cluster key over the other fields.
    pub mac: [u8; 32],
}

impl MoveToken {
    /// Signs a token for moving `worker` from `source` to `destination` until
    /// `expires_unix_ms`.
    ///
    /// URLs longer than [`MAX_STRING_LEN`](crate::MAX_STRING_LEN) are cut as the wire cuts
    /// them, so the token verifies after it travels.
    pub fn issue(
        key: &[u8],
        worker: WorkerId,
        source: &str,
        destination: &str,
        expires_unix_ms: u64,
    ) -> MoveToken {
        let source = crate::wire::truncate(source).to_owned();
        let destination = crate::wire::truncate(destination).to_owned();
        let mut token = MoveToken {
            worker,
            source,
            destination,
            expires_unix_ms,
            mac: [0; 32],
        };
        token.mac = token.keyed_mac(key).finalize().into_bytes().into();
        token
    }

    /// Checks that the token was signed with `key` (in constant time), and that it lets
    /// `worker` move to `destination` at `now_unix_ms`.
    ///
    /// The signature is checked first, so a forged token learns nothing from the other
    /// checks.
    pub fn verify(
        &self,
        key: &[u8],
        worker: WorkerId,
        destination: &str,
        now_unix_ms: u64,
    ) -> Result<(), TokenError> {
        self.keyed_mac(key)
            .verify_slice(&self.mac)
            .map_err(|_| TokenError::BadMac)?;
        if self.worker != worker {
            return Err(TokenError::WrongWorker {
                expected: worker,
                found: self.worker,
            });
        }
        if self.destination != destination {
            return Err(TokenError::WrongDestination {
                expected: destination.to_owned(),
                found: self.destination.clone(),
            });
        }
        if now_unix_ms >= self.expires_unix_ms {
            return Err(TokenError::Expired {
                expires_unix_ms: self.expires_unix_ms,
                now_unix_ms,
            });
        }
        Ok(())
    }

    /// The MAC state after the domain prefix and the canonical encoding of every field
    /// but the MAC. Strings are length-prefixed, so no two tokens share an encoding.
    fn keyed_mac(&self, key: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length (longer ones are hashed), so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
        let mut fields = Vec::with_capacity(
            DOMAIN.len() + 16 + 4 + 8 + self.source.len() + self.destination.len(),
        );
        fields.extend_from_slice(DOMAIN);
        fields.put_u128(self.worker);
        fields.put_str(&self.source);
        fields.put_str(&self.destination);
        fields.put_u64(self.expires_unix_ms);
        mac.update(&fields);
        mac
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u128(self.worker);
        out.put_str(&self.source);
        out.put_str(&self.destination);
        out.put_u64(self.expires_unix_ms);
        out.extend_from_slice(&self.mac);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<MoveToken, DecodeFrameError> {
        Ok(MoveToken {
            worker: r.u128()?,
            source: r.string("token source")?,
            destination: r.string("token destination")?,
            expires_unix_ms: r.u64()?,
            mac: r.bytes32()?,
        })
    }
}
