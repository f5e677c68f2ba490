//! Feeds arbitrary bytes to `roam_prepare::prepare`. Whatever is accepted must
//! come out as a module that prepare accepts again — which runs the full
//! validator over it, so the output is valid wasm — with the same bytes and the
//! same `ModuleInfo` (preparing is idempotent), and it must export every piece
//! of state the info lists under its reserved name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roam_prepare::{module_info, prepare};

fuzz_target!(|data: &[u8]| {
    let Ok(once) = prepare(data) else {
        return;
    };
    let twice = match prepare(&once.bytes) {
        Ok(twice) => twice,
        Err(error) => panic!("a prepared module was refused: {error}"),
    };
    assert_eq!(twice.bytes, once.bytes, "preparing is not idempotent");
    assert_eq!(twice.info, once.info, "the info changed on the second pass");
    assert_eq!(module_info(data).as_ref(), Ok(&once.info));

    // Ranges come out sorted, merged and non-empty.
    for pair in once.info.data_ranges.windows(2) {
        assert!(pair[0].end < pair[1].start, "{:?}", once.info.data_ranges);
    }
    assert!(once.info.data_ranges.iter().all(|range| range.start < range.end));
});
