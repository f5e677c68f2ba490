//! `roam bench mobility --quick`: the shortened walk replayed under `local` and `auto`
//! answers every message exactly once under each policy and writes every result file,
//! well-formed. A bad trace is refused with the file and the problem named.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::workers_dir;

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/traces")
}

#[test]
fn the_quick_mobility_benchmark_answers_every_message_once() {
    let out = tempfile::tempdir().unwrap();
    let traces = traces_dir();
    let json = support::quick_bench(
        "mobility",
        &["--traces".as_ref(), traces.as_ref()],
        out.path(),
    );
    assert_eq!(json["quick"], true);
    let runs = json["runs"].as_array().unwrap();
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["local", "auto"]);
    for run in runs {
        let policy = &run["policy"];
        assert_eq!(run["trace"], "walk");
        let posted = run["posted"].as_u64().unwrap();
        assert!(
            posted >= 140,
            "{policy}: only {posted} steps posted in a 15 s walk"
        );
        assert_eq!(run["answered"], posted, "{policy}: messages lost");
        assert_eq!(run["lost"], 0, "{policy}");
        assert_eq!(run["duplicated"], 0, "{policy}: a message answered twice");
        assert_eq!(run["stray_replies"], 0, "{policy}");
        let samples = run["record"]["samples"].as_array().unwrap();
        assert_eq!(samples.len() as u64, posted);
        assert!(
            samples
                .iter()
                .all(|s| s["replies"] == 1 && s["latency_ms"].as_f64().unwrap() > 0.0),
            "{policy}: every step has exactly one reply, after it was due"
        );
        let mean = run["latency"]["mean_ms"].as_f64().unwrap();
        assert!(
            mean > 0.0 && mean.is_finite(),
            "{policy}: mean latency {mean}"
        );
    }

    let md = std::fs::read_to_string(out.path().join("mobility.md")).unwrap();
    for needle in [
        "## walk",
        "## Targets",
        "| local |",
        "| auto |",
        "Quick run",
    ] {
        assert!(md.contains(needle), "mobility.md lacks `{needle}`");
    }
    let svg = std::fs::read_to_string(out.path().join("mobility-walk.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "a non-finite coordinate"
    );
}

#[test]
fn a_bad_trace_is_refused_with_its_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("typo.json");
    std::fs::write(
        &trace,
        r#"{"name": "typo", "description": "", "duration_s": 10, "places": ["A", "cloud"],
            "events": [{"at_s": 1, "links": {"B": null}}]}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["bench", "mobility", "--trace"])
        .arg(&trace)
        .args(["--policies", "local", "--workers"])
        .arg(workers_dir())
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("roam starts");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("typo.json"), "{stderr}");
    assert!(stderr.contains("unknown place `B`"), "{stderr}");
    assert!(!dir.path().join("mobility.json").exists());
}
