//! The Polars engine: the same selection run by DataFusion and by Polars
//! gives the same events, bit for bit, and a whole run gives the same
//! numbers and categories.

use std::path::Path;
use std::process::Command;

use gato::config::{Pipeline, SelectEngine};
use gato::polars::prelude as pl;
use gato::polars_select::LazyQuery;
use gato::select::{Events, Keep, select_into};
use gato::source::Sources;
use gato::store::EventSet;
use indicatif::ProgressBar;
use serde_json::Value;

use crate::common::{gato_bin, pipeline, three_class_processes, toy_1d_processes};
use crate::disk::categories;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// Runs the selection of `p` on `engine` and returns the events, read back
/// chunk by chunk when `keep` puts them on disk.
fn select_with(p: &Pipeline, engine: SelectEngine, keep: Keep) -> gato::Result<Events> {
    let mut p = p.clone();
    p.selection.engine = engine;
    let sources = Sources::open(&p)?;
    let set = runtime().block_on(select_into(&p, &sources, keep, &ProgressBar::hidden()))?;
    match set {
        EventSet::Memory(events) => Ok(events),
        EventSet::Disk(_) => {
            let mut all = Events {
                discriminants: vec![Vec::new(); set.dims()],
                mass: set.has_mass().then(Vec::new),
                process_ranges: set.process_ranges().to_vec(),
                ..Events::default()
            };
            set.for_each_chunk(|chunk| {
                for (d, column) in chunk.discriminants.iter().enumerate() {
                    all.discriminants[d].extend_from_slice(column);
                }
                all.weight.extend_from_slice(&chunk.weight);
                all.process.extend_from_slice(&chunk.process);
                all.input.extend_from_slice(&chunk.input);
                all.row.extend_from_slice(&chunk.row);
                if let (Some(m), Some(c)) = (all.mass.as_mut(), chunk.mass.as_ref()) {
                    m.extend_from_slice(c);
                }
                Ok(())
            })?;
            Ok(all)
        }
    }
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that two selections hold the same events with the same values,
/// bit for bit.
fn assert_same(a: &Events, b: &Events) {
    assert_eq!(a.len(), b.len(), "number of events");
    assert_eq!(a.process, b.process, "process");
    assert_eq!(a.input, b.input, "input");
    assert_eq!(a.row, b.row, "row");
    assert_eq!(a.process_ranges, b.process_ranges, "process ranges");
    assert_eq!(bits(&a.weight), bits(&b.weight), "weight");
    assert_eq!(a.discriminants.len(), b.discriminants.len());
    for (d, (x, y)) in a.discriminants.iter().zip(&b.discriminants).enumerate() {
        assert_eq!(bits(x), bits(y), "discriminant {d}");
    }
    assert_eq!(a.mass.as_deref().map(bits), b.mass.as_deref().map(bits), "mass");
}

fn toy_1d(sql: &str) -> String {
    format!(
        "name: p\nseed: 4\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 3000, \
         background: 9000 }}\n{}selection:\n  sql: \"{sql}\"\n  discriminants: [score]\n  \
         weight: w\nmodel:\n  kind: sigmoid\n  categories: [3]\ntraining:\n  epochs: 4\n",
        toy_1d_processes("toy")
    )
}

#[test]
fn toy_selections_agree_exactly() {
    let one_d = pipeline(&toy_1d(
        "SELECT score, weight * 1.5 AS w FROM events WHERE score > 0.1 AND (process <> 'bkg3' \
         OR score > 0.5)",
    ));
    let datafusion = select_with(&one_d, SelectEngine::DataFusion, Keep::Memory).unwrap();
    let polars = select_with(&one_d, SelectEngine::Polars, Keep::Memory).unwrap();
    assert!(datafusion.len() > 1000, "{}", datafusion.len());
    assert!(datafusion.len() < 12_000, "{}", datafusion.len());
    let bkg3 = datafusion.process_ranges[3].clone();
    assert!(datafusion.discriminants[0][bkg3].iter().all(|&s| s > 0.5));
    assert_same(&datafusion, &polars);

    let three = pipeline(&format!(
        "name: t\nseed: 5\nsources:\n  toy:\n    generator: {{ kind: three-class, signal: \
         2000, background: 6000 }}\n{}selection:\n  sql: SELECT score_signal1, \
         score_signal2, weight FROM events WHERE score_signal1 + score_signal2 > 0.2\n  \
         discriminants: [score_signal1, score_signal2]\nmodel:\n  kind: gmm\n  \
         categories: [3]\n  means: simplex\n",
        three_class_processes("toy")
    ));
    let datafusion = select_with(&three, SelectEngine::DataFusion, Keep::Memory).unwrap();
    let polars = select_with(&three, SelectEngine::Polars, Keep::Memory).unwrap();
    assert!(datafusion.len() > 1000);
    assert_same(&datafusion, &polars);
}

/// Writes a 1D toy sample with `gato generate` and returns its path.
fn generate(dir: &Path, seed: &str) -> String {
    let path = dir.join(format!("sample{seed}.parquet"));
    let out = Command::new(gato_bin())
        .args(["generate", "toy-1d", "--out"])
        .arg(&path)
        .args(["--seed", seed, "--signal", "2000", "--background", "6000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path.display().to_string()
}

fn parquet_pipeline(files: &[String], sql: &str) -> String {
    parquet_pipeline_with(files, sql, "")
}

/// Writes a pipeline over `files` with `extra` lines added to `selection:`.
fn parquet_pipeline_with(files: &[String], sql: &str, extra: &str) -> String {
    let list = files.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "name: f\nsources:\n  mc:\n    files: [{list}]\n    process_column: process\n\
         processes:\n  - {{ name: sig, role: signal, source: mc, process_value: signal, \
         scale: {{ cross_section: 2, luminosity: 3, sum_generated_weights: 4 }} }}\n\
         \x20 - {{ name: bkg1, role: background, source: mc }}\n\
         \x20 - {{ name: bkg2, role: background, source: mc }}\n\
         selection:\n  sql: \"{sql}\"\n  discriminants: [score]\n  weight: w\n{extra}\
         model:\n  kind: sigmoid\n  categories: [3]\n"
    )
}

#[test]
fn parquet_selections_agree_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let files = [generate(dir.path(), "1"), generate(dir.path(), "2")];
    // Two inputs, a renamed process with a scale, unmatched processes
    // (bkg3 … bkg5) left out, a filter on the process name and a computed
    // weight.
    let p = pipeline(&parquet_pipeline(
        &files,
        "SELECT score, ABS(weight) * 2 AS w FROM events WHERE score > 0.05 OR process = 'sig'",
    ));
    let reference = select_with(&p, SelectEngine::DataFusion, Keep::Memory).unwrap();
    assert!(reference.input.contains(&0));
    assert!(reference.input.contains(&1));
    assert_eq!(reference.process_ranges.len(), 3);
    let polars = select_with(&p, SelectEngine::Polars, Keep::Memory).unwrap();
    assert_same(&reference, &polars);
    let disk = Keep::Disk { chunk: 1000, sort_bytes: 32 << 20 };
    let on_disk = select_with(&p, SelectEngine::Polars, disk).unwrap();
    assert_same(&reference, &on_disk);

    // The scale cross-section × luminosity / Σw_gen = 1.5 multiplies the
    // signal weights: Σw of the signal is 1.5 × 2 × Σ|w| of its rows.
    let signal = reference.process_ranges[0].clone();
    let sum: f64 = reference.weight[signal.clone()].iter().sum();
    let rows: Vec<f64> = {
        use gato::datafusion::arrow::array::{Array, Float64Array, StringArray};
        let mut out = Vec::new();
        for f in &files {
            for b in crate::common::read_parquet(Path::new(f)) {
                let w = b.column_by_name("weight").unwrap();
                let w = w.as_any().downcast_ref::<Float64Array>().unwrap();
                let pr = b.column_by_name("process").unwrap();
                let pr = pr.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    if pr.value(i) == "signal" {
                        out.push(w.value(i).abs() * 2.0 * 1.5);
                    }
                }
            }
        }
        out
    };
    assert_eq!(rows.len(), signal.len());
    let expected: f64 = rows.iter().sum();
    assert!((sum - expected).abs() <= 1e-9 * expected, "{sum} vs {expected}");
}

