//! `roam exec --plan`: run a worker over messages while moving it between places.
//!
//! A plan is a comma-separated list of steps `COUNT@PLACE`: handle COUNT messages (a number,
//! or `rest`) at PLACE (`local`, a node URL `ws://HOST:PORT`, or `relay:ws://HOST:PORT` — go
//! there with the state fetched by the cloud given with `--cloud`), then move on to the next
//! step. Messages left when the plan ends are handled at its last place.

use std::io::Write;

use anyhow::{bail, ensure, Context, Result};
use roam_client::{AutoOptions, AutoPlacer, MoveReport, Place, WorkerHandle, WorkerOptions};

use crate::commands::{open_records, ExecOptions};
use crate::records::write_record;

/// How many messages a step handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// This many.
    Exactly(u64),
    /// All that are left.
    Rest,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// How many messages to handle here.
    pub count: Count,
    /// Where.
    pub place: Place,
}

/// Parses a plan; `cloud` is the cloud URL that `relay:` steps go through.
pub fn parse_plan(text: &str, cloud: Option<&str>) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, part) in text.split(',').map(str::trim).enumerate() {
        let (count, place) = part
            .split_once('@')
            .with_context(|| format!("plan step {} `{part}` is not COUNT@PLACE", i + 1))?;
        let count = match count {
            "rest" => Count::Rest,
            n => Count::Exactly(n.parse().with_context(|| {
                format!(
                    "plan step {} `{part}`: `{n}` is not a number or `rest`",
                    i + 1
                )
            })?),
        };
        let place = if place == "local" {
            Place::Local
        } else if let Some(to) = place.strip_prefix("relay:") {
            check_url(to, i, part)?;
            let cloud = cloud.with_context(|| {
                format!(
                    "plan step {} `{part}` goes through the cloud: give --cloud URL",
                    i + 1
                )
            })?;
            Place::Relay {
                cloud: cloud.to_string(),
                to: to.to_string(),
            }
        } else {
            check_url(place, i, part)?;
            Place::Node(place.to_string())
        };
        if matches!(place, Place::Relay { .. }) && i == 0 {
            bail!("plan step 1 `{part}`: a relayed move needs a node to move from");
        }
        steps.push(Step { count, place });
    }
    if let Some(pos) = steps.iter().position(|s| s.count == Count::Rest) {
        ensure!(
            pos == steps.len() - 1,
            "only the last plan step may handle `rest`"
        );
    }
    Ok(steps)
}

fn check_url(url: &str, i: usize, part: &str) -> Result<()> {
    ensure!(
        url.starts_with("ws://") && url.len() > "ws://".len(),
        "plan step {} `{part}`: `{url}` is not `local` or a ws://HOST:PORT node URL",
        i + 1
    );
    Ok(())
}

/// What running a worker over a message file needs: the module, the messages, the reply
/// file and a runtime for the client.
struct Setup {
    wasm: Vec<u8>,
    messages: crate::records::RecordReader<std::io::BufReader<std::fs::File>>,
    out: std::io::BufWriter<std::fs::File>,
    runtime: tokio::runtime::Runtime,
}

