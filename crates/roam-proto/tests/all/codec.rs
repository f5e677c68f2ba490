//! Frames survive the wire unchanged, and every malformed input is refused with an error
//! before anything is allocated from it.

use std::collections::BTreeSet;

use roam_proto::{
    DecodeFrameError, ErrorCode, Frame, FrameLimits, FrameType, NodeRegistration, NodeRole,
    DEFAULT_MAX_FRAME, HEADER_LEN, MAX_STRING_LEN,
};

use crate::samples;

fn limits() -> FrameLimits {
    FrameLimits::default()
}

/// A frame of type `ty` with `body`, and a header that matches it.
fn framed(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty, 0, 0, 0];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Sets the header's length field to the body that follows.
fn fix_len(bytes: &mut [u8]) {
    let len = (bytes.len() - HEADER_LEN) as u32;
    bytes[4..8].copy_from_slice(&len.to_le_bytes());
}

#[test]
fn every_frame_type_round_trips_with_edge_values() {
    let frames = samples();
    let covered: BTreeSet<u8> = frames.iter().map(|f| f.frame_type() as u8).collect();
    let all: BTreeSet<u8> = FrameType::ALL.iter().map(|t| *t as u8).collect();
    assert_eq!(covered, all, "the samples cover every frame type");
    for frame in frames {
        let bytes = frame.encode();
        assert_eq!(bytes[0], frame.frame_type() as u8);
        assert_eq!(&bytes[1..4], &[0, 0, 0], "flags and reserved are zero");
        let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_LEN);
        let decoded = Frame::decode(&bytes, &limits())
            .unwrap_or_else(|e| panic!("{} did not decode: {e}", frame.name()));
        assert_eq!(decoded, frame);
        assert_eq!(decoded.encode(), bytes, "one encoding per frame");
    }
}

#[test]
fn type_bytes_match_the_protocol_document() {
    let expected = [
        (FrameType::Hello, 0x01),
        (FrameType::Goodbye, 0x06),
        (FrameType::StateBegin, 0x10),
        (FrameType::StateAdopted, 0x15),
        (FrameType::StateRound, 0x16),
        (FrameType::StateResumable, 0x17),
        (FrameType::StateResumed, 0x18),
        (FrameType::ChunkWant, 0x19),
        (FrameType::Attach, 0x20),
        (FrameType::WorkerFailed, 0x25),
        (FrameType::Replay, 0x26),
        (FrameType::Expect, 0x27),
        (FrameType::Expecting, 0x28),
        (FrameType::MoveOut, 0x30),
        (FrameType::Release, 0x34),
        (FrameType::Checkpoint, 0x35),
        (FrameType::PullSince, 0x36),
        (FrameType::ReturnSince, 0x37),
        (FrameType::Register, 0x40),
        (FrameType::Nodes, 0x43),
    ];
    for (ty, byte) in expected {
        assert_eq!(ty as u8, byte, "{}", ty.name());
        assert_eq!(FrameType::from_u8(byte), Some(ty));
    }
    assert_eq!(FrameType::ALL.len(), 37);
}

