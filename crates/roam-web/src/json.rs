//! Reading call arguments and writing answers: hex strings for ids and hashes, numbers
//! (or decimal strings, past 2^53) for 64-bit values, and a worker's globals and tables.

use roam_snapshot::{GlobalValue, TableState};
use serde_json::{json, Value};

/// The field `name` of `args`, or an error naming it.
pub fn field<'v>(args: &'v Value, name: &str) -> Result<&'v Value, String> {
    args.get(name)
        .ok_or_else(|| format!("the call lacks the argument `{name}`"))
}

/// A string argument.
pub fn str_arg<'v>(args: &'v Value, name: &str) -> Result<&'v str, String> {
    field(args, name)?
        .as_str()
        .ok_or_else(|| format!("`{name}` must be a string"))
}

/// A 64-bit unsigned argument: a JSON number or a decimal string.
pub fn u64_arg(args: &Value, name: &str) -> Result<u64, String> {
    u64_of(field(args, name)?).ok_or_else(|| format!("`{name}` must be an unsigned integer"))
}

fn u64_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A 32-bit unsigned argument.
pub fn u32_arg(args: &Value, name: &str) -> Result<u32, String> {
    u32::try_from(u64_arg(args, name)?).map_err(|_| format!("`{name}` does not fit in 32 bits"))
}

/// A 128-bit id (a worker id) written as hex.
pub fn id_arg(args: &Value, name: &str) -> Result<u128, String> {
    let text = str_arg(args, name)?;
    if text.is_empty() || text.len() > 32 {
        return Err(format!("`{name}` must be 1 to 32 hex digits"));
    }
    u128::from_str_radix(text, 16).map_err(|_| format!("`{name}` must be hex digits"))
}

/// 32 bytes written as 64 hex digits (a module hash, a secret).
pub fn bytes32_arg(args: &Value, name: &str) -> Result<[u8; 32], String> {
    let text = str_arg(args, name)?;
    parse_hex32(text).ok_or_else(|| format!("`{name}` must be 64 hex digits"))
}

/// Parses 64 hex digits.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 128-bit id as the 32 hex digits the SDK uses.
pub fn id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// A global's value as the SDK reads and writes it: `{"i32": n}`, `{"i64": "n"}`,
/// `{"f32": bits}`, `{"f64": "bits"}`, `{"v128": "hex"}` or `{"funcref": index | null}`.
pub fn global_to_json(value: &GlobalValue) -> Value {
    match *value {
        GlobalValue::I32(v) => json!({ "i32": v }),
        GlobalValue::I64(v) => json!({ "i64": v.to_string() }),
        GlobalValue::F32(bits) => json!({ "f32": bits }),
        GlobalValue::F64(bits) => json!({ "f64": bits.to_string() }),
        GlobalValue::V128(v) => json!({ "v128": format!("{v:032x}") }),
        GlobalValue::FuncRef(f) => json!({ "funcref": f }),
    }
}

/// Reads a global written as [`global_to_json`] writes it.
pub fn global_from_json(index: usize, value: &Value) -> Result<GlobalValue, String> {
    let bad = || format!("global {index} is not a typed value like {{\"i32\": 5}}: {value}");
    let object = value.as_object().filter(|o| o.len() == 1).ok_or_else(bad)?;
    let (kind, v) = object.iter().next().ok_or_else(bad)?;
    let parsed = match kind.as_str() {
        "i32" => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(GlobalValue::I32),
        "i64" => match v {
            Value::String(s) => s.parse().ok(),
            other => other.as_i64(),
        }
        .map(GlobalValue::I64),
        "f32" => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(GlobalValue::F32),
        "f64" => u64_of(v).map(GlobalValue::F64),
        "v128" => v
            .as_str()
            .and_then(|s| u128::from_str_radix(s, 16).ok())
            .map(GlobalValue::V128),
        "funcref" => match v {
            Value::Null => Some(GlobalValue::FuncRef(None)),
            other => other
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|f| GlobalValue::FuncRef(Some(f))),
        },
        _ => None,
    };
    parsed.ok_or_else(bad)
}

/// A table as a list of function indices and nulls.
pub fn table_to_json(table: &TableState) -> Value {
    Value::Array(table.elements.iter().map(|e| json!(e)).collect())
}

/// Reads a table written as [`table_to_json`] writes it.
pub fn table_from_json(index: usize, value: &Value) -> Result<TableState, String> {
    let bad = || format!("table {index} must be a list of function indices and nulls");
    let elements = value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|e| match e {
            Value::Null => Ok(None),
            other => other
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(bad),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TableState { elements })
}
