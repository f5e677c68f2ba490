//! A node speaks the current and the previous protocol version, and says so when a peer
//! speaks neither.

use roam_proto::{
    negotiate, ErrorCode, Frame, NegotiateVersionError, NodeRole, NodeSession, NodeState, PeerKind,
    ProtocolError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

#[test]
fn the_current_version_is_accepted() {
    assert_eq!(
        negotiate(PROTOCOL_VERSION, PROTOCOL_VERSION),
        Ok(PROTOCOL_VERSION)
    );
    assert_eq!(
        negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        Ok(PROTOCOL_VERSION)
    );
    // Every version from the oldest kept is spoken (the browser SDK speaks version 1).
    for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
        assert_eq!(negotiate(version, version), Ok(version));
    }
    assert_eq!(MIN_PROTOCOL_VERSION, 1);
}

#[test]
fn an_overlapping_range_gets_the_highest_common_version() {
    assert_eq!(negotiate(0, 99), Ok(PROTOCOL_VERSION));
    assert_eq!(negotiate(0, PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
    assert_eq!(negotiate(PROTOCOL_VERSION, 99), Ok(PROTOCOL_VERSION));
}

#[test]
fn an_old_version_is_refused() {
    assert_eq!(
        negotiate(0, 0),
        Err(NegotiateVersionError::NoCommonVersion {
            peer_min: 0,
            peer_max: 0,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION
        })
    );
}

#[test]
fn a_future_version_is_refused() {
    let err = negotiate(99, 99).unwrap_err();
    assert!(matches!(
        err,
        NegotiateVersionError::NoCommonVersion { peer_min: 99, .. }
    ));
    // The message names both ranges, so either side's operator sees who must upgrade.
    let message = err.to_string();
    assert!(message.contains("99..=99"), "{message}");
    assert!(message.contains(&format!("{MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}")));
}

#[test]
fn an_empty_range_is_refused() {
    assert_eq!(
        negotiate(2, 1),
        Err(NegotiateVersionError::EmptyRange {
            peer_min: 2,
            peer_max: 1
        })
    );
}

#[test]
fn a_node_answers_an_unsupported_hello_with_an_error_and_closes() {
    let mut node = NodeSession::new(NodeRole::Edge);
    let hello = Frame::Hello {
        min_version: 99,
        max_version: 99,
        peer: PeerKind::Client,
        name: "future".into(),
    };
    let err = node.on_frame(&hello).unwrap_err();
    assert!(matches!(err, ProtocolError::Version(_)));
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    let reply = err.to_frame();
    assert!(matches!(
        reply,
        Frame::Error {
            code: ErrorCode::UnsupportedVersion,
            worker: None,
            ..
        }
    ));
    assert_eq!(node.state(), &NodeState::Closed);
    assert!(node.is_closed());
}
