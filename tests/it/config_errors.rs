//! Bad pipelines and bad inputs end in one clear error that names the YAML
//! position, file, column or value, and what to do.

use std::path::Path;
use std::sync::Arc;

use gato::config::Pipeline;
use gato::datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use gato::datafusion::arrow::datatypes::{DataType, Field, Schema};
use gato::datafusion::arrow::record_batch::RecordBatch;
use gato::datafusion::parquet::arrow::ArrowWriter;
use gato::datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use gato::source::Sources;

const BASE: &str = "\
name: t
sources:
  toy:
    generator: { kind: toy-1d, signal: 100, background: 300 }
processes:
  - { name: signal, role: signal, source: toy }
  - { name: bkg1, role: background, source: toy }
selection:
  sql: SELECT score, weight FROM events
  discriminants: [score]
model:
  kind: sigmoid
  categories: [3]
";

fn config_error(text: &str) -> String {
    Pipeline::from_text(text, "p.yaml").unwrap_err().to_string()
}

fn select_error(text: &str) -> String {
    let pipeline = Pipeline::from_text(text, "p.yaml").unwrap_or_else(|e| panic!("{e}"));
    let sources = match Sources::open(&pipeline) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(gato::select::select(&pipeline, &sources)).unwrap_err().to_string()
}

fn write_file_pipeline(path: &Path, sql: &str) -> String {
    format!(
        "name: t\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\n\
         processes:\n  - {{ name: signal, role: signal, source: mc }}\n\
         \x20 - {{ name: bkg1, role: background, source: mc }}\n\
         selection:\n  sql: {sql}\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [3]\n",
        path.display()
    )
}

/// Writes the columns `process`, `score` and `weight` to `path` without a
/// page index, as pyarrow and pandas write Parquet by default.
pub(crate) fn write_parquet(
    path: &Path,
    process: &[&str],
    score: &[f64],
    weight: &[f64],
) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("process", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("weight", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(process.to_vec())),
        Arc::new(Float64Array::from(score.to_vec())),
        Arc::new(Float64Array::from(weight.to_vec())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_offset_index_disabled(true)
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props))
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Writes a Parquet file with one signal and one background event.
fn two_event_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(&path, &["signal", "bkg1"], &[0.5, 0.2], &[1.0, 1.0]);
    (dir, path)
}

#[test]
fn error_unknown_key_gives_line_and_column() {
    let text = BASE.replace("  kind: sigmoid\n", "  kind: sigmoid\n  steepnes: 3\n");
    let err = config_error(&text);
    assert!(
        err.starts_with(
            "p.yaml: invalid pipeline: line 13 column 3: unknown field `steepnes`"
        ),
        "{err}"
    );
}

#[test]
fn error_wrong_type_gives_line_and_column() {
    let err = config_error(&BASE.replace("categories: [3]", "categories: three"));
    assert!(err.starts_with("p.yaml: invalid pipeline: line 13 column 15:"), "{err}");
    assert!(err.contains("--> p.yaml:13:15"), "{err}");
}

#[test]
fn error_negative_epochs() {
    let err = config_error(&format!("{BASE}training:\n  epochs: -5\n"));
    assert!(
        err.starts_with("p.yaml: invalid pipeline: line 15 column 11: invalid"),
        "{err}"
    );
}

