//! Fixture loading and the wasm inspection helpers the tests share.

use std::path::PathBuf;

use wasmparser::{ExternalKind, Parser, Payload, Validator, WasmFeatures};

/// The worker fixtures that prepare accepts.
pub const GOOD_FIXTURES: &[&str] = &["minimal", "wasi", "tables", "rust_like", "c_like"];

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.wat"))
}

/// The binary form of `tests/fixtures/{name}.wat`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test module should parse")
}

/// Validates with the full WebAssembly 3.0 feature set, independently of
/// the crate's own validation.
pub fn validate(bytes: &[u8]) {
    Validator::new_with_features(WasmFeatures::WASM3)
        .validate_all(bytes)
        .expect("prepared module should validate");
}

/// Every export as (name, kind, index), in order.
pub fn exports(bytes: &[u8]) -> Vec<(String, ExternalKind, u32)> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::ExportSection(reader) = payload.unwrap() {
            for export in reader {
                let export = export.unwrap();
                out.push((export.name.to_string(), export.kind, export.index));
            }
        }
    }
    out
}

/// Every section as (id, custom section name, contents), in order.
pub fn sections(bytes: &[u8]) -> Vec<(u8, Option<String>, Vec<u8>)> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.unwrap();
        let name = match &payload {
            Payload::CustomSection(custom) => Some(custom.name().to_string()),
            _ => None,
        };
        if let Some((id, range)) = payload.as_section() {
            out.push((id, name, bytes[range].to_vec()));
        }
    }
    out
}

pub const EXPORT_SECTION: u8 = 7;