fn setup(options: &ExecOptions) -> Result<Setup> {
    let wasm = std::fs::read(&options.worker)
        .with_context(|| format!("cannot read {}", options.worker.display()))?;
    let (messages, out) = open_records(options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(Setup {
        wasm,
        messages,
        out,
        runtime,
    })
}

/// The client's settings for a worker limited as `options` says.
fn worker_options(options: &ExecOptions) -> WorkerOptions {
    WorkerOptions {
        runtime: roam_runtime::RuntimeConfig {
            limits: options.limits.clone(),
            ..roam_runtime::RuntimeConfig::default()
        },
        ..WorkerOptions::default()
    }
}

/// Runs the worker over the messages following the plan; `on_move` hears of every move.
pub fn exec_plan(
    options: &ExecOptions,
    plan: &[Step],
    on_move: &mut dyn FnMut(&MoveReport),
) -> Result<u64> {
    ensure!(!plan.is_empty(), "the plan is empty");
    let Setup {
        wasm,
        mut messages,
        mut out,
        runtime,
    } = setup(options)?;
    runtime.block_on(async {
        let mut worker = WorkerHandle::start(&wasm, worker_options(options))?;
        let mut handled = 0u64;
        let mut exhausted = false;
        // A handoff runs while messages keep flowing: the worker handles them at the
        // source until the move ends. Moves run one at a time.
        let mut moving_to: Option<(usize, &Place)> = None;
        let ended = |moving_to: &Option<(usize, &Place)>, result: Option<Result<MoveReport, _>>| {
            let Some(result) = result else {
                return Ok(None);
            };
            let (i, place) = moving_to.expect("a move was started");
            result
                .map(Some)
                .with_context(|| format!("moving to {place} (plan step {})", i + 1))
        };
        for (i, step) in plan.iter().enumerate() {
            if let Some(report) = ended(&moving_to, worker.finish_move().await.transpose())? {
                on_move(&report);
            }
            moving_to = Some((i, &step.place));
            worker
                .begin_move(step.place.clone())
                .await
                .with_context(|| format!("moving to {} (plan step {})", step.place, i + 1))?;
            if let Some(report) = ended(&moving_to, worker.take_move_result())? {
                on_move(&report);
            }
            let last = i == plan.len() - 1;
            let mut left = match step.count {
                Count::Exactly(n) if !last => n,
                _ => u64::MAX,
            };
            while left > 0 {
                let Some(message) = messages
                    .next_record()
                    .with_context(|| format!("in {}", options.messages.display()))?
                else {
                    exhausted = true;
                    break;
                };
                worker
                    .post(message)
                    .await
                    .with_context(|| format!("message {}", handled + 1))?;
                handled += 1;
                left -= 1;
                if let Some(report) = ended(&moving_to, worker.take_move_result())? {
                    on_move(&report);
                }
                for reply in worker.take_replies() {
                    write_record(&mut out, &reply.payload).context("cannot write a reply")?;
                }
            }
            if exhausted {
                break;
            }
        }
        if let Some(report) = ended(&moving_to, worker.finish_move().await.transpose())? {
            on_move(&report);
        }
        worker.drain().await?;
        for reply in worker.take_replies() {
            write_record(&mut out, &reply.payload).context("cannot write a reply")?;
        }
        out.flush().context("cannot write replies")?;
        Ok(handled)
    })
}

/// Runs the worker over the messages, one every `interval` (as fast as the worker takes
/// them when zero), and lets the placement policy move it; `on_event` hears of every
/// decision and every move. Returns the messages handled.
pub fn exec_auto(
    options: &ExecOptions,
    auto: AutoOptions,
    interval: std::time::Duration,
    on_event: &mut dyn FnMut(&str),
) -> Result<u64> {
    let Setup {
        wasm,
        mut messages,
        mut out,
        runtime,
    } = setup(options)?;
    runtime.block_on(async {
        let worker_options = WorkerOptions {
            routes: auto.routes.clone(),
            ..worker_options(options)
        };
        let mut worker = WorkerHandle::start(&wasm, worker_options)?;
        let mut placer = AutoPlacer::new(auto);
        let mut handled = 0u64;
        let mut next_post = tokio::time::Instant::now();
        let describe = |m: &MoveReport| {
            format!(
                "{} {} -> {}: {:.1} ms, {} messages replayed",
                m.kind,
                m.from,
                m.to,
                m.duration.as_secs_f64() * 1e3,
                m.replayed
            )
        };
        let report = |worker: &mut WorkerHandle, on_event: &mut dyn FnMut(&str)| -> Result<()> {
            if let Some(result) = worker.take_move_result() {
                let m = result.context("a move the placement policy began failed")?;
                on_event(&describe(&m));
            }
            Ok(())
        };
        while let Some(message) = messages
            .next_record()
            .with_context(|| format!("in {}", options.messages.display()))?
        {
            // Between posts, keep collecting replies and let the policy look.
            loop {
                if let Some(decision) = placer.tick(&mut worker).await? {
                    on_event(&format!("moving to {}: {}", decision.to, decision.reason));
                }
                report(&mut worker, on_event)?;
                let now = tokio::time::Instant::now();
                if now >= next_post {
                    break;
                }
                let wait = (next_post - now).min(std::time::Duration::from_millis(50));
                if worker.pending() > 0 || worker.moving() {
                    if let Some(reply) = worker.next_reply_within(wait).await? {
                        write_record(&mut out, &reply.payload).context("cannot write a reply")?;
                    }
                } else {
                    tokio::time::sleep(wait).await;
                }
                for reply in worker.take_replies() {
                    write_record(&mut out, &reply.payload).context("cannot write a reply")?;
                }
            }
            next_post += interval;
            // A device that cannot keep up still lets the probes and moves run.
            tokio::task::yield_now().await;
            worker
                .post(message)
                .await
                .with_context(|| format!("message {}", handled + 1))?;
            handled += 1;
            for reply in worker.take_replies() {
                write_record(&mut out, &reply.payload).context("cannot write a reply")?;
            }
        }
        if let Some(m) = worker
            .finish_move()
            .await
            .context("a move the placement policy began failed")?
        {
            on_event(&describe(&m));
        }
        worker.drain().await?;
        for reply in worker.take_replies() {
            write_record(&mut out, &reply.payload).context("cannot write a reply")?;
        }
        out.flush().context("cannot write replies")?;
        on_event(&format!("finished at {}", worker.place()));
        Ok(handled)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse() {
        let plan = parse_plan(
            "10@local, 20@ws://127.0.0.1:1, 5@relay:ws://127.0.0.1:2,rest@local",
            Some("ws://127.0.0.1:3"),
        )
        .unwrap();
        assert_eq!(plan.len(), 4);
        assert_eq!(plan[0].count, Count::Exactly(10));
        assert_eq!(plan[1].place, Place::Node("ws://127.0.0.1:1".into()));
        assert_eq!(
            plan[2].place,
            Place::Relay {
                cloud: "ws://127.0.0.1:3".into(),
                to: "ws://127.0.0.1:2".into()
            }
        );
        assert_eq!(plan[3].count, Count::Rest);
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        let err = |p: &str, cloud| parse_plan(p, cloud).unwrap_err().to_string();
        assert!(err("10", None).contains("COUNT@PLACE"));
        assert!(err("x@local", None).contains("not a number"));
        assert!(err("1@http://a", None).contains("ws://"));
        assert!(err("1@local,1@relay:ws://a:1", None).contains("--cloud"));
        assert!(err("rest@local,1@local", None).contains("last plan step"));
        assert!(err("1@relay:ws://a:1", Some("ws://c:1")).contains("needs a node"));
    }
}
