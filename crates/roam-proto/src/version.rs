//! Protocol versions and their negotiation. The protocol is versioned apart from the
//! snapshot format: a new frame or field bumps this version, a new snapshot layout does not.

use crate::NegotiateVersionError;

/// The protocol version this crate speaks best.
pub const PROTOCOL_VERSION: u16 = 8;

/// The oldest protocol version this crate still speaks. Nodes keep speaking version 1 for
/// the browser SDK, which has no pre-copy (2) or checkpoints (3) yet, and so accept their
/// peers of earlier releases while they upgrade.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The version a node answers a Hello with: the highest version in both the peer's range
/// `peer_min..=peer_max` and this side's [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`].
///
/// ```
/// use roam_proto::{negotiate, NegotiateVersionError, PROTOCOL_VERSION};
///
/// assert_eq!(negotiate(1, 99), Ok(PROTOCOL_VERSION));
/// assert!(matches!(negotiate(99, 99), Err(NegotiateVersionError::NoCommonVersion { .. })));
/// ```
pub fn negotiate(peer_min: u16, peer_max: u16) -> Result<u16, NegotiateVersionError> {
    if peer_min > peer_max {
        return Err(NegotiateVersionError::EmptyRange { peer_min, peer_max });
    }
    let highest = peer_max.min(PROTOCOL_VERSION);
    if highest < peer_min.max(MIN_PROTOCOL_VERSION) {
        return Err(NegotiateVersionError::NoCommonVersion {
            peer_min,
            peer_max,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    Ok(highest)
}
