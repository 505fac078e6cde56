//! The `gato` binary end to end: generate a sample, run a pipeline on it,
//! and check the outputs against a float64 recomputation from the written
//! files.

use std::path::Path;
use std::process::Command;

use gato::datafusion::arrow::array::{Array, Float64Array, Int32Array, StringArray};
use gato::datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::common::{gato_bin, read_parquet, toy_1d_processes};

fn gato(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(gato_bin()).args(args).current_dir(dir).output().unwrap()
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
}

fn write_pipeline(dir: &Path, extra_where: &str) -> std::path::PathBuf {
    let text = format!(
        "name: cli\nseed: 5\nsources:\n  mc:\n    files: [sample.parquet]\n    process_column: process\n{}\
         selection:\n  sql: SELECT score, weight FROM events {extra_where}\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [3]\n\
         objective:\n  significance: asimov\n\
         training:\n  epochs: 20\n\
         output: out\n",
        toy_1d_processes("mc")
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cli_generate_run_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--seed",
            "9",
            "--signal",
            "3000",
            "--background",
            "9000",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let input_bytes = std::fs::read(dir.path().join("sample.parquet")).unwrap();

    write_pipeline(dir.path(), "WHERE score > 0.05");
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sigmoid_k3"), "{stdout}");
    assert!(stdout.contains("best binned"), "{stdout}");

    // The input is untouched.
    assert_eq!(std::fs::read(dir.path().join("sample.parquet")).unwrap(), input_bytes);

    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["schema_version"], 2);
    let run = &summary["runs"][0];
    let cuts: Vec<f64> = run["boundaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(cuts.len(), 2);

    // Every input row and column, in order, plus `category`.
    let input = read_parquet(&dir.path().join("sample.parquet"));
    let output = read_parquet(&dir.path().join("out/sigmoid_k3/sample.parquet"));
    let input_rows: usize = input.iter().map(|b| b.num_rows()).sum();
    let output_rows: usize = output.iter().map(|b| b.num_rows()).sum();
    assert_eq!(output_rows, input_rows);
    let names: Vec<String> =
        output[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["process", "weight", "score", "category"]);

    // Recompute the category table from the output file in float64.
    let mut signal = [0.0f64; 3];
    let mut background = [0.0f64; 3];
    let mut sumw2 = [0.0f64; 3];
    let mut in_row = 0usize;
    let input_scores: Vec<f64> = input
        .iter()
        .flat_map(|b| column::<Float64Array>(b, "score").values().to_vec())
        .collect();
    for batch in &output {
        let process = column::<StringArray>(batch, "process");
        let weight = column::<Float64Array>(batch, "weight");
        let score = column::<Float64Array>(batch, "score");
        let category = column::<Int32Array>(batch, "category");
        for i in 0..batch.num_rows() {
            let x = score.value(i);
            assert_eq!(
                x.to_bits(),
                input_scores[in_row].to_bits(),
                "row {in_row} changed"
            );
            in_row += 1;
            if x <= 0.05 {
                assert!(category.is_null(i), "rejected row {in_row} has a category");
                continue;
            }
            let expected = cuts.iter().filter(|&&c| c <= x).count() as i32;
            assert_eq!(category.value(i), expected, "row {in_row}, score {x}");
            let c = expected as usize;
            if process.value(i) == "signal" {
                signal[c] += weight.value(i);
            } else {
                background[c] += weight.value(i);
                sumw2[c] += weight.value(i).powi(2);
            }
        }
    }
    let table = &run["table"]["categories"];
    let mut z2 = 0.0;
    for c in 0..3 {
        let row = &table[c];
        assert!((row["signal"][0].as_f64().unwrap() - signal[c]).abs() < 1e-9);
        assert!((row["background"].as_f64().unwrap() - background[c]).abs() < 1e-7);
        assert!((row["background_sumw2"].as_f64().unwrap() - sumw2[c]).abs() < 1e-9);
        let (s, b) = (signal[c], background[c]);
        let z = (2.0 * ((s + b) * (1.0 + s / b).ln() - s)).sqrt();
        assert!((row["z"][0].as_f64().unwrap() - z).abs() < 1e-9, "category {c}");
        z2 += z * z;
    }
    assert!((run["table"]["z"].as_f64().unwrap() - z2.sqrt()).abs() < 1e-9);

    // The learnt cuts beat three equal bins, and refining them never loses.
    let learnt = run["table"]["z"].as_f64().unwrap();
    assert!(learnt > run["equidistant"]["z"].as_f64().unwrap());
    assert_eq!(run["refined"], true);
    assert!(learnt >= run["trained_z"].as_f64().unwrap());

    // The saved model reproduces the run's categories with `gato apply`.
    let out = gato(
        &[
            "apply",
            "--model",
            "out/sigmoid_k3/model.json",
            "--out",
            "applied",
            "sample.parquet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied = read_parquet(&dir.path().join("applied/sample.parquet"));
    let run_categories: Vec<Option<i32>> = output
        .iter()
        .flat_map(|b| column::<Int32Array>(b, "category").iter().collect::<Vec<_>>())
        .collect();
    let applied_categories: Vec<Option<i32>> = applied
        .iter()
        .flat_map(|b| column::<Int32Array>(b, "category").iter().collect::<Vec<_>>())
        .collect();
    assert_eq!(applied_categories.len(), run_categories.len());
    for (row, (a, r)) in applied_categories.iter().zip(&run_categories).enumerate() {
        match r {
            Some(c) => assert_eq!(a, &Some(*c), "row {row}"),
            None => assert_eq!(
                a,
                &Some(0),
                "row {row}: rejected by the selection, score ≤ 0.05"
            ),
        }
    }

    // A second run needs --overwrite and then gives the same numbers.
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass --overwrite"), "{stderr}");
    let out = gato(&["-q", "run", "pipeline.yaml", "--overwrite"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(again["runs"][0]["table"], run["table"]);
    assert_eq!(again["runs"][0]["parameters"], run["parameters"]);

    // Overwriting with other K removes the earlier run directory.
    let text = std::fs::read_to_string(dir.path().join("pipeline.yaml")).unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        text.replace("categories: [3]", "categories: [2]"),
    )
    .unwrap();
    let out = gato(&["-q", "run", "pipeline.yaml", "--overwrite"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("out/sigmoid_k3").exists());
    assert!(dir.path().join("out/sigmoid_k2/sample.parquet").exists());
}

#[test]
fn cli_validate_rejects_unknown_discriminant() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--signal",
            "10",
            "--background",
            "100",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let path = write_pipeline(dir.path(), "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("discriminants: [score]", "discriminants: [scor]");
    std::fs::write(&path, text).unwrap();
    let out = gato(&["validate", "pipeline.yaml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the query returns no column `scor`; it returns [score, weight]"),
        "{stderr}"
    );
}

#[test]
fn cli_outputs_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--signal",
            "10",
            "--background",
            "100",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let mode = std::fs::metadata(dir.path().join("sample.parquet"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn cli_validate_reports_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--signal",
            "10",
            "--background",
            "100",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    write_pipeline(dir.path(), "");
    let out = gato(&["validate", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pipeline.yaml: valid; 6 processes, 1 input(s), K = [3]"
    );
}

#[test]
fn cli_same_result_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    for (i, seed) in ["1", "2", "3"].iter().enumerate() {
        let name = format!("part{i}.parquet");
        let out = gato(
            &[
                "generate",
                "toy-1d",
                "--out",
                &name,
                "--seed",
                seed,
                "--signal",
                "2000",
                "--background",
                "6000",
            ],
            dir.path(),
        );
        assert!(out.status.success());
    }
    let text = format!(
        "name: threads\nsources:\n  mc:\n    files: [\"part*.parquet\"]\n    process_column: process\n{}\
         selection:\n  sql: SELECT score, weight FROM events WHERE score > 0.01\n  discriminants: [score]\n\
         model:\n  kind: gmm\n  categories: [3]\n\
         training:\n  epochs: 15\n  restarts: 2\n",
        toy_1d_processes("mc")
    );
    std::fs::write(dir.path().join("pipeline.yaml"), text).unwrap();
    let mut results = Vec::new();
    for threads in ["1", "4"] {
        let out_dir = format!("out{threads}");
        let out = Command::new(gato_bin())
            .args(["-q", "run", "pipeline.yaml", "--out", &out_dir])
            .env("TOKIO_WORKER_THREADS", threads)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(&out_dir).join("summary.json"))
                .unwrap(),
        )
        .unwrap();
        let categories: Vec<Vec<Option<i32>>> = (0..3)
            .map(|i| {
                let path =
                    dir.path().join(&out_dir).join(format!("gmm_k3/part{i}.parquet"));
                read_parquet(&path)
                    .iter()
                    .flat_map(|b| {
                        column::<Int32Array>(b, "category").iter().collect::<Vec<_>>()
                    })
                    .collect()
            })
            .collect();
        results.push((summary, categories));
    }
    // The saved GMM reproduces the categories through `gato apply`.
    let out = Command::new(gato_bin())
        .args(["apply", "--model", "out1/gmm_k3/model.json", "--out", "applied"])
        .args(["part0.parquet", "part1.parquet", "part2.parquet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..3 {
        let applied: Vec<Option<i32>> =
            read_parquet(&dir.path().join(format!("applied/part{i}.parquet")))
                .iter()
                .flat_map(|b| {
                    column::<Int32Array>(b, "category").iter().collect::<Vec<_>>()
                })
                .collect();
        for (row, (a, r)) in applied.iter().zip(&results[0].1[i]).enumerate() {
            if r.is_some() {
                assert_eq!(a, r, "part{i} row {row}");
            }
        }
    }

    let (a, b) = (&results[0], &results[1]);
    assert_eq!(a.0["runs"][0]["table"], b.0["runs"][0]["table"]);
    assert_eq!(a.0["runs"][0]["parameters"], b.0["runs"][0]["parameters"]);
    assert_eq!(
        a.0["runs"][0]["restarts"][1]["hard_z"],
        b.0["runs"][0]["restarts"][1]["hard_z"]
    );
    assert_eq!(a.1, b.1);
}

#[test]
fn cli_apply_rejects_other_version_and_missing_column() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "sample.parquet",
            "--signal",
            "300",
            "--background",
            "900",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    write_pipeline(dir.path(), "");
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model_path = dir.path().join("out/sigmoid_k3/model.json");
    let text = std::fs::read_to_string(&model_path).unwrap();

    std::fs::write(
        dir.path().join("v2.json"),
        text.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    let out = gato(
        &["apply", "--model", "v2.json", "--out", "a", "sample.parquet"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: model file v2.json: version 2 is not supported; this gato reads version 1, \
         so retrain the model or use the gato that wrote it"
    );

    let renamed = text.replace("\"score\"", "\"nn_score\"");
    std::fs::write(dir.path().join("renamed.json"), renamed).unwrap();
    let out = gato(
        &["apply", "--model", "renamed.json", "--out", "a", "sample.parquet"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: input sample.parquet: the model reads column `nn_score`, which the file lacks; \
         the file has columns [process, weight, score]"
    );
    // Nothing was written, and the output directory made for it is gone.
    assert!(!dir.path().join("a").exists());

    // A good input followed by a bad one: every input is checked first, so
    // no output is written.
    std::fs::write(dir.path().join("junk.parquet"), b"not parquet").unwrap();
    let out = gato(
        &[
            "apply",
            "--model",
            "out/sigmoid_k3/model.json",
            "--out",
            "b",
            "sample.parquet",
            "junk.parquet",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("input junk.parquet"));
    assert!(!dir.path().join("b").exists());

    // Cut positions edited by hand no longer match the parameters.
    let value: Value = serde_json::from_str(&text).unwrap();
    let cuts = value["boundaries"].as_array().unwrap().clone();
    let edited = text.replacen(
        &format!("{}", cuts[0].as_f64().unwrap()),
        &format!("{}", cuts[0].as_f64().unwrap() + 0.01),
        1,
    );
    std::fs::write(dir.path().join("edited.json"), edited).unwrap();
    let out = gato(
        &["apply", "--model", "edited.json", "--out", "c", "sample.parquet"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: model file edited.json: invalid: the cut positions"),
        "{stderr}"
    );
    assert!(stderr.contains("do not match the parameters"), "{stderr}");

    // Two inputs of one file name would share an output: rejected before
    // anything is written.
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::copy(
        dir.path().join("sample.parquet"),
        dir.path().join("other/sample.parquet"),
    )
    .unwrap();
    let model = "out/sigmoid_k3/model.json";
    let out = gato(
        &[
            "apply",
            "--model",
            model,
            "--out",
            "d",
            "sample.parquet",
            "other/sample.parquet",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "two inputs are named sample.parquet; their outputs in d would collide"
        ),
        "{stderr}"
    );
    assert!(!dir.path().join("d").exists());

    // Scores outside the model's range [0, 1] are counted and categorised;
    // a NaN score gets no category.
    let odd = dir.path().join("odd.parquet");
    crate::config_errors::write_parquet(
        &odd,
        &["signal", "bkg1", "bkg1", "bkg1"],
        &[-0.5, 0.5, 1.5, f64::NAN],
        &[1.0; 4],
    );
    let out = gato(&["apply", "--model", model, "--out", "e", "odd.parquet"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(4 rows, 1 without a category)"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 rows have `score` outside the model's range [0, 1]"),
        "{stderr}"
    );
    let categories = crate::common::category_column(&dir.path().join("e/odd.parquet"));
    assert_eq!(categories[0], Some(0));
    assert_eq!(categories[2], Some(2));
    assert_eq!(categories[3], None);

    // An output that is the input is named as such, not as an existing file.
    let out =
        gato(&["apply", "--model", model, "--out", ".", "sample.parquet"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the input file"), "{stderr}");
}

/// Files the run would replace: an input inside a run directory, or a run
/// directory left by hand, need --overwrite or are rejected.
#[test]
fn run_protects_inputs_and_run_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("out/sigmoid_k3")).unwrap();
    let out = gato(
        &[
            "generate",
            "toy-1d",
            "--out",
            "out/sigmoid_k3/sample.parquet",
            "--signal",
            "300",
            "--background",
            "900",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let input = std::fs::read(dir.path().join("out/sigmoid_k3/sample.parquet")).unwrap();
    let text = std::fs::read_to_string(write_pipeline(dir.path(), "")).unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        text.replace("[sample.parquet]", "[out/sigmoid_k3/sample.parquet]"),
    )
    .unwrap();
    for args in [
        &["-q", "run", "pipeline.yaml"][..],
        &["-q", "run", "pipeline.yaml", "--overwrite"][..],
    ] {
        let out = gato(args, dir.path());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("the input out/sigmoid_k3/sample.parquet lies in"),
            "{stderr}"
        );
        assert!(stderr.contains("which this run writes or removes"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("out/sigmoid_k3/sample.parquet")).unwrap(),
        input
    );

    // A run directory without summary.json beside it: rejected without
    // --overwrite, and the file in it kept.
    std::fs::rename(
        dir.path().join("out/sigmoid_k3/sample.parquet"),
        dir.path().join("sample.parquet"),
    )
    .unwrap();
    std::fs::write(dir.path().join("out/sigmoid_k3/notes.txt"), "mine").unwrap();
    write_pipeline(dir.path(), "");
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("out/sigmoid_k3 already exists and this run would replace it; pass --overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/sigmoid_k3/notes.txt")).unwrap(),
        "mine"
    );
    let out = gato(&["-q", "run", "pipeline.yaml", "--overwrite"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("out/sigmoid_k3/notes.txt").exists());
    assert!(!dir.path().join("out/.gato-staging").exists());
}

/// Files that each hold one process but carry a `process` column of their
/// own get one warning, since the selection's `process` hides that column.
#[test]
fn own_process_column_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    for (name, process) in [("sig.parquet", "s"), ("bkg.parquet", "b")] {
        crate::config_errors::write_parquet(
            &dir.path().join(name),
            &[process, process],
            &[0.2, 0.8],
            &[1.0, 1.0],
        );
    }
    let text = "name: own\nprocesses:\n  - { name: signal, role: signal, files: [sig.parquet] }\n  \
                - { name: bkg, role: background, files: [bkg.parquet] }\nselection:\n  sql: \
                SELECT score, weight FROM events\n  discriminants: [score]\nmodel:\n  kind: \
                sigmoid\n  categories: [2]\n";
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    let out = gato(&["validate", "p.yaml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("own `process` column").count(), 1, "{stderr}");
    assert!(stderr.contains("inputs=2"), "{stderr}");
    assert!(stderr.contains("sig.parquet"), "{stderr}");
}