#[test]
fn error_too_few_categories() {
    let err = config_error(&BASE.replace("categories: [3]", "categories: [3, 1]"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: every number of categories must be at least 2, got 1"
    );
}

#[test]
fn error_zero_epochs() {
    let err = config_error(&format!("{BASE}training:\n  epochs: 0\n"));
    assert_eq!(err, "p.yaml: training.epochs: must be between 1 and 1000000, got 0");
}

#[test]
fn error_unset_environment_variable() {
    let err = config_error(&BASE.replace("name: t", "name: ${GATO_TEST_SURELY_UNSET}"));
    assert_eq!(
        err,
        "p.yaml: line 1: environment variable GATO_TEST_SURELY_UNSET is not set; set it or give \
         a default as `${GATO_TEST_SURELY_UNSET:-VALUE}`"
    );
}

#[test]
fn error_no_signal_process() {
    let err = config_error(&BASE.replace("role: signal", "role: background"));
    assert_eq!(err, "p.yaml:6:5: processes: no process has role `signal`; add one");
}

#[test]
fn error_steepness_not_positive() {
    let text = BASE.replace(
        "  categories: [3]\n",
        "  categories: [3]\n  steepness: { initial: 0 }\n",
    );
    let err = config_error(&text);
    assert_eq!(
        err,
        "p.yaml:14:14: model.steepness: `initial` must be finite and positive, got 0"
    );
}

#[test]
fn error_learning_rate_rising() {
    let text = format!(
        "{BASE}optimizer:\n  learning_rate: {{ schedule: cosine, initial: 0.001, final: 0.1 }}\n"
    );
    let err = config_error(&text);
    assert!(
        err.starts_with("p.yaml:15:18: optimizer.learning_rate: `final` (0.1) is above `initial` (0.001)"),
        "{err}"
    );
}

#[test]
fn error_empty_range() {
    let text =
        BASE.replace("  categories: [3]\n", "  categories: [3]\n  range: [1.0, 1.0]\n");
    let err = config_error(&text);
    assert_eq!(
        err,
        "p.yaml:14:10: model.range: must be [low, high] with finite low < high, got [1, 1]"
    );
}

#[test]
fn error_unknown_source() {
    let err = config_error(
        &BASE.replace("role: signal, source: toy", "role: signal, source: mc"),
    );
    assert_eq!(
        err,
        "p.yaml:6:5: processes.source: process `signal` refers to source `mc`, which is not \
         defined; defined sources: [toy]"
    );
}

#[test]
fn error_missing_input_file() {
    let err = config_error(&write_file_pipeline(
        Path::new("/nonexistent/x.parquet"),
        "SELECT 1",
    ));
    assert_eq!(
        err,
        "p.yaml: sources.mc: input file /nonexistent/x.parquet not found; check the path \
         (relative paths are relative to the working directory)"
    );
}

#[test]
fn error_glob_matches_nothing() {
    let err = config_error(&write_file_pipeline(
        Path::new("/nonexistent/*.parquet"),
        "SELECT 1",
    ));
    assert_eq!(
        err,
        "p.yaml: sources.mc: glob pattern /nonexistent/*.parquet matches no file"
    );
}

#[test]
fn error_file_not_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    std::fs::write(&path, "process,score,weight\nsignal,0.5,1\n").unwrap();
    let err =
        select_error(&write_file_pipeline(&path, "SELECT score, weight FROM events"));
    assert!(
        err.starts_with(&format!(
            "input {}: not a readable Parquet file",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn error_truncated_parquet() {
    let (_dir, path) = two_event_file();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err =
        select_error(&write_file_pipeline(&path, "SELECT score, weight FROM events"));
    assert!(
        err.starts_with(&format!(
            "input {}: not a readable Parquet file",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn error_missing_process_column_lists_columns() {
    let (_dir, path) = two_event_file();
    let text = write_file_pipeline(&path, "SELECT score, weight FROM events")
        .replace("process_column: process", "process_column: proc");
    let err = select_error(&text);
    assert_eq!(
        err,
        format!(
            "input {}: process column `proc` not found; the file has columns [process, score, weight]",
            path.display()
        )
    );
}

#[test]
fn error_sql_unknown_column_shows_datafusion_message() {
    let (_dir, path) = two_event_file();
    let err =
        select_error(&write_file_pipeline(&path, "SELECT scor, weight FROM events"));
    assert!(err.starts_with("selection: the SQL failed to plan:"), "{err}");
    assert!(err.contains("scor"), "{err}");
    assert!(err.contains("its columns are [score, weight, process]"), "{err}");
}

#[test]
fn error_sql_unknown_column_hides_hidden_columns() {
    let (_dir, path) = two_event_file();
    let err = select_error(&write_file_pipeline(&path, "SELECT qqq, weight FROM events"));
    assert!(
        err.contains("Valid fields are events.score, events.weight, events.process."),
        "{err}"
    );
    assert!(!err.contains("_gato_"), "{err}");
}

#[test]
fn error_sql_syntax() {
    let (_dir, path) = two_event_file();
    let err =
        select_error(&write_file_pipeline(&path, "SELEC score, weight FROM events"));
    assert!(
        err.starts_with("selection: the SQL failed to plan: SQL error: ParserError"),
        "{err}"
    );
}

#[test]
fn error_selection_lacks_discriminant() {
    let (_dir, path) = two_event_file();
    let err = select_error(&write_file_pipeline(&path, "SELECT weight FROM events"));
    assert_eq!(
        err,
        "selection: the query returns no column `score`; it returns [weight]. Return it, or \
         change `selection.discriminants` / `selection.weight`"
    );
}

#[test]
fn error_aggregating_selection() {
    let (_dir, path) = two_event_file();
    let sql =
        "SELECT max(score) AS score, sum(weight) AS weight FROM events GROUP BY process";
    let err = select_error(&write_file_pipeline(&path, sql));
    assert!(
        err.starts_with("selection: the query cannot be used as a selection:"),
        "{err}"
    );
    assert!(err.contains("one row per event"), "{err}");
}

#[test]
fn error_selection_repeats_events() {
    let (_dir, path) = two_event_file();
    let sql =
        "SELECT score, weight FROM events UNION ALL SELECT score, weight FROM events";
    let err = select_error(&write_file_pipeline(&path, sql));
    assert_eq!(
        err,
        format!(
            "selection: the query returned row 0 of input {} more than once; a selection must \
             return each event at most once (no UNION ALL of `events` with itself, no joins that \
             match an event several times)",
            path.display()
        )
    );
}

#[test]
fn error_empty_input_path() {
    let err = config_error(&write_file_pipeline(Path::new(""), "SELECT 1"));
    assert_eq!(
        err,
        "p.yaml: sources.mc: an input path is empty; is the environment variable that should \
         name it unset or empty?"
    );
}

#[test]
fn error_total_background_not_positive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(
        &path,
        &["signal", "bkg1", "bkg1"],
        &[0.5, 0.2, 0.3],
        &[1.0, 1.0, -1.0],
    );
    let err =
        select_error(&write_file_pipeline(&path, "SELECT score, weight FROM events"));
    assert_eq!(
        err,
        "selection: the total background yield after the selection is 0, but it must be \
         positive; check the weights and the `scale` of the background processes"
    );
}

#[test]
fn error_reserved_column_name() {
    let (_dir, path) = two_event_file();
    let err = select_error(&write_file_pipeline(
        &path,
        "SELECT score, weight, 5 AS _gato_row FROM events",
    ));
    assert!(
        err.contains("the output column `_gato_row` uses the prefix `_gato_`"),
        "{err}"
    );
}

#[test]
fn selection_join_with_lookup_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(&path, &["signal", "bkg1", "bkg1"], &[0.5, 0.2, 0.3], &[1.0, 1.0, 3.0]);
    let sql = "SELECT score, weight * COALESCE(f.k, 1.0) AS weight FROM events \
               LEFT JOIN (VALUES ('signal', 2.0)) AS f(p, k) ON events.process = f.p";
    let pipeline = crate::common::pipeline(&write_file_pipeline(&path, sql));
    let (_, events) = crate::common::select_events(&pipeline);
    assert_eq!(events.weight, [2.0, 1.0, 3.0]);
    assert_eq!(events.row, [0, 1, 2]);
}

#[test]
fn error_self_join() {
    let (_dir, path) = two_event_file();
    let sql = "SELECT a.score, a.weight FROM events a JOIN events b ON a.score = b.score";
    let err = select_error(&write_file_pipeline(&path, sql));
    assert!(err.contains("uses the table `events` twice"), "{err}");
}

#[test]
fn error_same_file_two_spellings() {
    let (_dir, path) = two_event_file();
    let other = path.parent().unwrap().join(".").join("x.parquet");
    let text = write_file_pipeline(&path, "SELECT score, weight FROM events").replace(
        &format!("files: [\"{}\"]", path.display()),
        &format!("files: [\"{}\", \"{}\"]", path.display(), other.display()),
    );
    let err = config_error(&text);
    assert_eq!(
        err,
        format!(
            "p.yaml: sources.mc: file {} is listed twice: `sources.mc` already reads it as {}; \
             list each file once",
            other.display(),
            path.display()
        )
    );
}

#[test]
fn error_process_file_also_in_source() {
    let (_dir, path) = two_event_file();
    let text = write_file_pipeline(&path, "SELECT score, weight FROM events").replace(
        "  - { name: bkg1, role: background, source: mc }\n",
        &format!(
            "  - {{ name: bkg1, role: background, source: mc }}\n  - {{ name: bkg2, role: \
             background, files: [\"{}\"] }}\n",
            path.display()
        ),
    );
    let err = config_error(&text);
    assert!(
        err.ends_with(&format!(
            "processes.files: file {0} is already used by `sources.mc` (as {0}); list it once, \
             as a source with a `process_column` if several processes share it",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn error_repeated_and_huge_categories() {
    let err = config_error(&BASE.replace("categories: [3]", "categories: [3, 3]"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: K = 3 is listed twice; list each number of categories once"
    );
    let err = config_error(&BASE.replace("categories: [3]", "categories: [100000]"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: every number of categories must be at most 1000, got 100000"
    );
    let err = config_error(&format!("{BASE}training:\n  epochs: 10000000000\n"));
    assert_eq!(
        err,
        "p.yaml: training.epochs: must be between 1 and 1000000, got 10000000000"
    );
    let err = config_error(&format!("{BASE}evaluation:\n  dp_bins: 2\n"));
    assert_eq!(
        err,
        "p.yaml: evaluation.dp_bins: must be between 3 and 20000, got 2 (it must be at least the largest K)"
    );
}

#[test]
fn error_process_without_events() {
    let (_dir, path) = two_event_file();
    let err = select_error(&write_file_pipeline(
        &path,
        "SELECT score, weight FROM events WHERE score > 0.3",
    ));
    assert_eq!(
        err,
        "selection: process `bkg1` has no events after the selection; check its input and the \
         SQL's WHERE clause"
    );
}

#[test]
fn error_non_finite_values_counted_per_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(
        &path,
        &["signal", "signal", "bkg1", "bkg1"],
        &[0.5, f64::NAN, 0.2, 0.3],
        &[1.0, 1.0, f64::INFINITY, 1.0],
    );
    let err =
        select_error(&write_file_pipeline(&path, "SELECT score, weight FROM events"));
    assert_eq!(
        err,
        "selection: 2 selected events have NaN, ±inf or null in [score] or `weight` (signal: 1, \
         bkg1: 1); fix the inputs or the SQL, or set `selection.non_finite: drop` to drop them"
    );
}

#[test]
fn non_finite_drop_keeps_finite_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(
        &path,
        &["signal", "signal", "bkg1", "bkg1"],
        &[0.5, f64::NAN, 0.2, 0.3],
        &[1.0, 1.0, f64::INFINITY, 2.0],
    );
    let text = write_file_pipeline(&path, "SELECT score, weight FROM events").replace(
        "  discriminants: [score]\n",
        "  discriminants: [score]\n  non_finite: drop\n",
    );
    let pipeline = crate::common::pipeline(&text);
    let (_, events) = crate::common::select_events(&pipeline);
    assert_eq!(events.discriminants[0], [0.5, 0.3]);
    assert_eq!(events.weight, [1.0, 2.0]);
    assert_eq!(events.row, [0, 3]);
}

#[test]
fn error_non_finite_drop_empties_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_parquet(
        &path,
        &["signal", "bkg1", "bkg1"],
        &[0.5, f64::NAN, 0.3],
        &[1.0, 1.0, f64::NEG_INFINITY],
    );
    let text = write_file_pipeline(&path, "SELECT score, weight FROM events").replace(
        "  discriminants: [score]\n",
        "  discriminants: [score]\n  non_finite: drop\n",
    );
    let err = select_error(&text);
    assert_eq!(
        err,
        "selection: process `bkg1` has no events left: the selection returned 2 of its events, \
         all with NaN, ±inf or null values, and `selection.non_finite: drop` dropped them; fix \
         the inputs or the SQL"
    );
}

/// BASE with two discriminants and the given model lines.
fn two_discriminants(model: &str) -> String {
    BASE.replace("  discriminants: [score]\n", "  discriminants: [score, score2]\n")
        .replace("  kind: sigmoid\n  categories: [3]\n", model)
}

#[test]
fn error_grid_settings() {
    let err = config_error(&two_discriminants("  kind: sigmoid\n  categories: [3]\n"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: the sigmoid model on 2 discriminants cuts each of them, \
         so give the bins per discriminant, for example [3, 3] instead of 3"
    );
    let err =
        config_error(&two_discriminants("  kind: sigmoid\n  categories: [[3, 3, 2]]\n"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: [3, 3, 2] gives bins for 3 discriminants, but \
         `selection.discriminants` names 2"
    );
    let err =
        config_error(&two_discriminants("  kind: sigmoid\n  categories: [[3, 1]]\n"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: every discriminant of a sigmoid grid needs at least 2 bins, got 1 in [3, 1]"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3], [2, 3]]\n",
    ));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: [2, 3] is listed twice; list each number of categories once"
    );
    let err =
        config_error(&two_discriminants("  kind: sigmoid\n  categories: [[40, 40]]\n"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: every number of categories must be at most 1000, got 1600"
    );

    let err = config_error(&two_discriminants("  kind: gmm\n  categories: [[2, 3]]\n"));
    assert_eq!(
        err,
        "p.yaml:13:15: model.categories: the GMM takes a number of components, not bins per discriminant ([2, 3])"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  range: [[0, 1], [0, 1], [0, 1]]\n",
    ));
    assert_eq!(
        err,
        "p.yaml:14:10: model.range: gives 3 ranges, but `selection.discriminants` names 2; give one \
         [low, high] for all or one per discriminant"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  range: [[0, 1], [2, 2]]\n",
    ));
    assert_eq!(
        err,
        "p.yaml:14:10: model.range: must be [low, high] with finite low < high, got [2, 2]"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  range: [0, 1, 2]\n",
    ));
    assert!(
        err.contains(
            "expected [low, high], or a list of [low, high] with one per discriminant"
        ),
        "{err}"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  steepness: [{ initial: 10 }]\n",
    ));
    assert_eq!(
        err,
        "p.yaml:14:14: model.steepness: gives 1 schedules, but `selection.discriminants` names 2; give \
         one schedule for all or one per discriminant"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  steepness: [{ initial: 10 }, { initial: -1 }]\n",
    ));
    assert_eq!(
        err,
        "p.yaml:14:14: model.steepness (entry 2): `initial` must be finite and positive, got -1"
    );

    let err = config_error(&two_discriminants(
        "  kind: sigmoid\n  categories: [[2, 3]]\n  steepness: [{ initial: 10, fnal: 3 }, { initial: 1 }]\n",
    ));
    assert!(err.contains("unknown field `fnal`"), "{err}");

    // Valid: per-discriminant ranges and steepness.

    let p = Pipeline::from_text(
        &two_discriminants(
            "  kind: sigmoid\n  categories: [[2, 3], [4, 2]]\n  range: [[0, 1], [-1, 3]]\n  \
             steepness: [{ initial: 10 }, { schedule: cosine, initial: 5, final: 50 }]\n",
        ),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.model.categories, vec![6, 8]);
    assert_eq!(p.model.bins, vec![vec![2, 3], vec![4, 2]]);
    assert_eq!(p.model.ranges, vec![(0.0, 1.0), (-1.0, 3.0)]);
    assert_eq!(p.model.steepness[1].value(9, 10), 50.0);
}

#[test]
fn error_background_reweight_settings() {
    let with = |block: &str| {
        config_error(&format!("{BASE}objective:\n  background_reweight:\n{block}"))
    };

    let err = with("    processes: [bkg9]\n");
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: `bkg9` is not a process of this pipeline; the \
         processes are signal, bkg1"
    );

    let err = with("    processes: [signal]\n");
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: `signal` is a signal; only background processes can be reweighted"
    );

    let err = with("    processes: []\n");
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: name at least one background process under `processes`"
    );

    let err = with("    processes: [bkg1]\n    factors: [1, 2]\n");
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: 2 factors given, but one per category needs a single \
         run whose K equals that number (model.categories gives K = [3]); give one factor for all \
         categories instead"
    );

    let err = with("    processes: [bkg1]\n    factors: -0.5\n");
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: factors must be finite and non-negative, got -0.5"
    );

    let p = Pipeline::from_text(
        &format!("{BASE}objective:\n  background_reweight:\n    processes: [bkg1]\n    factors: [1, 0.5, 2]\n"),
        "p.yaml",
    )
    .unwrap();
    let r = p.objective.reweight.unwrap();
    assert_eq!(r.scaled, vec![false, true]);
    assert_eq!(r.initial(3), vec![1.0, 0.5, 2.0]);
}

#[test]
fn error_unknown_device() {
    let err = config_error(&format!("{BASE}device: gpu\n"));
    assert_eq!(
        err,
        "p.yaml: device: unknown device `gpu`; use `cpu`, `cuda` or `cuda:N` (N = GPU number from 0)"
    );
    let p = Pipeline::from_text(&format!("{BASE}device: cuda:1\n"), "p.yaml").unwrap();
    assert_eq!(p.device, gato::device::DeviceChoice::Cuda(1));
}

/// Without the `cuda` feature, asking for CUDA stops before any output is
/// written, with the way out in the message.
#[cfg(not(feature = "cuda"))]
#[test]
fn error_cuda_without_feature() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), format!("{BASE}training:\n  epochs: 2\n"))
        .unwrap();
    let out = std::process::Command::new(crate::common::gato_bin())
        .args(["run", "p.yaml", "--device", "cuda:0", "--out", "out"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "device cuda:0: this gato was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda`, or use `--device cpu`"
        ),
        "{stderr}"
    );
    assert!(!dir.path().join("out/summary.json").exists());
}

