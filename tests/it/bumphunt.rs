//! The resonance workflow end to end: signal counted in the mass window,
//! per-category background factors from exponential fits to the mass
//! spectra, checked against a float64 recomputation from the written files.

use std::path::Path;
use std::process::Command;

use gato::datafusion::arrow::array::{Array, Int32Array};
use serde_json::Value;

use crate::common::{float_column, gato_bin, read_parquet, string_column};

const WINDOW: (f64, f64) = (123.5, 126.5);

fn gato(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(gato_bin()).args(args).current_dir(dir).output().unwrap()
}

fn pipeline_text() -> String {
    let mut text = String::from(
        "name: bump\nseed: 2\nsources:\n  mc:\n    files: [sample.parquet]\n    process_column: process\nprocesses:\n",
    );
    for (i, p) in
        ["signal1", "signal2", "bkg1", "bkg2", "bkg3", "bkg4", "bkg5"].iter().enumerate()
    {
        let role = if i < 2 { "signal" } else { "background" };
        text.push_str(&format!("  - {{ name: {p}, role: {role}, source: mc }}\n"));
    }
    text.push_str(
        "selection:\n  sql: SELECT score_signal1, score_signal2, weight, mass FROM events\n  \
         discriminants: [score_signal1, score_signal2]\n  mass: mass\n\
         model:\n  kind: gmm\n  categories: [3]\n  means: simplex\n  init: random\n\
         objective:\n  significance: asimov\n  sideband_fit:\n    window: [123.5, 126.5]\n    every: 1\n\
         optimizer:\n  learning_rate: { schedule: cosine, initial: 0.05, final: 0.005 }\n\
         training:\n  epochs: 8\n\
         evaluation:\n  argmax_low: 0.33\n\
         output: out\n",
    );
    text
}

#[test]
fn sideband_factors_match_recomputed_fits() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "resonance",
            "--out",
            "sample.parquet",
            "--seed",
            "8",
            "--signal",
            "3000",
            "--background",
            "40000",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline_text()).unwrap();
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    let run = &summary["runs"][0];

    // Read the written file: process, weight, mass, category.
    let (mut process, mut weight, mut mass, mut category) =
        (vec![], vec![], vec![], vec![]);
    for batch in read_parquet(&dir.path().join("out/gmm_k3/sample.parquet")) {
        process.extend(string_column(&batch, "process"));
        weight.extend(float_column(&batch, "weight"));
        mass.extend(float_column(&batch, "mass"));
        let c = batch
            .column_by_name("category")
            .unwrap()
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        category.extend(c.values().iter().map(|&c| c as usize));
    }

    // Signal counts only in the window.
    for (index, name) in ["signal1", "signal2"].iter().enumerate() {
        let in_window: f64 = (0..weight.len())
            .filter(|&i| process[i] == *name && (WINDOW.0..=WINDOW.1).contains(&mass[i]))
            .map(|i| weight[i])
            .sum();
        let got = summary["processes"][index]["event_yield"].as_f64().unwrap();
        assert!(
            (got - in_window).abs() < 1e-9 * in_window,
            "{name}: {got} vs {in_window}"
        );
    }

    // Per category: 10 bins of the background mass on [100, 180], fitted;
    // the factor is the fit's share in the window.
    let factors: Vec<f64> =
        serde_json::from_value(run["background_factors"].clone()).unwrap();
    assert_eq!(factors.len(), 3);
    let edges: Vec<f64> = (0..=10).map(|b| 100.0 + 8.0 * b as f64).collect();
    for c in 0..3 {
        let (mut y, mut w2) = (vec![0.0; 10], vec![0.0; 10]);
        let mut background = 0.0;
        for i in 0..weight.len() {
            if category[i] != c || process[i].starts_with("signal") {
                continue;
            }
            background += weight[i];
            let bin = (((mass[i] - 100.0) / 8.0).floor() as usize).min(9);
            y[bin] += weight[i];
            w2[bin] += weight[i] * weight[i];
        }
        let fit = gato::sideband::fit_exponential(&edges, &y, &w2).unwrap();
        let want = gato::sideband::window_fraction(fit.slope, WINDOW, (100.0, 180.0));
        assert!(
            (factors[c] - want).abs() < 1e-12,
            "category {c}: {} vs {want}",
            factors[c]
        );
        // A mixture of e^(−λm) with λ from 0.025 to 0.05 has its window
        // share between those of the two extremes, above the flat 3/80.
        assert!(factors[c] > 0.043, "category {c}: {}", factors[c]);
        assert!(factors[c] < 0.047, "category {c}: {}", factors[c]);
        // The summary keeps the binned spectrum and the fit behind it.
        let spectrum = &run["sideband"]["categories"][c];
        let stored: Vec<f64> =
            serde_json::from_value(spectrum["background"].clone()).unwrap();
        let stored_w2: Vec<f64> =
            serde_json::from_value(spectrum["background_sumw2"].clone()).unwrap();
        for b in 0..10 {
            assert!((stored[b] - y[b]).abs() <= 1e-9 * y[b], "category {c} bin {b}");
            assert!((stored_w2[b] - w2[b]).abs() <= 1e-9 * w2[b], "category {c} bin {b}");
        }
        assert_eq!(spectrum["fit"]["slope"].as_f64().unwrap(), fit.slope);
        assert_eq!(spectrum["factor"].as_f64().unwrap(), factors[c]);
        let row = &run["table"]["categories"][c];
        let got = row["background"].as_f64().unwrap();
        assert!(
            (got - want * background).abs() < 1e-9 * got,
            "category {c}: {got} vs {}",
            want * background
        );
    }

    // Refitted every epoch, from before the first one.
    let history: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/gmm_k3/history.json")).unwrap(),
    )
    .unwrap();
    let first: Vec<f64> =
        serde_json::from_value(history[0][0]["background_factors"].clone()).unwrap();
    assert!(first.iter().all(|f| (f - 3.0 / 80.0).abs() > 1e-3), "{first:?}");

    // The argmax baseline counts only the window.
    assert!(run["argmax"]["z"].as_f64().unwrap() > 0.0);

    // The plots of the workflow: the inclusive spectrum, each category's
    // spectrum with its fit (one fitted curve per category), the factors
    // over the epochs (one line per category).
    let out = dir.path().join("out");
    assert!(out.join("plots/mass_inclusive.png").is_file());
    let svg =
        std::fs::read_to_string(out.join("gmm_k3/plots/mass_categories.svg")).unwrap();
    let fit_colour = "stroke=\"#1F4EA0\"";
    let curves = svg
        .split("<polyline")
        .filter(|p| p.contains(fit_colour) && p.matches(',').count() > 100)
        .count();
    assert_eq!(curves, 3);
    assert!(out.join("gmm_k3/plots/background_factors.png").is_file());
}

