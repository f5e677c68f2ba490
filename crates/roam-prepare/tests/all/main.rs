//! Integration tests for roam-prepare, one module per area. Fixtures are
//! `.wat` files under `tests/fixtures/`.

mod accept;
mod idempotence;
mod refuse;
mod rewrite;
mod support;
mod workers;
