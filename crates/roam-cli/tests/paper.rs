//! `roam bench paper --quick`: the smoke run of the SoCC 2019 evaluation produces every
//! output, well-formed — the JSON with every move of every application, the markdown
//! tables with the targets checked, and three SVG plots.

mod support;

#[test]
fn the_quick_paper_benchmark_writes_every_result() {
    let out = tempfile::tempdir().unwrap();
    let json = support::quick_bench("paper", &[], out.path());
    assert_eq!(json["quick"], true);
    let moves = json["moves"].as_array().unwrap();
    for app in ["physics", "facedetect", "blur"] {
        for kind in ["offload", "handoff", "fallback", "return"] {
            let warm = moves
                .iter()
                .find(|m| m["app"] == app && m["kind"] == kind && m["cold"] == false)
                .unwrap_or_else(|| panic!("no warm {kind} of {app}"));
            assert!(warm["settle_ms"].as_f64().unwrap() > 0.0);
            assert!(warm["limit_ms"].as_f64().unwrap() > 0.0);
            assert!(warm["state_bytes"].as_u64().unwrap() > 0);
            assert!(warm["memory_bytes"].as_u64().unwrap() > 0);
        }
        let cold_offload = moves
            .iter()
            .find(|m| m["app"] == app && m["kind"] == "offload" && m["cold"] == true)
            .unwrap_or_else(|| panic!("no cold offload of {app}"));
        assert!(
            cold_offload["module_bytes"].as_u64().unwrap() > 0,
            "a cold offload sends the module"
        );
    }
    assert!(!json["sweep"]["rows"].as_array().unwrap().is_empty());
    assert!(!json["frame_rate"]["rows"].as_array().unwrap().is_empty());

    let md = std::fs::read_to_string(out.path().join("paper.md")).unwrap();
    for heading in [
        "## Moves, module warm",
        "## Moves, module cold",
        "## Targets",
        "## Memory sweep",
        "## Physics frame rate",
    ] {
        assert!(md.contains(heading), "paper.md lacks `{heading}`");
    }
    assert!(md.contains("met"), "the targets are checked");
    for svg in ["paper-moves.svg", "paper-sweep.svg", "paper-frame-rate.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg} is not a whole SVG document"
        );
        assert!(
            !text.contains("NaN") && !text.contains("inf"),
            "{svg} has a non-finite coordinate"
        );
    }
}
