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
use crate::source::{BatchIter, Sources};
use crate::store::{EventSet, RangeReader};

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
                let take =
                    self.left.start..self.left.end.min(self.left.start + self.block);
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
    let writer = ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| Error::output(path, e.to_string()))?;

    // A reader thread decodes the next input batches and categorises them
    // while this one hands their columns to the encoders. The bounded
    // channel keeps at most two batches waiting.
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
                    RecordBatch::try_new(batch_schema.clone(), columns).map_err(|e| {
                        Error::Internal(format!("building output batch: {e}"))
                    })
                });
                let failed = out.is_err();
                // The receiver is gone when writing failed.
                if send.send(out).is_err() || failed {
                    return;
                }
            }
        });
        encode_in_parallel(writer, &schema, receive, path)
    })?;
    crate::atomic::persist(temp, path)
}

/// Threads that encode the columns of a row group.
const ENCODERS: usize = 2;

/// Writes the batches of `receive` with `writer`, whose schema is
/// `schema`, and closes it.
///
/// Encoding takes most of the time of the apply stage, so the columns of
/// each row group are shared out among [`ENCODERS`] threads. One more
/// thread appends the encoded row groups to the file in order.
fn encode_in_parallel(
    writer: ArrowWriter<std::fs::File>,
    schema: &SchemaRef,
    receive: std::sync::mpsc::Receiver<Result<RecordBatch>>,
    path: &Path,
) -> Result<()> {
    use datafusion::parquet::arrow::arrow_writer::ArrowColumnChunk;
    let failed =
        |e: datafusion::parquet::errors::ParquetError| Error::output(path, e.to_string());
    let (mut file, factory) = writer.into_serialized_writer().map_err(failed)?;
    let max_rows =
        file.properties().max_row_group_row_count().unwrap_or(usize::MAX).max(1);
    let n = ENCODERS.min(file.schema_descr().num_columns()).max(1);
    let encoder_of = encoder_of_leaf(file.schema_descr(), n);
    std::thread::scope(|scope| {
        // A writer thread appends each encoded row group to the file while
        // the encoders start on the next one.
        let (send_group, groups) =
            std::sync::mpsc::sync_channel::<Vec<(usize, ArrowColumnChunk)>>(1);
        let writing = scope.spawn(move || -> Result<()> {
            for chunks in groups {
                let mut row_group = file.next_row_group().map_err(failed)?;
                for (_, chunk) in chunks {
                    chunk.append_to_row_group(&mut row_group).map_err(failed)?;
                }
                row_group.close().map_err(failed)?;
            }
            file.close().map_err(failed)?;
            Ok(())
        });
        let encoded = encode_row_groups(
            &factory,
            schema,
            receive,
            max_rows,
            &encoder_of,
            &send_group,
            &failed,
        );
        drop(send_group);
        let written = writing
            .join()
            .map_err(|_| Error::Internal("the Parquet writer thread panicked".into()))?;
        // A failed writer stops the encoding without an error of its own.
        encoded.and(written)
    })
}

