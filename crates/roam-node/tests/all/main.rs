//! roam-node's tests: real nodes on 127.0.0.1 port 0, driven by a frame-level client.

mod bad_input;
mod basics;
mod checkpoint;
mod expect;
mod large;
mod lifecycle;
mod moves;
mod postcopy;
mod precopy;
mod support;
