//! Move tokens let exactly one worker move to exactly one destination, for a while, and
//! only when signed with the cluster key.

use roam_proto::{Frame, FrameLimits, MoveToken, TokenError};

const KEY: &[u8] = b"the cluster key every node of this cluster shares";
const WORKER: u128 = 0x1234_5678_9abc_def0_1122_3344_5566_7788;
const SOURCE: &str = "ws://edge-a:7000";
const DEST: &str = "ws://edge-b:7000";
const EXPIRES: u64 = 1_700_000_060_000;
const NOW: u64 = 1_700_000_000_000;

fn token() -> MoveToken {
    MoveToken::issue(KEY, WORKER, SOURCE, DEST, EXPIRES)
}

#[test]
fn a_good_token_verifies_after_it_travels() {
    let frame = Frame::StateBegin {
        worker: WORKER,
        module_hash: [1; 32],
        module_len: 10,
        owner: [2; 32],
        token: Some(token()),
        manifest: vec![3; 40],
    };
    let decoded = Frame::decode(&frame.encode(), &FrameLimits::default()).unwrap();
    let Frame::StateBegin {
        token: Some(token), ..
    } = decoded
    else {
        panic!("{decoded:?}")
    };
    assert_eq!(token.verify(KEY, WORKER, DEST, NOW), Ok(()));
    assert_eq!(token.verify(KEY, WORKER, DEST, EXPIRES - 1), Ok(()));
}

#[test]
fn a_forged_mac_is_refused() {
    let mut forged = token();
    forged.mac[0] ^= 1;
    assert_eq!(
        forged.verify(KEY, WORKER, DEST, NOW),
        Err(TokenError::BadMac)
    );
    forged.mac = [0; 32];
    assert_eq!(
        forged.verify(KEY, WORKER, DEST, NOW),
        Err(TokenError::BadMac)
    );
}

#[test]
fn altered_fields_break_the_mac() {
    let mut longer = token();
    longer.expires_unix_ms += 1_000_000;
    assert_eq!(
        longer.verify(KEY, WORKER, DEST, NOW),
        Err(TokenError::BadMac)
    );
    let mut elsewhere = token();
    elsewhere.destination = "ws://attacker:7000".into();
    assert_eq!(
        elsewhere.verify(KEY, WORKER, "ws://attacker:7000", NOW),
        Err(TokenError::BadMac)
    );
    let mut other = token();
    other.worker = 1;
    assert_eq!(other.verify(KEY, 1, DEST, NOW), Err(TokenError::BadMac));
    // Moving a byte between source and destination changes the canonical encoding.
    let shifted = MoveToken::issue(KEY, WORKER, "ws://a", "b", EXPIRES);
    let mut moved = shifted.clone();
    moved.source = "ws://".into();
    moved.destination = "ab".into();
    assert_eq!(
        moved.verify(KEY, WORKER, "ab", NOW),
        Err(TokenError::BadMac)
    );
}

#[test]
fn a_token_for_another_worker_is_refused() {
    assert_eq!(
        token().verify(KEY, WORKER + 1, DEST, NOW),
        Err(TokenError::WrongWorker {
            expected: WORKER + 1,
            found: WORKER
        })
    );
}

#[test]
fn a_token_for_another_destination_is_refused() {
    let err = token()
        .verify(KEY, WORKER, "ws://edge-c:7000", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::WrongDestination {
            expected: "ws://edge-c:7000".into(),
            found: DEST.into()
        }
    );
    assert!(err.to_string().contains("ws://edge-b:7000"));
}

#[test]
fn an_expired_token_is_refused() {
    assert_eq!(
        token().verify(KEY, WORKER, DEST, EXPIRES),
        Err(TokenError::Expired {
            expires_unix_ms: EXPIRES,
            now_unix_ms: EXPIRES
        })
    );
    assert!(token().verify(KEY, WORKER, DEST, u64::MAX).is_err());
}

#[test]
fn a_token_signed_with_another_key_is_refused() {
    assert_eq!(
        token().verify(b"another cluster's key", WORKER, DEST, NOW),
        Err(TokenError::BadMac)
    );
    let empty_key = MoveToken::issue(b"", WORKER, SOURCE, DEST, EXPIRES);
    assert_eq!(empty_key.verify(b"", WORKER, DEST, NOW), Ok(()));
    assert_eq!(
        empty_key.verify(KEY, WORKER, DEST, NOW),
        Err(TokenError::BadMac)
    );
}

#[test]
fn issuing_is_deterministic() {
    assert_eq!(token(), token());
    assert_ne!(
        token().mac,
        MoveToken::issue(KEY, WORKER, SOURCE, DEST, EXPIRES + 1).mac
    );
}
