//! The apply stage: every input row, unchanged and in order, plus the
//! `category` column, written as Parquet.
//!
//! Each output is written to a temporary file in the output directory and
//! renamed into place when complete, so a reader sees either no file or a
//! whole one. Inputs are only read.

use std::ops::Range;
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
use crate::store::{EventSet, RangeReader};
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
            InputKind::Object(url) => {
                let name = url.rsplit('/').next().unwrap_or(url);
                name.strip_suffix(".parquet").unwrap_or(name).to_string()
            }
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
/// `assign` gives the categories of events from their discriminants, one
/// vector each, and rows the selection rejected get a null category. The
/// events of one input lie in one range per process, with rows rising in
/// each. While the input is copied batch by batch, each range is read
/// forward in blocks, and the block's categories go to their rows. Memory
/// contains a few batches and one block of events per process.
pub fn apply(
    sources: &Sources,
    events: &EventSet,
    assign: impl Fn(&[Vec<f64>]) -> Vec<u32> + Sync,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::output(dir, format!("cannot create directory: {e}")))?;
    let names = output_names(sources);
    for (index, name) in names.iter().enumerate() {
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
    }
    let mut reader = events.range_reader()?;
    let mut written = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let path = dir.join(name);
        let label = sources.input(index).label();
        let ranges = events.input_ranges(index as u32);
        let block = (BLOCK_EVENTS / ranges.len().max(1)).clamp(1 << 12, 1 << 16);
        let mut runs: Vec<Run> = ranges.into_iter().map(|r| Run::new(r, block)).collect();
        write_categorised(
            sources.read(index)?,
            &sources.raw_schema(index),
            &label,
            &path,
            |batch, first| {
                let mut slots = vec![0u32; batch.num_rows()];
                for run in &mut runs {
                    run.place(first as u64, &mut slots, &mut reader, &assign)?;
                }
                Ok(slots.into_iter().map(|v| (v > 0).then(|| (v - 1) as i32)).collect())
            },
        )?;
        if !runs.iter().all(Run::finished) {
            return Err(Error::Internal(format!(
                "selected events of {label} have rows past the input's last row"
            )));
        }
        tracing::debug!(input = %label, staged = %path.display(), "wrote categories");
        written.push(path);
    }
    Ok(written)
}

/// Events held in memory at once by the apply stage, over all processes.
const BLOCK_EVENTS: usize = 1 << 20;

/// The events of one process from one input, read forward in blocks, with
/// their categories.
struct Run {
    left: Range<usize>,
    block: usize,
    rows: Vec<u64>,
    categories: Vec<u32>,
    next: usize,
}

impl Run {
    fn new(events: Range<usize>, block: usize) -> Run {
        Run { left: events, block, rows: Vec::new(), categories: Vec::new(), next: 0 }
    }

    /// Puts category + 1 into `slots[row - first]` for every event of the
    /// run with a row in `first..first + slots.len()`.
    fn place(
        &mut self,
        first: u64,
        slots: &mut [u32],
        reader: &mut RangeReader,
        assign: &(impl Fn(&[Vec<f64>]) -> Vec<u32> + Sync),
    ) -> Result<()> {
        let end = first + slots.len() as u64;
        loop {
            if self.next == self.rows.len() {
                if self.left.is_empty() {
                    return Ok(());
                }
                let take = self.left.start..self.left.end.min(self.left.start + self.block);
                self.left.start = take.end;
                let (discriminants, rows) = reader.read(take)?;
                self.categories = assign(&discriminants);
                self.rows = rows;
                self.next = 0;
            }
            let rows = &self.rows[self.next..];
            let n = rows.partition_point(|&r| r < end);
            for (&row, &category) in rows[..n].iter().zip(&self.categories[self.next..]) {
                let slot = row.checked_sub(first).ok_or_else(|| {
                    Error::Internal(format!("selected row {row} came after row {first}"))
                })?;
                slots[slot as usize] = category + 1;
            }
            self.next += n;
            if self.next < self.rows.len() {
                return Ok(());
            }
        }
    }

    /// Returns whether every event of the run has been placed.
    fn finished(&self) -> bool {
        self.next == self.rows.len() && self.left.is_empty()
    }
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
    mut categorise: impl FnMut(&RecordBatch, usize) -> Result<Int32Array> + Send,
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

    // A reader thread decodes the next input batches and categorises them
    // while this one encodes and writes. Encoding takes the longest, so it
    // gets a thread to itself. The bounded channel keeps at most two
    // batches waiting.
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(2);
        let batch_schema = schema.clone();
        scope.spawn(move || {
            let mut row = 0usize;
            for batch in batches {
                let out = batch.and_then(|batch| {
                    let column = categorise(&batch, row)?;
                    row += batch.num_rows();
                    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                    columns.push(Arc::new(column));
                    RecordBatch::try_new(batch_schema.clone(), columns)
                        .map_err(|e| Error::Internal(format!("building output batch: {e}")))
                });
                let failed = out.is_err();
                // The receiver is gone when writing failed.
                if send.send(out).is_err() || failed {
                    return;
                }
            }
        });
        for batch in receive {
            writer.write(&batch?).map_err(|e| Error::output(path, e.to_string()))?;
        }
        Ok::<(), Error>(())
    })?;

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
