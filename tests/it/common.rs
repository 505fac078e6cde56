//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use gato::config::Pipeline;
use gato::select::{Events, select};
use gato::source::Sources;

/// Returns the path of a gato-hep reference file.
pub fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference").join(name)
}

/// Returns the `gato` binary built for these tests.
pub fn gato_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gato"))
}

/// Parses pipeline text, failing the test on an error.
pub fn pipeline(text: &str) -> Pipeline {
    Pipeline::from_text(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the selection of `pipeline` on a fresh runtime.
pub fn select_events(pipeline: &Pipeline) -> (Sources, Events) {
    let sources = Sources::open(pipeline).unwrap_or_else(|e| panic!("{e}"));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let events =
        runtime.block_on(select(pipeline, &sources)).unwrap_or_else(|e| panic!("{e}"));
    (sources, events)
}

/// Processes of the 1D toy, as pipeline YAML reading `source`.
pub fn toy_1d_processes(source: &str) -> String {
    let mut out = String::from("processes:\n");
    out.push_str(&format!("  - {{ name: signal, role: signal, source: {source} }}\n"));
    for b in ["bkg1", "bkg2", "bkg3", "bkg4", "bkg5"] {
        out.push_str(&format!(
            "  - {{ name: {b}, role: background, source: {source} }}\n"
        ));
    }
    out
}

/// Processes of the three-class toy, as pipeline YAML reading `source`.
pub fn three_class_processes(source: &str) -> String {
    let mut out = String::from("processes:\n");
    for s in ["signal1", "signal2"] {
        out.push_str(&format!("  - {{ name: {s}, role: signal, source: {source} }}\n"));
    }
    for b in ["bkg1", "bkg2", "bkg3", "bkg4", "bkg5"] {
        out.push_str(&format!(
            "  - {{ name: {b}, role: background, source: {source} }}\n"
        ));
    }
    out
}

/// Reads every row of a Parquet file as record batches.
pub fn read_parquet(
    path: &Path,
) -> Vec<gato::datafusion::arrow::record_batch::RecordBatch> {
    use gato::datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Returns a Float64 column of a record batch as a vector.
pub fn float_column(
    batch: &gato::datafusion::arrow::record_batch::RecordBatch,
    name: &str,
) -> Vec<f64> {
    use gato::datafusion::arrow::array::Float64Array;
    let column = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    column.as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec()
}

/// Returns a non-null string column of a record batch as a vector.
pub fn string_column(
    batch: &gato::datafusion::arrow::record_batch::RecordBatch,
    name: &str,
) -> Vec<String> {
    use gato::datafusion::arrow::array::StringArray;
    let column = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
    strings.iter().map(|v| v.unwrap().to_string()).collect()
}

/// Returns the `category` column of a written Parquet file, in row order.
pub fn category_column(file: &Path) -> Vec<Option<i32>> {
    use gato::datafusion::arrow::array::{Array, Int32Array};
    read_parquet(file)
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("category").unwrap();
            let c = c.as_any().downcast_ref::<Int32Array>().unwrap().clone();
            (0..c.len()).map(move |i| (!c.is_null(i)).then(|| c.value(i)))
        })
        .collect()
}

/// Runs `gato -q run pipeline.yaml` with `extra` arguments on `text` in
/// `dir`, fails the test when it fails, and returns `out/summary.json` and
/// the standard error output.
pub fn run_pipeline(text: &str, dir: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    std::fs::write(dir.join("pipeline.yaml"), text).unwrap();
    let out = std::process::Command::new(gato_bin())
        .args(["-q", "run", "pipeline.yaml"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let summary = std::fs::read_to_string(dir.join("out/summary.json")).unwrap();
    (serde_json::from_str(&summary).unwrap(), stderr)
}