#[test]
fn subqueries_and_union_all_agree() {
    let sql = "WITH s AS (SELECT score, weight AS w FROM events WHERE process = 'signal') \
               SELECT score, w FROM s UNION ALL SELECT b.score, b.w FROM (SELECT score, \
               weight * 0.5 AS w FROM events WHERE process <> 'signal' AND score < 0.9) b";
    let p = pipeline(&toy_1d(sql));
    let datafusion = select_with(&p, SelectEngine::DataFusion, Keep::Memory).unwrap();
    let polars = select_with(&p, SelectEngine::Polars, Keep::Memory).unwrap();
    assert!(datafusion.len() > 1000);
    assert_same(&datafusion, &polars);
}

#[test]
fn lazy_query_matches_the_same_sql() {
    let sql = pipeline(&toy_1d("SELECT score, weight * 3 AS w FROM events WHERE score >= 0.25"));
    let reference = select_with(&sql, SelectEngine::DataFusion, Keep::Memory).unwrap();
    let mut lazy = sql.clone();
    lazy.selection.lazy = Some(LazyQuery::new(|events| {
        Ok(events
            .filter(pl::col("score").gt_eq(pl::lit(0.25)))
            .with_column((pl::col("weight") * pl::lit(3.0)).alias("w")))
    }));
    let polars = select_with(&lazy, SelectEngine::Polars, Keep::Memory).unwrap();
    assert_same(&reference, &polars);

    // A lazy query that drops the hidden columns is rejected.
    let mut dropped = sql.clone();
    dropped.selection.lazy =
        Some(LazyQuery::new(|events| Ok(events.select([pl::col("score"), pl::col("weight")]))));
    let e = select_with(&dropped, SelectEngine::Polars, Keep::Memory).unwrap_err().to_string();
    assert!(e.contains("cannot be traced back"), "{e}");
    assert!(e.contains("_gato_"), "{e}");
}