#[test]
fn error_inapplicable_keys_and_columns() {
    let err = config_error(
        &BASE.replace("  categories: [3]\n", "  categories: [3]\n  sigma_base: 0.1\n"),
    );
    assert_eq!(
        err,
        "p.yaml:12:3: model.sigma_base: applies to the GMM only; remove it for the sigmoid model"
    );

    let err = config_error(
        &BASE.replace("  categories: [3]\n", "  categories: [3]\n  init: random\n"),
    );
    assert_eq!(
        err,
        "p.yaml:12:3: model.init: applies to the GMM only; remove it for the sigmoid model"
    );

    let err = config_error(
        &BASE
            .replace("  discriminants: [score]\n", "  discriminants: [score, score]\n")
            .replace("[3]", "[[3, 3]]"),
    );
    assert_eq!(
        err,
        "p.yaml: selection.discriminants: `score` is listed twice (entry 2); list each column once"
    );

    let err = config_error(
        &BASE.replace("  discriminants: [score]\n", "  discriminants: [weight]\n"),
    );
    assert_eq!(
        err,
        "p.yaml: selection.discriminants: `weight` is the weight column; a discriminant cannot be the weight"
    );

    let err = config_error(&format!("{BASE}output: \"\"\n"));
    assert_eq!(
        err,
        "p.yaml: output: is empty; give a directory, or remove the key for runs/NAME"
    );
    let err =
        config_error(&BASE.replace(
            "  categories: [3]\n",
            "  categories: [3]\n  range: [-1e308, 1e308]\n",
        ));
    assert!(
        err.starts_with(
            "p.yaml:14:10: model.range: must be [low, high] with finite low < high"
        ),
        "{err}"
    );

    let err = config_error(
        &BASE.replace("  categories: [3]\n", "  categories: [3]\n  range: [0, 1, 2]\n"),
    );
    assert!(
        err.contains(
            "expected [low, high], or a list of [low, high] with one per discriminant"
        ),
        "{err}"
    );
    assert!(!err.contains("untagged"), "{err}");
    let err =
        config_error(&BASE.replace(
            "  categories: [3]\n",
            "  categories: [3]\n  range: [[0, 1], [0]]\n",
        ));
    assert!(err.contains("a range is [low, high], got 1 numbers"), "{err}");

    let err = config_error(&format!(
        "{BASE}objective:\n  background_reweight:\n    processes: [bkg1]\n    factors: 0\n"
    ));
    assert_eq!(
        err,
        "p.yaml: objective.background_reweight: factor 0 (for category 0) on every background \
         process leaves that category without background; use factors above 0 or reweight fewer processes"
    );

    let err = config_error(&format!(
        "{BASE}objective:\n  background_reweight:\n    processes: [bkg1]\n    factors: \"2\"\n"
    ));
    assert!(
        err.contains("a number, or a list of numbers with one per category"),
        "{err}"
    );
}

