//! Events kept on disk: a run that reads its events back chunk by chunk in
//! every stage gives the numbers and categories of the same run in memory.

use std::path::Path;

use serde_json::Value;

use crate::common::{
    category_column, run_pipeline, three_class_processes, toy_1d_processes,
};

fn run(text: &str, dir: &Path, extra: &[&str]) -> Value {
    run_pipeline(text, dir, extra).0
}

fn one_d(storage: &str, refine: bool) -> String {
    format!(
        "name: d\nseed: 3\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 15000, \
         background: 45000 }}\n{}selection:\n  sql: SELECT score, weight FROM events WHERE \
         score > 0.02\n  discriminants: [score]\n  weight: weight\n  events: {storage}\n\
         model:\n  kind: sigmoid\n  categories: [3, 4]\nobjective:\n  penalties:\n    \
         low_background: {{ threshold: 5, weight: 1 }}\ntraining:\n  epochs: 12\n  \
         chunk_events: 7000\n  refine: {refine}\noutput: out\n",
        toy_1d_processes("toy")
    )
}

fn number(value: &Value, path: &[&str]) -> f64 {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is {v}"))
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12 * a.abs().max(1e-300), "{what}: {a} vs {b}");
}

/// Reads the `category` column of every output file of a run, in file
/// order.
pub(crate) fn categories(dir: &Path, run: &Value) -> Vec<Vec<Option<i32>>> {
    run["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| category_column(&dir.join(o["output"].as_str().unwrap())))
        .collect()
}

#[test]
fn disk_run_equals_memory_run_1d() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let memory = run(&one_d("memory", false), a.path(), &[]);
    let disk = run(&one_d("disk", false), b.path(), &[]);
    assert_eq!(memory["event_storage"], "memory");
    assert_eq!(disk["event_storage"], "disk");
    assert_eq!(memory["processes"], disk["processes"]);
    for (m, d) in
        memory["runs"].as_array().unwrap().iter().zip(disk["runs"].as_array().unwrap())
    {
        let name = m["name"].as_str().unwrap();
        close(number(m, &["table", "z"]), number(d, &["table", "z"]), name);
        assert_eq!(m["boundaries"], d["boundaries"], "{name}");
        assert_eq!(m["table"]["categories"], d["table"]["categories"], "{name}");
        close(number(m, &["equidistant", "z"]), number(d, &["equidistant", "z"]), name);
        close(
            number(m, &["dp_optimum", "z"]),
            number(d, &["dp_optimum", "z"]),
            name,
        );
        let history = |dir: &Path| -> Value {
            let text = std::fs::read_to_string(dir.join("out").join(name).join("history.json"))
                .unwrap();
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(history(a.path()), history(b.path()), "{name}: history");
        // Rows the selection drops (score ≤ 0.02) have no category, in both;
        // every selected event has one.
        let (cm, cd) = (categories(a.path(), m), categories(b.path(), d));
        assert_eq!(cm, cd, "{name}: categories");
        let rows: usize = cm.iter().map(Vec::len).sum();
        let without = cm.iter().flatten().filter(|c| c.is_none()).count();
        let selected: u64 = memory["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["events"].as_u64().unwrap())
            .sum();
        assert!(without > 0);
        assert_eq!((rows - without) as u64, selected, "{name}: rows with a category");
    }
    let histograms = |dir: &Path| std::fs::read_to_string(dir.join("out/histograms.json"));
    assert_eq!(histograms(a.path()).unwrap(), histograms(b.path()).unwrap());
}

#[test]
fn disk_refinement_equals_memory() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let memory = run(&one_d("memory", true), a.path(), &[]);
    let disk = run(&one_d("disk", true), b.path(), &[]);
    for (m, d) in
        memory["runs"].as_array().unwrap().iter().zip(disk["runs"].as_array().unwrap())
    {
        assert_eq!(d["refined"], true);
        assert_eq!(d["boundaries"], m["boundaries"], "{}", m["name"]);
        assert_eq!(d["table"]["z"], m["table"]["z"], "{}", m["name"]);
    }
}

/// Returns a 1D pipeline on the toy whose discriminant is `expression`
/// of the toy's score.
fn squeezed(storage: &str, expression: &str) -> String {
    format!(
        "name: d\nseed: 3\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 15000, \
         background: 45000 }}\n{}selection:\n  sql: SELECT {expression} AS s, weight FROM \
         events\n  discriminants: [s]\n  weight: weight\n  events: {storage}\n\
         model:\n  kind: sigmoid\n  categories: [3]\nobjective:\n  penalties:\n    \
         low_background: {{ threshold: 5, weight: 1 }}\ntraining:\n  epochs: 3\n\
         output: out\n",
        toy_1d_processes("toy")
    )
}

#[test]
fn dense_scores_refine_on_disk_as_in_memory() {
    // Every score within 1e-5 (one of 100 000 bins of the range), and
    // scores piled within 1e-7 of 0, 0.5 and 1: the training barely moves
    // the cuts, so the refinement must find them among the events.
    // Z after the refinement against Z of the trained cuts, at least.
    let cases = [
        ("0.3 + score * 0.00001", 1.2),
        (
            "CASE WHEN score < 0.3 THEN score * 0.0000001 WHEN score < 0.6 THEN 0.5 + score * \
             0.0000001 ELSE 1 - score * 0.0000001 END",
            1.0,
        ),
    ];
    for (expression, gain) in cases {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let memory = run(&squeezed("memory", expression), a.path(), &[]);
        let disk = run(&squeezed("disk", expression), b.path(), &[]);
        let (m, d) = (&memory["runs"][0], &disk["runs"][0]);
        assert_eq!(d["refined"], true);
        assert_eq!(d["boundaries"], m["boundaries"], "{expression}");
        assert_eq!(d["table"]["z"], m["table"]["z"], "{expression}");
        // The refinement found better cuts than the training.
        assert!(number(m, &["table", "z"]) > gain * number(m, &["trained_z"]), "{m}");
    }
}

#[test]
fn disk_run_equals_memory_run_three_class() {
    let processes = three_class_processes("toy");
    let text = |storage: &str| {
        format!(
            "name: t\nseed: 6\nsources:\n  toy:\n    generator:\n      kind: three-class\n      \
             signal: 4000\n      background: 12000\n{processes}\
             selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n  \
             discriminants: [score_signal1, score_signal2]\n  weight: weight\n  \
             events: {storage}\nmodel:\n  kind: gmm\n  categories: [4]\n  means: simplex\n  \
             init: random\nobjective:\n  combine: geometric\ntraining:\n  epochs: 8\n  \
             chunk_events: 5000\nevaluation:\n  argmax_low: 0.3\noutput: out\n"
        )
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let memory = run(&text("memory"), a.path(), &[]);
    let disk = run(&text("disk"), b.path(), &[]);
    let (m, d) = (&memory["runs"][0], &disk["runs"][0]);
    close(number(m, &["table", "z"]), number(d, &["table", "z"]), "table");
    close(number(m, &["argmax", "z"]), number(d, &["argmax", "z"]), "argmax");
    assert_eq!(m["parameters"], d["parameters"]);
    assert_eq!(categories(a.path(), m), categories(b.path(), d));
    let plane = |dir: &Path| -> Value {
        let text = std::fs::read_to_string(dir.join("out/histograms.json")).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["plane"].clone()
    };
    assert_eq!(plane(a.path()), plane(b.path()));
}

#[test]
fn small_memory_limit_keeps_events_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&one_d("auto", false), dir.path(), &["--memory-limit", "1"]);
    assert_eq!(summary["event_storage"], "disk");
    let summary =
        run(&one_d("auto", false), dir.path(), &["--memory-limit", "4096", "--overwrite"]);
    assert_eq!(summary["event_storage"], "memory");
    // No temporary files are left in the run directories.
    for run in summary["runs"].as_array().unwrap() {
        let run_dir = dir.path().join("out").join(run["name"].as_str().unwrap());
        for entry in std::fs::read_dir(run_dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".gato"), "left behind: {name}");
        }
    }
}

