//! The apply stage: every input row, unchanged and in order, plus the
//! `category` column, written as Parquet.
//!
//! Each output is written to a temporary file in the output directory and
//! renamed into place when complete, so a reader sees either no file or a
//! whole one. Inputs are only read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

use crate::config::InputKind;
use crate::error::{Error, Result};
use crate::model::SavedModel;
use crate::select::Events;
use crate::source::{BatchIter, Sources};

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
pub fn apply(
    sources: &Sources,
    events: &Events,
    assign: &[u32],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::output(dir, format!("cannot create directory: {e}")))?;
    let names = output_names(sources);
    // Category per row of each input, -1 for rows the selection rejected,
    // filled in one pass over the events.
    let mut per_input: Vec<Vec<i32>> = vec![Vec::new(); names.len()];
    for e in 0..events.len() {
        let categories = &mut per_input[events.input[e] as usize];
        let row = events.row[e] as usize;
        if categories.len() <= row {
            categories.resize(row + 1, -1);
        }
        categories[row] = assign[e] as i32;
    }
    let mut written = Vec::new();
    for (index, (name, categories)) in names.iter().zip(per_input).enumerate() {
        let path = dir.join(name);
        if let InputKind::File(input) = &sources.input(index).kind {
            let same = path
                .canonicalize()
                .ok()
                .is_some_and(|p| Some(p) == input.canonicalize().ok());
            if same {
                return Err(Error::output(
                    &path,
                    "is an input file; choose an output directory that holds no inputs",
                ));
            }
        }
        write_input(sources, index, &categories, &path)?;
        tracing::debug!(input = %sources.input(index).label(), staged = %path.display(), "wrote categories");
        written.push(path);
    }
    Ok(written)
}

fn write_input(
    sources: &Sources,
    index: usize,
    categories: &[i32],
    path: &Path,
) -> Result<()> {
    let label = sources.input(index).label();
    write_categorised(
        sources.read(index)?,
        &sources.raw_schema(index),
        &label,
        path,
        |batch, row| {
            Ok((row..row + batch.num_rows())
                .map(|r| categories.get(r).copied().filter(|&c| c >= 0))
                .collect())
        },
    )
}

/// Writes every batch of `batches` with a `category` column appended to
/// `path`, atomically.
///
/// `categorise` returns the categories of a batch given the batch and the
/// number of rows before it. `label` names the input in errors.
pub fn write_categorised(
    batches: BatchIter,
    raw: &SchemaRef,
    label: &str,
    path: &Path,
    mut categorise: impl FnMut(&RecordBatch, usize) -> Result<Int32Array>,
) -> Result<()> {
    if raw.field_with_name(CATEGORY_COLUMN).is_ok() {
        return Err(Error::input(
            label,
            format!(
                "already has a column `{CATEGORY_COLUMN}`; rename it before running gato, \
                 which appends its own"
            ),
        ));
    }
    let mut fields: Vec<Field> =
        raw.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CATEGORY_COLUMN, DataType::Int32, true));
    let schema = Arc::new(Schema::new_with_metadata(fields, raw.metadata().clone()));
    let temp = crate::atomic::temp_file_for(path)?;
    let file = temp.reopen().map_err(|e| Error::output(temp.path(), e.to_string()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| Error::output(path, e.to_string()))?;

    let mut row = 0usize;
    for batch in batches {
        let batch = batch?;
        let column = categorise(&batch, row)?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(column));
        let out = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building output batch: {e}")))?;
        writer.write(&out).map_err(|e| Error::output(path, e.to_string()))?;
        row += batch.num_rows();
    }

    writer.close().map_err(|e| Error::output(path, e.to_string()))?;
    crate::atomic::persist(temp, path)
}

/// Categorises the Parquet file `input` with a saved model and writes it,
/// with the `category` column, to `output`.
///
/// The model's discriminant columns must be numeric columns of the file.
/// Rows where one of them is null, NaN or ±inf get a null category. Returns
/// the number of rows and of rows left without a category.
pub fn apply_model(
    saved: &SavedModel,
    input: &Path,
    output: &Path,
) -> Result<(usize, usize)> {
    let same =
        output.canonicalize().ok().is_some_and(|p| Some(p) == input.canonicalize().ok());
    if same {
        return Err(Error::output(
            output,
            "is the input file; choose another output directory",
        ));
    }
    let (schema, batches) = crate::source::read_parquet_file(input)?;
    check_schema(saved, input, &schema)?;
    let model = saved.model();
    let (mut rows, mut missing) = (0usize, 0usize);
    let label = input.display().to_string();
    write_categorised(batches, &schema, &label, output, |batch, _| {
        let mut columns = Vec::with_capacity(saved.discriminants.len());
        for name in &saved.discriminants {
            let array = batch.column_by_name(name).ok_or_else(|| {
                Error::Internal(format!("column {name} missing from a batch"))
            })?;
            let array = cast(array, &DataType::Float64).map_err(|e| {
                Error::input(input, format!("cannot convert `{name}` to float64: {e}"))
            })?;
            let array =
                array.as_any().downcast_ref::<Float64Array>().cloned().ok_or_else(
                    || Error::Internal("cast to Float64 gave another type".into()),
                )?;
            columns.push(
                (0..batch.num_rows())
                    .map(|i| if array.is_null(i) { f64::NAN } else { array.value(i) })
                    .collect::<Vec<f64>>(),
            );
        }
        let assign = model.assign(&saved.parameters, &columns);
        let categories: Int32Array = (0..batch.num_rows())
            .map(|i| {
                let finite = columns.iter().all(|c| c[i].is_finite());
                finite.then_some(assign[i] as i32)
            })
            .collect();
        rows += batch.num_rows();
        missing += categories.null_count();
        Ok(categories)
    })?;
    Ok((rows, missing))
}

/// Checks, from the Parquet footer alone, that `input` has the model's
/// discriminant columns as numbers.
pub fn check_model_columns(saved: &SavedModel, input: &Path) -> Result<()> {
    let builder = crate::source::parquet_reader(input)?;
    check_schema(saved, input, builder.schema())
}

fn check_schema(
    saved: &SavedModel,
    input: &Path,
    schema: &datafusion::arrow::datatypes::Schema,
) -> Result<()> {
    for name in &saved.discriminants {
        let field = schema.field_with_name(name).map_err(|_| {
            let names: Vec<&str> =
                schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::input(
                input,
                format!(
                    "the model reads column `{name}`, which the file lacks; the file has \
                     columns [{}]",
                    names.join(", ")
                ),
            )
        })?;
        if !field.data_type().is_numeric() {
            return Err(Error::input(
                input,
                format!(
                    "column `{name}` has type {}, but the model needs numbers",
                    field.data_type()
                ),
            ));
        }
    }
    Ok(())
}
