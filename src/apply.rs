//! The apply stage: every input row, unchanged and in order, plus the
//! `category` column, written as Parquet.
//!
//! Each output is written to a temporary file in the output directory and
//! renamed into place when complete, so a reader sees either no file or a
//! whole one. Inputs are only read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

use crate::config::InputKind;
use crate::error::{Error, Result};
use crate::select::Events;
use crate::source::Sources;

/// Name of the appended column.
pub const CATEGORY_COLUMN: &str = "category";

/// Output file name of each input: the input's file name, or
/// `<source>.parquet` for a generator, made unique with a numeric suffix.
pub fn output_names(sources: &Sources) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for i in 0..sources.len() {
        let base = match &sources.input(i).kind {
            InputKind::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("input{i}")),
            InputKind::Generator { source, .. } => source.clone(),
        };
        let mut name = format!("{base}.parquet");
        let mut n = 1;
        while names.contains(&name) {
            n += 1;
            name = format!("{base}_{n}.parquet");
        }
        names.push(name);
    }
    names
}

/// Writes one categorised copy of every input into `dir`.
///
/// `assign` gives the category of each selected event (in the order of
/// `events`); rows the selection rejected get a null category.
pub fn apply(sources: &Sources, events: &Events, assign: &[u32], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::output(dir, format!("cannot create directory: {e}")))?;
    let names = output_names(sources);
    let mut written = Vec::new();
    for (index, name) in names.iter().enumerate() {
        // Category per row of this input, -1 for rows the selection rejected.
        let mut categories: Vec<i32> = Vec::new();
        for e in 0..events.len() {
            if events.input[e] as usize == index {
                let row = events.row[e] as usize;
                if categories.len() <= row {
                    categories.resize(row + 1, -1);
                }
                categories[row] = assign[e] as i32;
            }
        }
        let path = dir.join(name);
        if let InputKind::File(input) = &sources.input(index).kind {
            let same = path.canonicalize().ok().is_some_and(|p| Some(p) == input.canonicalize().ok());
            if same {
                return Err(Error::output(
                    &path,
                    "is an input file; choose an output directory that holds no inputs",
                ));
            }
        }
        write_input(sources, index, &categories, &path)?;
        tracing::info!(input = %sources.input(index).label(), output = %path.display(), "wrote categories");
        written.push(path);
    }
    Ok(written)
}

fn write_input(sources: &Sources, index: usize, categories: &[i32], path: &Path) -> Result<()> {
    let raw = sources.raw_schema(index);
    if raw.field_with_name(CATEGORY_COLUMN).is_ok() {
        return Err(Error::input(
            sources.input(index).label(),
            format!(
                "already has a column `{CATEGORY_COLUMN}`; rename it before running gato, \
                 which appends its own"
            ),
        ));
    }
    let mut fields: Vec<Field> = raw.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CATEGORY_COLUMN, DataType::Int32, true));
    let schema = Arc::new(Schema::new_with_metadata(fields, raw.metadata().clone()));
    let temp = crate::atomic::temp_file_for(path)?;
    let file = temp.reopen().map_err(|e| Error::output(temp.path(), e.to_string()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| Error::output(path, e.to_string()))?;
    let mut row = 0usize;
    for batch in sources.read(index)? {
        let batch = batch?;
        let n = batch.num_rows();
        let column: Int32Array = (row..row + n)
            .map(|r| categories.get(r).copied().filter(|&c| c >= 0))
            .collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(column));
        let out = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building output batch: {e}")))?;
        writer.write(&out).map_err(|e| Error::output(path, e.to_string()))?;
        row += n;
    }
    writer.close().map_err(|e| Error::output(path, e.to_string()))?;
    crate::atomic::persist(temp, path)
}