/// An input whose rows alternate between processes, with some rows
/// dropped by the selection: every row gets the category of its own score,
/// on disk and in memory.
#[test]
fn interleaved_processes_get_their_own_categories() {
    let dir = tempfile::tempdir().unwrap();
    let n = 30_000;
    let processes: Vec<&str> =
        (0..n).map(|i| ["signal", "bkg1", "bkg1"][i % 3]).collect();
    // Signal rises towards 1, background falls; a few scores fall below the
    // selection's threshold.
    let score: Vec<f64> = (0..n)
        .map(|i| {
            let u = ((i * 7919) % 10_007) as f64 / 10_007.0;
            if i % 3 == 0 { u.sqrt() } else { u * u }
        })
        .collect();
    let weight = vec![1.0; n];
    let input = dir.path().join("mixed.parquet");
    crate::config_errors::write_parquet(&input, &processes, &score, &weight);
    for storage in ["memory", "disk"] {
        let text = format!(
            "name: m\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\n\
             processes:\n  - {{ name: signal, role: signal, source: mc }}\n\
             \x20 - {{ name: bkg1, role: background, source: mc }}\n\
             selection:\n  sql: SELECT score, weight FROM events WHERE score > 0.001\n  \
             discriminants: [score]\n  events: {storage}\n\
             model:\n  kind: sigmoid\n  categories: [3]\ntraining:\n  epochs: 3\n  \
             chunk_events: 4000\noutput: out\n",
            input.display()
        );
        let run_dir = dir.path().join(storage);
        std::fs::create_dir_all(&run_dir).unwrap();
        let summary = run(&text, &run_dir, &[]);
        assert_eq!(summary["event_storage"], storage);
        let r = &summary["runs"][0];
        let cuts: Vec<f64> = serde_json::from_value(r["boundaries"].clone()).unwrap();
        let got = categories(&run_dir, r);
        assert_eq!(got.len(), 1);
        for (i, (&x, c)) in score.iter().zip(&got[0]).enumerate() {
            let expected =
                (x > 0.001).then(|| cuts.iter().filter(|&&cut| x >= cut).count() as i32);
            assert_eq!(*c, expected, "{storage}: row {i}, score {x}, cuts {cuts:?}");
        }
    }
}