#[test]
fn error_malformed_yaml_and_missing_roles() {
    let err = config_error("name: t\nprocesses: [\n");
    assert!(err.starts_with("p.yaml: invalid pipeline: line"), "{err}");
    let err = config_error(&BASE.replace(
        "  - { name: signal, role: signal, source: toy }\n",
        "  - { name: signal, role: background, source: toy }\n",
    ));
    assert!(err.contains("processes"), "{err}");
    assert!(err.contains("signal"), "{err}");
    let err = config_error(&BASE.replace(
        "  - { name: bkg1, role: background, source: toy }\n",
        "  - { name: bkg1, role: signal, source: toy }\n",
    ));
    assert!(err.contains("processes"), "{err}");
    assert!(err.contains("background"), "{err}");
    let gmm = BASE.replace("  kind: sigmoid\n", "  kind: gmm\n");
    let err = config_error(&gmm.replace(
        "  categories: [3]\n",
        "  categories: [3]\n  temperature: { initial: 0 }\n",
    ));
    assert_eq!(
        err,
        "p.yaml:14:16: model.temperature: `initial` must be finite and positive, got 0"
    );
}

#[test]
fn error_discriminant_of_wrong_type() {
    let text = BASE.replace(
        "SELECT score, weight FROM events",
        "SELECT process AS score, weight FROM events",
    );
    let err = select_error(&text);
    assert!(err.starts_with("selection:"), "{err}");
    assert!(err.contains("`score`"), "{err}");
    assert!(err.contains("Utf8"), "{err}");
}