#[test]
fn non_selections_are_rejected() {
    let cases = [
        (
            "SELECT a.score, a.weight AS w FROM events a JOIN events b ON a.score = b.score",
            "self-join",
        ),
        ("SELECT process, SUM(weight) AS w, MAX(score) AS score FROM events GROUP BY process", "GROUP BY"),
        ("SELECT DISTINCT score, weight AS w FROM events", "DISTINCT"),
        ("SELECT score, weight AS w FROM events UNION SELECT score, weight AS w FROM events", "UNION ALL"),
        ("SELECT score, weight AS w, score AS _gato_x FROM events", "_gato_x"),
        ("SELECT score, weight AS w FROM events; SELECT 1", "exactly one SELECT"),
        ("SELECT score AS x, weight AS w FROM events", "no column `score`; it returns [x, w]"),
        ("SELECT score, process AS w FROM events", "column `w` has type str"),
        ("SELECT scor, weight AS w FROM events", "its columns are ["),
        (
            "SELECT score, weight AS w FROM events WHERE EXISTS \
             (SELECT 1 FROM events e WHERE e.score > 0.5)",
            "expression Exists is not currently supported; write the selection \
             without it, or use `engine: datafusion`",
        ),
    ];
    for (sql, expected) in cases {
        let e = select_with(&pipeline(&toy_1d(sql)), SelectEngine::Polars, Keep::Memory)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{sql}:\n{e}");
        // Polars' syntax trees are left out of the message.
        assert!(!e.contains("Span"), "{sql}:\n{e}");
    }
    // Both engines reject an event that the query returns twice.
    let twice = pipeline(&toy_1d(
        "SELECT score, weight AS w FROM events UNION ALL SELECT score, weight AS w FROM events",
    ));
    for engine in [SelectEngine::DataFusion, SelectEngine::Polars] {
        let e = select_with(&twice, engine, Keep::Memory).unwrap_err().to_string();
        assert!(e.contains("more than once") || e.contains("twice"), "{engine:?}: {e}");
    }
}

fn run(text: &str, dir: &Path) -> (Value, String) {
    crate::common::run_pipeline(text, dir, &[])
}

