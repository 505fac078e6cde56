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
use crate::store::EventSet;
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
/// `assign` gives the categories of a chunk of `events`, and rows the
/// selection rejected get a null category. The categories first go, chunk
/// by chunk, to one temporary file per input at the position of their row.
/// Each input is then copied batch by batch with its categories read back
/// in row order, so memory contains only a few chunks and batches.
pub fn apply(
    sources: &Sources,
    events: &EventSet,
    assign: impl Fn(&Events) -> Vec<u32>,
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
    let scratch = tempfile::Builder::new()
        .prefix(".gato-categories-")
        .tempdir_in(dir)
        .map_err(|e| Error::output(dir, format!("cannot create a temporary directory: {e}")))?;
    let mut files = (0..names.len())
        .map(|i| CategoryFile::create(&scratch.path().join(format!("input{i}.bin"))))
        .collect::<Result<Vec<_>>>()?;
    events.for_each_chunk(|chunk| {
        let categories = assign(chunk);
        for (e, &category) in categories.iter().enumerate() {
            files[chunk.input[e] as usize].put(chunk.row[e], category)?;
        }
        Ok(())
    })?;
    let mut written = Vec::new();
    for (index, (name, file)) in names.iter().zip(files).enumerate() {
        let path = dir.join(name);
        let mut categories = file.into_reader()?;
        let label = sources.input(index).label();
        write_categorised(
            sources.read(index)?,
            &sources.raw_schema(index),
            &label,
            &path,
            |batch, _| categories.next(batch.num_rows()),
        )?;
        tracing::debug!(input = %label, staged = %path.display(), "wrote categories");
        written.push(path);
    }
    Ok(written)
}

/// Category + 1 of each row of one input (0 for rows without one), as
/// little-endian u32 at byte 4 × row of a temporary file.
struct CategoryFile {
    path: PathBuf,
    file: std::fs::File,
    /// First row of `pending`.
    start: u64,
    pending: Vec<u32>,
}

/// Rows with a category are written in runs; a gap shorter than this
/// stays inside the run instead of starting a new one.
const MAX_GAP: u64 = 4096;

impl CategoryFile {
    fn create(path: &Path) -> Result<CategoryFile> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::output(path, format!("cannot create: {e}")))?;
        Ok(CategoryFile { path: path.to_path_buf(), file, start: 0, pending: Vec::new() })
    }

    /// Records `category` for `row`; rows must rise within a run of calls.
    fn put(&mut self, row: u64, category: u32) -> Result<()> {
        let next = self.start + self.pending.len() as u64;
        if self.pending.is_empty() {
            self.start = row;
        } else if row < next || row - next >= MAX_GAP {
            self.flush()?;
            self.start = row;
        } else {
            self.pending.extend(std::iter::repeat_n(0, (row - next) as usize));
        }
        self.pending.push(category + 1);
        if self.pending.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending run. Rows of the run's gaps keep what the file
    /// holds: the events of one input come once per process, so another
    /// process may already have written them.
    fn flush(&mut self) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom, Write};
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| {
            Error::output(&self.path, format!("cannot write the categories: {e}"))
        };
        let offset = self.start * 4;
        let mut bytes = vec![0u8; self.pending.len() * 4];
        // Past the end of the file every row is still without a category.
        let length = self.file.metadata().map_err(io)?.len();
        if length > offset {
            let have = ((length - offset) as usize).min(bytes.len());
            self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
            self.file.read_exact(&mut bytes[..have]).map_err(io)?;
        }
        for (slot, &value) in bytes.chunks_exact_mut(4).zip(&self.pending) {
            if value != 0 {
                slot.copy_from_slice(&value.to_le_bytes());
            }
        }
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.file.write_all(&bytes).map_err(io)?;
        self.pending.clear();
        Ok(())
    }

    fn into_reader(mut self) -> Result<CategoryReader> {
        use std::io::{Seek, SeekFrom};
        self.flush()?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::output(&self.path, format!("cannot read back: {e}")))?;
        Ok(CategoryReader {
            path: self.path,
            reader: std::io::BufReader::with_capacity(1 << 20, self.file),
        })
    }
}

/// Reads a [`CategoryFile`] in row order; rows past its end have none.
struct CategoryReader {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
}

impl CategoryReader {
    /// Reads the categories of the next `rows` rows.
    fn next(&mut self, rows: usize) -> Result<Int32Array> {
        use std::io::Read;
        let mut bytes = vec![0u8; rows * 4];
        let mut filled = 0;
        while filled < bytes.len() {
            let n = self.reader.read(&mut bytes[filled..]).map_err(|e| {
                Error::output(&self.path, format!("cannot read back the categories: {e}"))
            })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| {
                let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (v > 0).then(|| (v - 1) as i32)
            })
            .collect())
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

    // A reader thread decodes the next input batches while this one
    // encodes and writes; the bounded channel keeps at most two waiting.
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(2);
        scope.spawn(move || {
            for batch in batches {
                let failed = batch.is_err();
                // The receiver is gone when writing failed.
                if send.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        write_batches(receive, &schema, &mut writer, path, &mut categorise)
    })?;

    writer.close().map_err(|e| Error::output(path, e.to_string()))?;
    crate::atomic::persist(temp, path)
}

/// Appends the categories to each batch and writes it.
fn write_batches(
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
    schema: &SchemaRef,
    writer: &mut ArrowWriter<std::fs::File>,
    path: &Path,
    categorise: &mut impl FnMut(&RecordBatch, usize) -> Result<Int32Array>,
) -> Result<()> {
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
    Ok(())
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
