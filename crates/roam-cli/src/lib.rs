//! The pieces of the `roam` command that tests and benchmarks share: the record format of
//! message and reply files, and the commands themselves.
#![deny(missing_docs)]

pub mod bench;
pub mod bench_alloc;
pub mod bench_mobility;
pub mod bench_moves;
pub mod bench_paper;
pub mod commands;
pub mod demo;
mod node_metrics;
pub mod plan;
pub mod records;
pub mod serve;
pub mod svg;
pub mod tour;
pub mod workloads;
