//! How much of a worker's memory one message rewrites, and what sending the rewrite costs
//! whole (lz4 of the new page) or as a difference against the page before (lz4 of the xor).
//!
//! ```sh
//! cargo run --release -p roam-cli --example dirty_profile -- target/workers
//! ```

use std::path::PathBuf;

use roam_cli::workloads;
use roam_runtime::{Runtime, RuntimeConfig};

const PAGE: usize = 4096;

/// An application: its name, the messages that set it up, and the one it handles over and
/// over.
type App = (&'static str, Vec<Vec<u8>>, Vec<u8>);

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or("target/workers".into()));
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let apps: Vec<App> = vec![
        (
            "physics",
            vec![workloads::physics_init(1000, 1)],
            workloads::physics_step(1),
        ),
        (
            "facedetect",
            vec![],
            workloads::facedetect_message(1666, 1136, 1),
        ),
        ("blur", vec![], workloads::blur_message(1920, 1080, 3.0, 1)),
    ];
    for (name, setup, message) in apps {
        let wasm = std::fs::read(dir.join(format!("{name}.wasm")))?;
        let module = runtime.load(&wasm)?;
        let mut worker = runtime.start(&module)?;
        for m in &setup {
            let _ = worker.deliver(m)?.count();
        }
        for _ in 0..20 {
            let _ = worker.deliver(&message)?.count();
        }
        for steps in [1usize, 5, 20] {
            let before = worker.memory().to_vec();
            for _ in 0..steps {
                let _ = worker.deliver(&message)?.count();
            }
            let after = worker.memory();
            let (mut dirty, mut changed, mut whole, mut xor) = (0, 0, 0, 0);
            for (i, new) in after.chunks(PAGE).enumerate() {
                let old = before.get(i * PAGE..(i + 1) * PAGE);
                if old == Some(new) {
                    continue;
                }
                dirty += 1;
                whole += lz4_flex::block::compress(new).len().min(PAGE);
                match old {
                    Some(old) => {
                        let x: Vec<u8> = old.iter().zip(new).map(|(a, b)| a ^ b).collect();
                        changed += x.iter().filter(|b| **b != 0).count();
                        xor += lz4_flex::block::compress(&x).len().min(PAGE);
                    }
                    None => {
                        changed += PAGE;
                        xor += lz4_flex::block::compress(new).len().min(PAGE);
                    }
                }
            }
            println!(
                "{name:10} {steps:2} msgs: memory {:7} KiB, dirty pages {:5} ({:6} KiB), bytes changed {:6} KiB, lz4 whole {:6} KiB, lz4 xor {:6} KiB",
                after.len() / 1024,
                dirty,
                dirty * 4,
                changed / 1024,
                whole / 1024,
                xor / 1024
            );
        }
    }
    Ok(())
}