/// Encodes the batches of `receive` in row groups of `max_rows` rows, with
/// leaf column `i` on encoder thread `encoder_of[i]`. Sends the column
/// chunks of each row group to `send_group`, in leaf order.
fn encode_row_groups(
    factory: &datafusion::parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    schema: &SchemaRef,
    receive: std::sync::mpsc::Receiver<Result<RecordBatch>>,
    max_rows: usize,
    encoder_of: &[usize],
    send_group: &std::sync::mpsc::SyncSender<
        Vec<(usize, datafusion::parquet::arrow::arrow_writer::ArrowColumnChunk)>,
    >,
    failed: &dyn Fn(datafusion::parquet::errors::ParquetError) -> Error,
) -> Result<()> {
    use datafusion::parquet::arrow::arrow_writer::{
        ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, compute_leaves,
    };
    let n = encoder_of.iter().max().map_or(1, |e| e + 1);
    let mut receive = receive.into_iter().peekable();
    let mut group = 0;
    // A batch that straddles two row groups leaves its tail for the next.
    let mut carried: Option<RecordBatch> = None;
    while carried.is_some() || receive.peek().is_some() {
        let writers = factory.create_column_writers(group).map_err(failed)?;
        let mut shares: Vec<Vec<(usize, ArrowColumnWriter)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (leaf, w) in writers.into_iter().enumerate() {
            shares[encoder_of[leaf]].push((leaf, w));
        }
        let chunks =
            std::thread::scope(|scope| -> Result<Vec<(usize, ArrowColumnChunk)>> {
                let mut senders = Vec::with_capacity(n);
                let mut handles = Vec::with_capacity(n);
                for share in shares {
                    let (send, leaves) =
                        std::sync::mpsc::sync_channel::<Arc<Vec<ArrowLeafColumn>>>(2);
                    senders.push(send);
                    handles.push(scope.spawn(move || {
                        let mut share = share;
                        for batch in leaves {
                            for (leaf, w) in &mut share {
                                w.write(&batch[*leaf])?;
                            }
                        }
                        share
                            .into_iter()
                            .map(|(leaf, w)| w.close().map(|chunk| (leaf, chunk)))
                            .collect::<datafusion::parquet::errors::Result<Vec<_>>>()
                    }));
                }
                let mut rows = 0;
                let fed = (|| -> Result<()> {
                    while rows < max_rows {
                        let batch = match carried.take() {
                            Some(b) => b,
                            None => match receive.next() {
                                Some(b) => b?,
                                None => break,
                            },
                        };
                        let take = batch.num_rows().min(max_rows - rows);
                        if take < batch.num_rows() {
                            carried = Some(batch.slice(take, batch.num_rows() - take));
                        }
                        let batch = batch.slice(0, take);
                        rows += take;
                        let mut leaves = Vec::with_capacity(batch.num_columns());
                        for (field, column) in schema.fields().iter().zip(batch.columns())
                        {
                            leaves.extend(compute_leaves(field, column).map_err(failed)?);
                        }
                        let leaves = Arc::new(leaves);
                        for send in &senders {
                            // An encoder that stopped has an error, reported below.
                            if send.send(leaves.clone()).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(())
                })();
                drop(senders);
                let mut chunks = Vec::new();
                for handle in handles {
                    let encoded = handle.join().map_err(|_| {
                        Error::Internal("a Parquet encoder thread panicked".into())
                    })?;
                    chunks.extend(encoded.map_err(failed)?);
                }
                fed?;
                chunks.sort_by_key(|(leaf, _)| *leaf);
                Ok(chunks)
            })?;
        if send_group.send(chunks).is_err() {
            return Ok(());
        }
        group += 1;
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

/// Shares the leaf columns of `schema` out among `encoders` encoders and
/// returns the encoder of each leaf. Each leaf, the costliest first, goes
/// to the encoder with the least work so far. Byte arrays (strings) count
/// 4, because their dictionary hashes and compares bytes, 8-byte numbers 2
/// and the others 1.
fn encoder_of_leaf(
    schema: &datafusion::parquet::schema::types::SchemaDescriptor,
    encoders: usize,
) -> Vec<usize> {
    use datafusion::parquet::basic::Type;
    let costs: Vec<usize> = schema
        .columns()
        .iter()
        .map(|c| match c.physical_type() {
            Type::BYTE_ARRAY | Type::FIXED_LEN_BYTE_ARRAY => 4,
            Type::DOUBLE | Type::INT64 | Type::INT96 => 2,
            _ => 1,
        })
        .collect();
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&leaf| std::cmp::Reverse(costs[leaf]));
    let mut load = vec![0; encoders.max(1)];
    let mut encoder_of = vec![0; costs.len()];
    for leaf in order {
        let least = (0..load.len()).min_by_key(|&e| load[e]).unwrap_or(0);
        encoder_of[leaf] = least;
        load[least] += costs[leaf];
    }
    encoder_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::file::properties::WriterProperties;

    fn batch(schema: &SchemaRef, start: usize, rows: usize) -> RecordBatch {
        let ids: Vec<i32> = (start..start + rows).map(|i| i as i32).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("p{}", i % 3)).collect();
        let x: Vec<f64> = ids.iter().map(|&i| f64::from(i) * 0.5).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(Float64Array::from(x)),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    #[test]
    fn parallel_encoding_splits_row_groups_in_order() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("x", DataType::Float64, false),
        ]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let props =
            WriterProperties::builder().set_max_row_group_row_count(Some(7)).build();
        let file = std::fs::File::create(&path).unwrap();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        // Batches of 5, 5, 0, 5 and 3 rows: row groups of 7, 7 and 4.
        let (send, receive) = std::sync::mpsc::sync_channel(8);
        let mut start = 0;
        for rows in [5, 5, 0, 5, 3] {
            send.send(Ok(batch(&schema, start, rows))).unwrap();
            start += rows;
        }
        drop(send);
        encode_in_parallel(writer, &schema, receive, &path).unwrap();

        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                .unwrap();
        let groups: Vec<i64> =
            reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, vec![7, 7, 4]);
        let read: Vec<RecordBatch> =
            reader.build().unwrap().map(|b| b.unwrap()).collect();
        let all = datafusion::arrow::compute::concat_batches(&schema, &read).unwrap();
        assert_eq!(all, batch(&schema, 0, 18));
    }

    #[test]
    fn strings_get_an_encoder_of_their_own() {
        let schema = Schema::new(vec![
            Field::new("process", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("weight", DataType::Float64, false),
            Field::new("category", DataType::Int32, true),
        ]);
        let parquet = datafusion::parquet::arrow::ArrowSchemaConverter::new()
            .convert(&schema)
            .unwrap();
        // Costs 4, 2, 2, 1: the string alone, then the two floats together,
        // then the category with the string (loads 5 and 4).
        assert_eq!(encoder_of_leaf(&parquet, 2), vec![0, 1, 1, 0]);
        assert_eq!(encoder_of_leaf(&parquet, 1), vec![0, 0, 0, 0]);
    }

    #[test]
    fn parallel_encoding_reports_a_failed_batch() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let file = std::fs::File::create(&path).unwrap();
        let writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        let (send, receive) = std::sync::mpsc::sync_channel(2);
        let ok = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef],
        )
        .unwrap();
        send.send(Ok(ok)).unwrap();
        send.send(Err(Error::input("in.parquet", "the input broke"))).unwrap();
        drop(send);
        let err = encode_in_parallel(writer, &schema, receive, &path).unwrap_err();
        assert_eq!(err.to_string(), "input in.parquet: the input broke");
    }
}
