//! `roam`: prepare worker modules, run workers through capture and restore, inspect snapshots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use roam_cli::commands::{self, ExecOptions};
use roam_runtime::WorkerLimits;

#[derive(Parser)]
#[command(
    name = "roam",
    version,
    about = "Move running WebAssembly workers between device, edge and cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a module against the worker contract and write it with all of its state exported.
    Prepare {
        /// The worker module.
        input: PathBuf,
        /// Where to write the prepared module.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run a worker over a file of messages and write its replies.
    Exec {
        /// The worker module (prepared or not).
        worker: PathBuf,
        /// Messages: records of a u32 little-endian length, then that many bytes.
        #[arg(long)]
        messages: PathBuf,
        /// Where to write every reply, in the same record format.
        #[arg(long)]
        out: PathBuf,
        /// After every N messages, capture the worker, encode the snapshot, and restore it into
        /// a fresh worker in a fresh engine before going on.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint_every: Option<u64>,
        /// Write the worker's final snapshot to this file.
        #[arg(long, value_name = "FILE")]
        save_snapshot: Option<PathBuf>,
        /// Start from this snapshot instead of a fresh worker.
        #[arg(long, value_name = "FILE")]
        restore: Option<PathBuf>,
        /// Largest memory the worker may have (e.g. 256MiB, 1GiB).
        #[arg(long, default_value = "1GiB", value_parser = commands::parse_size)]
        max_memory: u64,
        /// Longest one message may run, in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Move the worker while it runs: `auto` (the placement policy decides, among the
        /// cloud given with --cloud, the edges registered with it and those given with
        /// --edge), or comma-separated steps COUNT@PLACE, where COUNT is a number or `rest`
        /// and PLACE is `local`, a node URL `ws://HOST:PORT`, or `relay:ws://HOST:PORT` (go
        /// there with the state fetched through the cloud).
        #[arg(long, conflicts_with_all = ["checkpoint_every", "restore", "save_snapshot"])]
        plan: Option<String>,
        /// The cloud node: where `relay:` plan steps go through, and where `--plan auto`
        /// finds edges.
        #[arg(long, value_name = "URL")]
        cloud: Option<String>,
        /// With `--plan auto`: an edge to consider besides those the cloud lists. Repeatable.
        #[arg(long = "edge", value_name = "URL", requires = "plan")]
        edges: Vec<String>,
        /// With `--plan auto`: post one message every MS milliseconds (0: as fast as the
        /// worker takes them).
        #[arg(long, value_name = "MS", default_value_t = 0.0, requires = "plan")]
        interval_ms: f64,
        /// With `--plan auto`: never run where a message is predicted to take longer.
        #[arg(long, value_name = "MS", requires = "plan")]
        latency_budget_ms: Option<f64>,
        /// With `--plan auto`: never make a move predicted to pause the worker longer.
        #[arg(long, value_name = "MS", requires = "plan")]
        max_move_stall_ms: Option<f64>,
        /// With `--plan auto`: never run on the cloud.
        #[arg(long, requires = "plan")]
        no_cloud: bool,
        /// With `--plan auto`: never leave this device.
        #[arg(long, requires = "plan")]
        stay_local: bool,
        /// With `--plan auto`: remember in DIR how heavy the module's messages are, and
        /// start from what the last run learnt (one small file per module).
        #[arg(long, value_name = "DIR", requires = "plan")]
        remember: Option<std::path::PathBuf>,
        /// Print what was done as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the demo: a physics worker captured and restored while it runs.
    Demo {
        /// Where the example workers are (`cargo xtask build-workers` puts them in target/workers).
        #[arg(long, default_value = "target/workers")]
        workers: PathBuf,
        /// Cubes in the scene.
        #[arg(long, default_value_t = 400)]
        cubes: u32,
        /// Frames to simulate.
        #[arg(long, default_value_t = 240)]
        frames: u32,
        /// Frames between two capture/restore cycles.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
        move_every: u32,
        /// With --edge (twice): tour the nodes instead — local → edge A → edge B → this cloud
        /// → local, one line per move.
        #[arg(long, value_name = "URL", requires = "edge")]
        cloud: Option<String>,
        /// An edge node for the tour (give two).
        #[arg(long, value_name = "URL", num_args = 1, requires = "cloud")]
        edge: Vec<String>,
    },
    /// Run a benchmark and write its results.
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["core", "moves", "alloc", "paper", "mobility"])]
        which: String,
        /// Where the example workers are.
        #[arg(long, default_value = "target/workers")]
        workers: PathBuf,
        /// For `alloc`: the same workers built without the SDK's `zero-freed` feature.
        #[arg(long, value_name = "DIR", required_if_eq("which", "alloc"))]
        without_zeroing: Option<PathBuf>,
        /// Where to write the results (JSON and markdown).
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// A smoke run. paper: a few seconds, faster links, small scenes, one run each;
        /// mobility: the walk trace in a quarter of its time, `local` and `auto` only.
        #[arg(long)]
        quick: bool,
        /// (paper) Runs per application, memory size and scene size.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// (mobility) Replay every `*.json` trace in this folder.
        #[arg(long, value_name = "DIR", default_value = "bench/traces")]
        traces: PathBuf,
        /// (mobility) Replay this trace file instead (repeatable).
        #[arg(long, value_name = "FILE")]
        trace: Vec<PathBuf>,
        /// (mobility) Comma-separated policies: local, cloud, paper, oracle, auto
        /// (default: all; with --quick: local,auto).
        #[arg(long, value_name = "LIST")]
        policies: Option<String>,
    },
    /// Run an edge or cloud node that hosts workers for clients.
    Serve(roam_cli::serve::ServeArgs),
    /// Work with snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Check a snapshot file and print its manifest.
    Inspect {
        /// The snapshot file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roam: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Prepare { input, output } => {
            let info = commands::prepare(&input, &output)?;
            println!(
                "prepared {} -> {}: {} mutable globals, {} tables, {} table functions exported",
                input.display(),
                output.display(),
                info.globals.len(),
                info.tables.len(),
                info.table_funcs.len()
            );
        }
        Command::Exec {
            worker,
            messages,
            out,
            checkpoint_every,
            save_snapshot,
            restore,
            max_memory,
            timeout,
            plan,
            cloud,
            edges,
            interval_ms,
            latency_budget_ms,
            max_move_stall_ms,
            no_cloud,
            stay_local,
            remember,
            json,
        } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                anyhow::bail!("--timeout must be a positive number of seconds");
            }
            let options = ExecOptions {
                worker,
                messages,
                out,
                checkpoint_every,
                save_snapshot,
                restore,
                limits: WorkerLimits {
                    max_memory,
                    message_timeout: Duration::from_secs_f64(timeout),
                    ..WorkerLimits::default()
                },
            };
            if plan.as_deref() == Some("auto") {
                let ms = |v: f64, what: &str| -> anyhow::Result<Duration> {
                    anyhow::ensure!(
                        v.is_finite() && v >= 0.0,
                        "--{what} must be a number of milliseconds, not {v}"
                    );
                    Ok(Duration::from_secs_f64(v / 1e3))
                };
                let auto = roam_client::AutoOptions {
                    cloud: cloud.clone(),
                    edges: edges.clone(),
                    requirements: roam_client::Requirements {
                        latency_budget: latency_budget_ms
                            .map(|v| ms(v, "latency-budget-ms"))
                            .transpose()?,
                        max_move_stall: max_move_stall_ms
                            .map(|v| ms(v, "max-move-stall-ms"))
                            .transpose()?,
                        allow_cloud: !no_cloud,
                        stay_local,
                    },
                    memory: remember.clone(),
                    ..roam_client::AutoOptions::default()
                };
                let interval = ms(interval_ms, "interval-ms")?;
                let handled = roam_cli::plan::exec_auto(&options, auto, interval, &mut |event| {
                    eprintln!("  {event}")
                })?;
                println!("{handled} messages handled, placed automatically");
                return Ok(());
            }
            if !edges.is_empty()
                || stay_local
                || no_cloud
                || latency_budget_ms.is_some()
                || max_move_stall_ms.is_some()
            {
                anyhow::bail!("--edge, --interval-ms, --latency-budget-ms, --max-move-stall-ms, --no-cloud and --stay-local go with --plan auto");
            }
            if let Some(plan) = plan {
                let steps = roam_cli::plan::parse_plan(&plan, cloud.as_deref())?;
                let handled = roam_cli::plan::exec_plan(&options, &steps, &mut |m| {
                    eprintln!(
                        "  {:<8} {} -> {}: {:.1} ms, {} bytes through the client, {} messages replayed",
                        m.kind.to_string(),
                        m.from,
                        m.to,
                        m.duration.as_secs_f64() * 1e3,
                        m.client_bytes,
                        m.replayed
                    )
                })?;
                println!("{handled} messages handled following the plan");
                return Ok(());
            }
            let report = commands::exec(&options, &mut |r| {
                eprintln!(
                    "  … {} messages, {} replies, {} checkpoints",
                    r.messages, r.replies, r.checkpoints
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} messages, {} replies, {} checkpoints (in all: capture {:.1} ms, fresh engine + load {:.1} ms, restore {:.1} ms), memory {} bytes",
                    report.messages,
                    report.replies,
                    report.checkpoints,
                    report.capture_ms,
                    report.load_ms,
                    report.restore_ms,
                    report.memory_bytes
                );
            }
        }
        Command::Demo {
            workers,
            cloud: Some(cloud),
            edge,
            cubes,
            ..
        } => {
            let [a, b] = edge.as_slice() else {
                anyhow::bail!("the tour needs two --edge URLs");
            };
            roam_cli::tour::run(&workers, &cloud, a, b, cubes, &mut std::io::stdout())?;
        }
        Command::Demo {
            workers,
            cubes,
            frames,
            move_every,
            ..
        } => {
            let options = roam_cli::demo::DemoOptions {
                cubes,
                frames,
                move_every,
            };
            roam_cli::demo::run(&workers, &options, &mut std::io::stdout())?;
        }
        Command::Bench {
            which,
            workers,
            without_zeroing,
            out,
            quick,
            runs,
            traces,
            trace,
            policies,
        } => {
            if let Some(without) = without_zeroing.filter(|_| which == "alloc") {
                let results = roam_cli::bench_alloc::alloc(&workers, &without, &out)?;
                print!("{}", roam_cli::bench_alloc::markdown(&results));
            } else if which == "paper" {
                let roam = std::env::current_exe()?;
                let options = roam_cli::bench_paper::PaperOptions { quick, runs };
                let results = roam_cli::bench_paper::paper(&roam, &workers, &out, &options)?;
                print!("{}", roam_cli::bench_paper::markdown(&results));
            } else if which == "mobility" {
                let roam = std::env::current_exe()?;
                let mobility = roam_cli::bench_mobility::load_mobility_options(
                    &traces,
                    &trace,
                    policies.as_deref(),
                    quick,
                )?;
                let results = roam_cli::bench_mobility::mobility(&roam, &workers, &out, &mobility)?;
                print!("{}", roam_cli::bench_mobility::markdown(&results));
            } else if which == "moves" {
                let roam = std::env::current_exe()?;
                let results = roam_cli::bench_moves::moves(&roam, &workers, &out)?;
                print!("{}", roam_cli::bench_moves::markdown(&results));
            } else {
                let results = roam_cli::bench::core(&workers, &out)?;
                print!("{}", roam_cli::bench::markdown(&results));
            }
            eprintln!(
                "results written to {}",
                out.join(format!("{which}.json")).display()
            );
        }
        Command::Serve(args) => roam_cli::serve::run(args)?,
        Command::Snapshot {
            command: SnapshotCommand::Inspect { file, json },
        } => {
            let inspection = commands::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspection)?);
            } else {
                commands::print_inspection(&inspection, &mut std::io::stdout())?;
            }
        }
    }
    Ok(())
}