/// The output directory is a file (the input itself, here), or cannot be
/// created because a file is in its way.
#[test]
fn error_unusable_output_directory() {
    let (dir, input) = two_event_file();
    let pipeline = Pipeline::from_text(
        &write_file_pipeline(&input, "SELECT score, weight FROM events"),
        "p.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let run = |out: &Path| {
        let options = gato::run::RunOptions {
            output: Some(out.to_path_buf()),
            ..Default::default()
        };
        runtime
            .block_on(gato::run::run_pipeline(&pipeline, &options))
            .unwrap_err()
            .to_string()
    };
    let err = run(&input);
    assert_eq!(
        err,
        format!(
            "output {}: is a file; give a directory for the outputs",
            input.display()
        )
    );
    let blocked = dir.path().join("x.parquet/sub");
    let err = run(&blocked);
    assert!(
        err.starts_with(&format!(
            "output {}: cannot create the output directory",
            blocked.display()
        )),
        "{err}"
    );
}

#[test]
fn error_report_settings() {
    let err = config_error(&format!("{BASE}report:\n  bins: 1\n"));
    assert_eq!(err, "p.yaml: report.bins: must be between 2 and 1000, got 1");
    let err = config_error(&format!("{BASE}report:\n  signal_scale: -10\n"));
    assert_eq!(err, "p.yaml: report.signal_scale: must be between 1e-6 and 1e9, got -10");
    let err = config_error(&format!("{BASE}report:\n  logy: true\n"));
    assert!(err.contains("line 15 column 3: unknown field `logy`"), "{err}");
    let p = Pipeline::from_text(
        &format!("{BASE}report:\n  log_y: false\n  signal_scale: 50\n  bins: 20\n"),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(
        p.report,
        gato::config::ReportFile { log_y: false, signal_scale: Some(50.0), bins: 20 }
    );
}

#[test]
fn error_binned_statistics_settings() {
    let err = config_error(&format!("{BASE}training:\n  statistics_bins: 100\n"));
    assert_eq!(
        err,
        "p.yaml: training.statistics_bins: applies only with `statistics: binned`"
    );
    let err = config_error(&format!(
        "{BASE}training:\n  statistics: binned\n  statistics_bins: 1000001\n"
    ));
    assert_eq!(
        err,
        "p.yaml: training.statistics_bins: must be at least 2 with at most 1000000 cells in all (1 discriminants), got 1000001"
    );
    let err = config_error(&format!("{BASE}training:\n  statistics: histogram\n"));
    assert!(err.contains("unknown variant `histogram`"), "{err}");
    let p = Pipeline::from_text(
        &format!("{BASE}training:\n  statistics: binned\n"),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.training.statistics_bins, Some(4000));
    let err = config_error(&format!("{BASE}training:\n  chunk_events: 0\n"));
    assert_eq!(err, "p.yaml: training.chunk_events: must be at least 1, got 0");
}

#[test]
fn error_input_with_category_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("categorised.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("process", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("weight", DataType::Float64, false),
        Field::new("category", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["signal", "bkg1"])),
        Arc::new(Float64Array::from(vec![0.9, 0.1])),
        Arc::new(Float64Array::from(vec![1.0, 1.0])),
        Arc::new(Float64Array::from(vec![2.0, 0.0])),
    ];

    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    // Opening the inputs fails, before the selection and any training.
    let pipeline = Pipeline::from_text(
        &write_file_pipeline(&path, "SELECT score, weight FROM events"),
        "p.yaml",
    )
    .unwrap();
    let err = Sources::open(&pipeline).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "input {}: already has a column `category`; rename or drop it before running \
             gato, which appends its own",
            path.display()
        )
    );
}