#[test]
fn every_truncation_of_every_frame_is_refused() {
    for frame in samples() {
        let bytes = frame.encode();
        // Cut anywhere, header untouched: the length no longer matches.
        for cut in 0..bytes.len() {
            assert!(
                Frame::decode(&bytes[..cut], &limits()).is_err(),
                "{} cut to {cut} bytes decoded",
                frame.name()
            );
        }
        // Cut the body and make the header agree: the body itself must be found short.
        // Long frames are cut at a stride to keep the test quick.
        let body_len = bytes.len() - HEADER_LEN;
        let step = if body_len > 512 { 61 } else { 1 };
        let cuts = (0..body_len)
            .step_by(step)
            .chain(body_len.saturating_sub(40)..body_len);
        for cut in cuts {
            let mut short = bytes[..HEADER_LEN + cut].to_vec();
            fix_len(&mut short);
            assert!(
                Frame::decode(&short, &limits()).is_err(),
                "{} with its body cut to {cut} bytes decoded",
                frame.name()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for frame in samples() {
        let mut bytes = frame.encode();
        bytes.push(0);
        fix_len(&mut bytes);
        assert!(
            matches!(
                Frame::decode(&bytes, &limits()),
                Err(DecodeFrameError::TrailingBytes { count: 1, .. })
            ),
            "{} with a trailing byte",
            frame.name()
        );
    }
}

#[test]
fn bit_flips_never_panic_and_whatever_decodes_is_canonical() {
    for frame in samples() {
        let bytes = frame.encode();
        let step = if bytes.len() > 512 { 37 } else { 1 };
        for i in (0..bytes.len()).step_by(step) {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                if let Ok(decoded) = Frame::decode(&flipped, &limits()) {
                    assert_eq!(
                        decoded.encode(),
                        flipped,
                        "{} byte {i} bit {bit}",
                        frame.name()
                    );
                }
            }
        }
    }
}

#[test]
fn a_header_claiming_4_gib_is_refused_before_allocation() {
    let mut bytes = framed(FrameType::Post as u8, &[]);
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Frame::decode(&bytes, &limits()),
        Err(DecodeFrameError::TooLarge {
            len: u64::from(u32::MAX) + HEADER_LEN as u64,
            max: DEFAULT_MAX_FRAME,
        })
    );
    // The cap is checked before the type: even garbage with a huge length says TooLarge.
    bytes[0] = 0xEE;
    assert!(matches!(
        Frame::decode(&bytes, &limits()),
        Err(DecodeFrameError::TooLarge { .. })
    ));
}

#[test]
fn frames_over_the_cap_are_refused() {
    let frame = Frame::ModuleData {
        module_hash: [1; 32],
        offset: 0,
        bytes: vec![7; 1000],
    };
    let bytes = frame.encode();
    let small = FrameLimits {
        max_frame: 1000,
        ..limits()
    };
    assert_eq!(
        Frame::decode(&bytes, &small),
        Err(DecodeFrameError::TooLarge {
            len: bytes.len() as u64,
            max: 1000
        })
    );
    let exact = FrameLimits {
        max_frame: bytes.len() as u32,
        ..limits()
    };
    assert_eq!(Frame::decode(&bytes, &exact), Ok(frame));
    assert_eq!(
        DecodeFrameError::TooLarge { len: 0, max: 0 }.code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn payloads_over_the_message_cap_are_refused() {
    let frame = Frame::Post {
        worker: 1,
        seq: 1,
        payload: vec![0; 101],
    };
    let capped = FrameLimits {
        max_payload: 100,
        ..limits()
    };
    assert_eq!(
        Frame::decode(&frame.encode(), &capped),
        Err(DecodeFrameError::PayloadTooLarge { len: 101, max: 100 })
    );
    let reply = Frame::Reply {
        worker: 1,
        seq: 1,
        index: 0,
        payload: vec![0; 100],
    };
    assert!(Frame::decode(&reply.encode(), &capped).is_ok());
}

#[test]
fn lists_over_the_item_cap_are_refused() {
    let frame = Frame::StateNeed {
        worker: 1,
        module: false,
        chunks: vec![5; 11],
    };
    let capped = FrameLimits {
        max_items: 10,
        ..limits()
    };
    assert!(matches!(
        Frame::decode(&frame.encode(), &capped),
        Err(DecodeFrameError::TooManyItems {
            count: 11,
            max: 10,
            ..
        })
    ));
}

#[test]
fn counts_larger_than_the_input_are_refused_before_allocation() {
    // ChunkData claiming a million bodies in a few bytes.
    let mut body = 9u128.to_le_bytes().to_vec();
    body.extend_from_slice(&1_000_000u32.to_le_bytes());
    body.extend_from_slice(&[0; 12]);
    assert_eq!(
        Frame::decode(&framed(FrameType::ChunkData as u8, &body), &limits()),
        Err(DecodeFrameError::Truncated { frame: "ChunkData" })
    );
    // A blob claiming 4 GiB inside a small frame.
    let mut body = [0u8; 32].to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Frame::decode(&framed(FrameType::ModuleData as u8, &body), &limits()),
        Err(DecodeFrameError::Truncated {
            frame: "ModuleData"
        })
    );
}

#[test]
fn unknown_types_flags_and_reserved_bits_are_refused() {
    for ty in [0x00, 0x07, 0x0F, 0x1A, 0x29, 0x38, 0x44, 0xFF] {
        assert_eq!(
            Frame::decode(&framed(ty, &[]), &limits()),
            Err(DecodeFrameError::UnknownType { frame_type: ty })
        );
    }
    let ping = Frame::Ping { nonce: 3 }.encode();
    for flags in [1u8, 0x80, 0xFF] {
        let mut bytes = ping.clone();
        bytes[1] = flags;
        assert_eq!(
            Frame::decode(&bytes, &limits()),
            Err(DecodeFrameError::UnknownFlags {
                frame: "Ping",
                flags
            })
        );
    }
    for reserved in [1u16, 0x100, u16::MAX] {
        let mut bytes = ping.clone();
        bytes[2..4].copy_from_slice(&reserved.to_le_bytes());
        assert_eq!(
            Frame::decode(&bytes, &limits()),
            Err(DecodeFrameError::ReservedNotZero {
                frame: "Ping",
                reserved
            })
        );
    }
    let mut bytes = ping.clone();
    bytes[4] = 7;
    assert_eq!(
        Frame::decode(&bytes, &limits()),
        Err(DecodeFrameError::LengthMismatch {
            frame: "Ping",
            claimed: 7,
            actual: 8
        })
    );
}

#[test]
fn invalid_field_values_are_refused() {
    // Hello with peer kind 2.
    let mut hello = Frame::Hello {
        min_version: 1,
        max_version: 1,
        peer: PeerKindClient,
        name: "n".into(),
    }
    .encode();
    hello[HEADER_LEN + 4] = 2;
    assert!(matches!(
        Frame::decode(&hello, &limits()),
        Err(DecodeFrameError::InvalidTag {
            field: "peer",
            tag: 2,
            ..
        })
    ));
    // StateNeed with module = 2.
    let mut need = Frame::StateNeed {
        worker: 1,
        module: true,
        chunks: vec![],
    }
    .encode();
    need[HEADER_LEN + 16] = 2;
    assert!(matches!(
        Frame::decode(&need, &limits()),
        Err(DecodeFrameError::InvalidTag {
            field: "module",
            ..
        })
    ));
    // Error with an option tag of 3.
    let mut error = Frame::Error {
        code: ErrorCode::Busy,
        worker: None,
        message: String::new(),
    }
    .encode();
    error[HEADER_LEN + 2] = 3;
    assert!(matches!(
        Frame::decode(&error, &limits()),
        Err(DecodeFrameError::InvalidTag {
            field: "worker",
            ..
        })
    ));
    // A name that is not UTF-8.
    let mut goodbye = Frame::Goodbye {
        reason: "ab".into(),
    }
    .encode();
    goodbye[HEADER_LEN + 2] = 0xFF;
    assert_eq!(
        Frame::decode(&goodbye, &limits()),
        Err(DecodeFrameError::InvalidUtf8 {
            frame: "Goodbye",
            field: "reason"
        })
    );
    // A string one byte over the cap, hand-encoded.
    let mut body = ((MAX_STRING_LEN + 1) as u16).to_le_bytes().to_vec();
    body.extend(std::iter::repeat_n(b'a', MAX_STRING_LEN + 1));
    assert!(matches!(
        Frame::decode(&framed(FrameType::Goodbye as u8, &body), &limits()),
        Err(DecodeFrameError::StringTooLong {
            len: 4097,
            max: 4096,
            ..
        })
    ));
    // A node speed that is not a number, or negative.
    for speed in [f32::NAN, f32::INFINITY, -1.0] {
        let register = Frame::Register(NodeRegistration {
            node_id: "e".into(),
            url: "ws://e".into(),
            role: NodeRole::Edge,
            cores: 4,
            speed,
            free_memory: 1,
            workers: 0,
            location: String::new(),
        });
        assert!(matches!(
            Frame::decode(&register.encode(), &limits()),
            Err(DecodeFrameError::InvalidSpeed { .. })
        ));
    }
}

use roam_proto::PeerKind::Client as PeerKindClient;

#[test]
fn over_long_strings_are_cut_when_encoded_so_the_frame_still_decodes() {
    let frame = Frame::WorkerFailed {
        worker: 1,
        seq: 2,
        reason: "€".repeat(MAX_STRING_LEN),
    };
    let decoded = Frame::decode(&frame.encode(), &limits()).unwrap();
    let Frame::WorkerFailed { reason, .. } = decoded else {
        panic!("{decoded:?}")
    };
    assert!(reason.len() <= MAX_STRING_LEN && reason.len() > MAX_STRING_LEN - 3);
    assert!(reason.chars().all(|c| c == '€'));
}

#[test]
fn error_codes_keep_their_numbers_and_unknown_ones_pass_through() {
    for code in 0..=u16::MAX {
        assert_eq!(ErrorCode::from_u16(code).to_u16(), code);
    }
    assert_eq!(ErrorCode::from_u16(1), ErrorCode::UnsupportedVersion);
    assert_eq!(ErrorCode::from_u16(13), ErrorCode::Internal);
    assert_eq!(ErrorCode::from_u16(14), ErrorCode::StateLost);
    assert_eq!(ErrorCode::StateLost.to_u16(), 14);
    assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
    let frame = Frame::Error {
        code: ErrorCode::Other(999),
        worker: Some(4),
        message: "from the future".into(),
    };
    assert_eq!(Frame::decode(&frame.encode(), &limits()), Ok(frame));
}

#[test]
fn short_inputs_are_truncated_headers() {
    for len in 0..HEADER_LEN {
        assert_eq!(
            Frame::decode(&vec![0; len], &limits()),
            Err(DecodeFrameError::Truncated { frame: "header" })
        );
    }
}