#[test]
fn run_with_polars_equals_run_with_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let files = [generate(dir.path(), "3")];
    let text = |engine: &str| {
        format!(
            "{}training:\n  epochs: 6\noutput: out\n",
            parquet_pipeline_with(
                &files,
                "SELECT score, weight AS w FROM events WHERE score > 0.02",
                &format!("  engine: {engine}\n"),
            )
        )
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (datafusion, datafusion_log) = run(&text("datafusion"), a.path());
    let (polars, polars_log) = run(&text("polars"), b.path());
    assert_eq!(datafusion["engine"], "datafusion");
    assert_eq!(polars["engine"], "polars");
    assert_eq!(polars["versions"]["polars"], gato::polars::VERSION);
    assert_eq!(datafusion["processes"], polars["processes"]);
    let (rd, rp) = (&datafusion["runs"][0], &polars["runs"][0]);
    assert_eq!(rd["boundaries"], rp["boundaries"]);
    assert_eq!(rd["table"], rp["table"]);
    let (cd, cp) = (categories(a.path(), rd), categories(b.path(), rp));
    assert_eq!(cd, cp);
    // Rows of bkg3 … bkg5 and rows with score ≤ 0.02 have no category.
    assert!(cd[0].iter().any(Option::is_none));
    assert!(cd[0].iter().any(Option::is_some));

    // Both engines count the rows of bkg3 … bkg5, which match no process.
    let mut unmatched = std::collections::BTreeMap::<String, usize>::new();
    for batch in crate::common::read_parquet(Path::new(&files[0])) {
        for name in crate::common::string_column(&batch, "process") {
            if ["bkg3", "bkg4", "bkg5"].contains(&name.as_str()) {
                *unmatched.entry(name).or_default() += 1;
            }
        }
    }
    let counts: Vec<String> = unmatched.iter().map(|(v, n)| format!("{v}: {n}")).collect();
    let expected = format!("[{}] match no process", counts.join(", "));
    assert!(datafusion_log.contains(&expected), "{expected}\n{datafusion_log}");
    assert!(polars_log.contains(&expected), "{expected}\n{polars_log}");

    // The warning is recorded in summary.json and shown in report.html.
    for (summary, dir) in [(&datafusion, a.path()), (&polars, b.path())] {
        let warnings: Vec<&str> =
            summary["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let unmatched: Vec<&&str> = warnings.iter().filter(|w| w.contains(&expected)).collect();
        assert_eq!(unmatched.len(), 1, "{warnings:?}");
        let html = std::fs::read_to_string(dir.join("out/report.html")).unwrap();
        assert!(html.contains("<h2>Warnings</h2>"), "no warnings section");
        assert!(html.contains(&expected), "{expected} not in report.html");
    }
}

#[test]
fn half_float_column_is_named() {
    use gato::datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
    use gato::datafusion::arrow::compute::cast;
    use gato::datafusion::arrow::datatypes::DataType;
    use gato::datafusion::arrow::record_batch::RecordBatch;
    use gato::datafusion::parquet::arrow::ArrowWriter;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.parquet");
    let score = Float64Array::from(vec![0.9, 0.2, 0.4, 0.7]);
    let aux = cast(&score, &DataType::Float16).unwrap();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("process", std::sync::Arc::new(StringArray::from(vec!["signal", "bkg1", "bkg2", "bkg1"]))),
        ("score", std::sync::Arc::new(score)),
        ("weight", std::sync::Arc::new(Float64Array::from(vec![1.0; 4]))),
        ("aux", aux),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let file = path.display().to_string();
    let p = pipeline(&parquet_pipeline(&[file.clone()], "SELECT score, weight AS w FROM events"));
    let e = select_with(&p, SelectEngine::Polars, Keep::Memory).unwrap_err().to_string();
    assert!(e.contains(&file), "{e}");
    assert!(e.contains("column `aux` is Float16"), "{e}");
    assert!(e.contains("selection.engine: datafusion"), "{e}");
    // DataFusion reads the same file.
    let events = select_with(&p, SelectEngine::DataFusion, Keep::Memory).unwrap();
    assert_eq!(events.len(), 4);
}

#[test]
fn table_name_in_any_case_agrees() {
    let lower = pipeline(&toy_1d("SELECT score, weight AS w FROM events WHERE score > 0.5"));
    let expected = select_with(&lower, SelectEngine::DataFusion, Keep::Memory).unwrap();
    for table in ["EVENTS", "Events", "\\\"events\\\""] {
        let sql = format!("SELECT score, weight AS w FROM {table} WHERE score > 0.5");
        let p = pipeline(&toy_1d(&sql));
        let polars = select_with(&p, SelectEngine::Polars, Keep::Memory)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_same(&expected, &polars);
    }
}
