//! The C-style ABI the browser SDK calls.
//!
//! 1. `roam_web_alloc(len)` returns a buffer of `len` bytes; the SDK writes a request there:
//!    `u32` length of a UTF-8 JSON object, the JSON, `u32` blob count, then each blob as a
//!    `u32` length and its bytes (all little-endian).
//! 2. `roam_web_call(ptr, len)` takes the buffer back, runs the call and returns 0 when it
//!    succeeded or 1 when it failed.
//! 3. `roam_web_result_ptr()` and `roam_web_result_len()` locate the answer, valid until
//!    the next call: on success laid out like a request, on failure a UTF-8 message.

use std::cell::RefCell;

use crate::ops::{call, Answer, Request};
use crate::store::Store;

thread_local! {
    static STORE: RefCell<Store> = RefCell::new(Store::default());
    static RESULT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Returns a buffer of `len` bytes for a request; [`roam_web_call`] takes it back.
#[no_mangle]
pub extern "C" fn roam_web_alloc(len: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(len);
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

/// Runs the request in `ptr..ptr + len`, which must come from [`roam_web_alloc`]`(len)`
/// with all `len` bytes written. Returns 0 on success, 1 on failure.
///
/// # Safety
///
/// `ptr` must be a buffer returned by `roam_web_alloc(len)` and not passed here before.
#[no_mangle]
pub unsafe extern "C" fn roam_web_call(ptr: *mut u8, len: usize) -> u32 {
    // SAFETY: the caller hands back a buffer from roam_web_alloc(len) (capacity `len`)
    // whose `len` bytes it has written, and never uses it again.
    let request = unsafe { Vec::from_raw_parts(ptr, len, len) };
    let outcome = Request::parse(&request)
        .and_then(|request| STORE.with_borrow_mut(|store| call(store, request)));
    let (status, bytes) = match outcome {
        Ok(answer) => (0, answer.encode()),
        Err(message) => (1, message.into_bytes()),
    };
    RESULT.with_borrow_mut(|result| *result = bytes);
    status
}

/// Where the last call's answer starts.
#[no_mangle]
pub extern "C" fn roam_web_result_ptr() -> *const u8 {
    RESULT.with_borrow(|result| result.as_ptr())
}

/// The length of the last call's answer.
#[no_mangle]
pub extern "C" fn roam_web_result_len() -> usize {
    RESULT.with_borrow(|result| result.len())
}

impl Answer {
    /// The answer's bytes, laid out like a request.
    pub fn encode(&self) -> Vec<u8> {
        let json = self.json.to_string();
        let blobs: usize = self.blobs.iter().map(|b| 4 + b.len()).sum();
        let mut out = Vec::with_capacity(8 + json.len() + blobs);
        put_bytes(&mut out, json.as_bytes());
        out.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for blob in &self.blobs {
            put_bytes(&mut out, blob);
        }
        out
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl<'a> Request<'a> {
    /// Reads a request laid out as the module documentation says.
    pub fn parse(bytes: &'a [u8]) -> Result<Request<'a>, String> {
        let mut rest = bytes;
        let json = take_bytes(&mut rest)?;
        let args: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| format!("the request's JSON is malformed: {e}"))?;
        let count = take_u32(&mut rest)?;
        let mut blobs = Vec::new();
        for _ in 0..count {
            blobs.push(take_bytes(&mut rest)?);
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes left after the request", rest.len()));
        }
        Ok(Request { args, blobs })
    }

    /// A request's bytes, as [`parse`](Request::parse) reads them.
    pub fn encode(args: &serde_json::Value, blobs: &[&[u8]]) -> Vec<u8> {
        Answer {
            json: args.clone(),
            blobs: blobs.iter().map(|b| b.to_vec()).collect(),
        }
        .encode()
    }
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, String> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or("the request ends inside a length")?;
    *rest = tail;
    Ok(u32::from_le_bytes(*head))
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return Err(format!(
            "the request announces {len} bytes but holds {}",
            rest.len()
        ));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}
