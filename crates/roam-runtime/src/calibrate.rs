//! Calibration: how fast this machine runs wasm, relative to a reference core.
//!
//! A node tells the cloud its speed when it registers, and a client times the same run on
//! the device: their ratio is the placement policy's first guess of how much faster a
//! handler runs on the node, until runs there are seen.

use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, Instance, Module, Store};

/// An integer mix the compiler cannot fold: a xorshift chain, `n` steps.
const LOOP: &str = r#"
(module
  (func (export "spin") (param $n i32) (result i32)
    (local $x i32)
    (local.set $x (i32.const 2463534242))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
      (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $x)))
"#;

/// Steps of the loop per timed run.
const STEPS: i32 = 20_000_000;

/// One timed run on the reference core: a core of the 2-core x86-64 machine the
/// benchmarks in `bench/results/` ran on, at full speed (33.8 ms, the fastest of 5 × 3).
const REFERENCE: Duration = Duration::from_micros(33_800);

/// What [`calibrate`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// The fastest of the timed runs.
    pub run: Duration,
    /// The reference core's time over this machine's: 2.0 runs twice as fast.
    pub speed: f64,
}

/// Could not calibrate.
#[derive(Debug, thiserror::Error)]
#[error("cannot calibrate: {0}")]
pub struct CalibrateError(String);

/// Times the loop `runs` times on the calling thread (after one untimed run) and reports
/// the fastest: about 34 ms a run on the reference core, so a few runs cost little even
/// on a slow device. Run it on the thread whose speed matters (the one a worker uses).
pub fn calibrate(runs: u32) -> Result<Calibration, CalibrateError> {
    let fail = |e: wasmtime::Error| CalibrateError(e.to_string());
    let engine = Engine::new(&Config::new()).map_err(fail)?;
    let wasm = wat::parse_str(LOOP).map_err(|e| CalibrateError(e.to_string()))?;
    let module = Module::new(&engine, &wasm).map_err(fail)?;
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).map_err(fail)?;
    let spin = instance
        .get_typed_func::<i32, i32>(&mut store, "spin")
        .map_err(fail)?;
    spin.call(&mut store, STEPS / 10).map_err(fail)?;
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        std::hint::black_box(spin.call(&mut store, STEPS).map_err(fail)?);
        best = best.min(start.elapsed());
    }
    Ok(Calibration {
        run: best,
        speed: REFERENCE.as_secs_f64() / best.as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_reports_a_plausible_speed() {
        let c = calibrate(3).unwrap();
        assert!(c.speed > 0.01 && c.speed < 100.0, "{c:?}");
    }
}