/// Runs the full pipelines/bumphunt.yaml: at K = 5 the learnt categories beat
/// the argmax baseline for both signals. About 15 minutes on a 2-core
/// machine in the debug build; run with
/// `cargo test --test it -- --ignored --nocapture bumphunt_full`.
#[test]
#[ignore = "full-size run; minutes"]
fn bumphunt_full_beats_argmax() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline =
        gato::config::Pipeline::load(&root.join("pipelines/bumphunt.yaml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = gato::run::RunOptions {
        output: Some(out.path().to_path_buf()),
        print: true,
        ..Default::default()
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let summary = runtime.block_on(gato::run::run_pipeline(&pipeline, &options)).unwrap();
    let run = summary.runs.iter().find(|r| r.categories == 5).unwrap();
    let argmax = run.argmax.as_ref().unwrap();
    for i in 0..2 {
        let (learnt, baseline) = (run.table.z_per_signal[i], argmax.z_per_signal[i]);
        println!("signal {}: learnt Z {learnt:.4}, argmax baseline {baseline:.4}", i + 1);
        assert!(learnt > baseline, "signal {}: {learnt} ≤ {baseline}", i + 1);
    }
    let factors = run.background_factors.as_ref().unwrap();
    assert_eq!(factors.len(), 5);
}

#[test]
fn sideband_fit_rejects_binned_statistics() {
    let text = pipeline_text()
        .replace(
            "    files: [sample.parquet]\n    process_column: process\n",
            "    generator: { kind: resonance, signal: 100, background: 1000 }\n",
        )
        .replace("  epochs: 8\n", "  epochs: 8\n  statistics: binned\n");
    let err = gato::config::Pipeline::from_text(&text, "p.yaml").unwrap_err().to_string();
    assert!(
        err.contains("training.statistics: binned statistics drop each event's mass"),
        "{err}"
    );
}

#[test]
fn sideband_fit_rejects_events_on_disk() {
    let text = pipeline_text()
        .replace(
            "    files: [sample.parquet]\n    process_column: process\n",
            "    generator: { kind: resonance, signal: 100, background: 1000 }\n",
        )
        .replace("  mass: mass\n", "  mass: mass\n  events: disk\n");
    assert!(text.contains("events: disk"));
    let err = gato::config::Pipeline::from_text(&text, "p.yaml").unwrap_err().to_string();
    assert!(
        err.contains("selection.events: `disk` cannot be combined with `objective.sideband_fit`"),
        "{err}"
    );
}

#[test]
fn sideband_fit_keeps_events_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline_text()
        .replace(
            "    files: [sample.parquet]\n    process_column: process\n",
            "    generator: { kind: resonance, signal: 1000, background: 20000 }\n",
        )
        .replace("  epochs: 8\n", "  epochs: 2\n");
    std::fs::write(dir.path().join("pipeline.yaml"), text).unwrap();
    // 1 MiB is far too little for the events, but the sideband fit needs
    // them in memory, so the run warns and keeps them there.
    let out = gato(&["-q", "run", "pipeline.yaml", "--memory-limit", "1"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("they stay in memory because objective.sideband_fit"), "{stderr}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["event_storage"], "memory");
}