#[test]
fn error_selection_takes_arbitrary_subset() {
    let with_sql = |sql: &str| BASE.replace("SELECT score, weight FROM events", sql);
    let err = config_error(&with_sql("SELECT score, weight FROM events LIMIT 100"));
    assert!(
        err.starts_with(
            "p.yaml: selection.sql: LIMIT at line 1, column 34 of the SQL keeps an arbitrary \
             subset of the events"
        ),
        "{err}"
    );
    assert!(err.contains("select events with WHERE"), "{err}");
    let err = config_error(&with_sql(
        "\"SELECT score, weight\\n  FROM events TABLESAMPLE (10 PERCENT)\"",
    ));
    assert!(err.contains("TABLESAMPLE at line 2, column 15 of the SQL"), "{err}");
    let err = config_error(&with_sql(
        "SELECT score, weight FROM events ORDER BY score OFFSET 5 ROWS",
    ));
    assert!(err.contains("OFFSET at line 1"), "{err}");
    // In quotes and comments the words are not clauses.
    for sql in [
        "\"SELECT score, weight FROM events WHERE 'limit' <> 'offset' -- LIMIT 3\"",
        "SELECT score AS \"limit\", score, weight FROM events",
    ] {
        Pipeline::from_text(&with_sql(sql), "p.yaml")
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Writes `columns` (name, values, nullable) and a `process` column as a
/// Parquet file, in the order given.
fn write_columns(path: &Path, process_first: bool, columns: &[(&str, ArrayRef, bool)]) {
    let process: ArrayRef = Arc::new(StringArray::from(vec!["signal", "bkg1", "bkg1"]));
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    if process_first {
        fields.push(Field::new("process", DataType::Utf8, false));
        arrays.push(process.clone());
    }
    for (name, values, nullable) in columns {
        fields.push(Field::new(*name, values.data_type().clone(), *nullable));
        arrays.push(values.clone());
    }
    if !process_first {
        fields.push(Field::new("process", DataType::Utf8, true));
        arrays.push(process);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn f64s(values: &[f64]) -> ArrayRef {
    Arc::new(Float64Array::from(values.to_vec()))
}

/// Returns a temporary directory and the paths `a.parquet` and
/// `b.parquet` in it.
fn two_files() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    (dir, a, b)
}

fn two_file_pipeline(a: &Path, b: &Path) -> String {
    write_file_pipeline(a, "SELECT score, weight FROM events").replace(
        &format!("[\"{}\"]", a.display()),
        &format!("[\"{}\", \"{}\"]", a.display(), b.display()),
    )
}

#[test]
fn inputs_may_differ_in_column_order_and_nullability() {
    let (_dir, a, b) = two_files();
    write_columns(
        &a,
        true,
        &[
            ("score", f64s(&[0.9, 0.1, 0.2]), false),
            ("weight", f64s(&[1.0, 2.0, 3.0]), false),
        ],
    );
    // The same names and types in another order, nullable.
    write_columns(
        &b,
        false,
        &[
            ("weight", f64s(&[4.0, 5.0, 6.0]), true),
            ("score", f64s(&[0.8, 0.3, 0.4]), true),
        ],
    );
    let pipeline = Pipeline::from_text(&two_file_pipeline(&a, &b), "p.yaml").unwrap();
    let sources = Sources::open(&pipeline).unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let events = runtime.block_on(gato::select::select(&pipeline, &sources)).unwrap();
    // Sorted by process (signal first), then input, then row.
    assert_eq!(events.discriminants[0], vec![0.9, 0.8, 0.1, 0.2, 0.3, 0.4]);
    assert_eq!(events.weight, vec![1.0, 4.0, 2.0, 3.0, 5.0, 6.0]);
    assert_eq!(events.input, vec![0, 1, 0, 0, 1, 1]);
}

#[test]
fn error_inputs_with_other_columns_name_them() {
    let (_dir, a, b) = two_files();
    write_columns(
        &a,
        true,
        &[
            ("score", f64s(&[0.9, 0.1, 0.2]), false),
            ("weight", f64s(&[1.0, 2.0, 3.0]), false),
            ("pt", f64s(&[1.0; 3]), false),
        ],
    );
    let score32: ArrayRef =
        Arc::new(gato::datafusion::arrow::array::Float32Array::from(vec![
            0.8f32, 0.3, 0.4,
        ]));
    write_columns(
        &b,
        true,
        &[
            ("score", score32, false),
            ("weight", f64s(&[4.0, 5.0, 6.0]), false),
            ("eta", f64s(&[0.0; 3]), false),
        ],
    );
    let err = select_error(&two_file_pipeline(&a, &b));
    assert_eq!(
        err,
        format!(
            "input {}: its columns differ from those of {}: `score` is Float32 here and Float64 \
             there, `eta` (Float64) is only in this input, `pt` (Float64) is missing here; \
             every input must have the same column names and types",
            b.display(),
            a.display()
        )
    );
}
