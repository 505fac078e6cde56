//! The apply stage: every input row, unchanged and in order, plus the
//! `category` column, written as Parquet.
//!
//! Each output is written to a temporary file in the output directory and
//! renamed into place when complete, so a reader sees either no file or a
//! whole one. Inputs are only read.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};

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
        let categorise = |first: usize, rows: usize| {
            let mut slots = vec![0u32; rows];
            for run in &mut runs {
                run.place(first as u64, &mut slots, &mut reader, &assign)?;
            }
            Ok(slots.into_iter().map(|v| (v > 0).then(|| (v - 1) as i32)).collect())
        };
        match sources.local_file(index) {
            Some(file) => copy_categorised(file, &label, &path, categorise)?,
            None => write_categorised(
                sources.read(index)?,
                &sources.raw_schema(index),
                &label,
                &path,
                categorise,
            )?,
        }
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

/// Fails when `schema`, the schema of the input `label`, already has the
/// column that the apply stage appends.
fn check_no_category(schema: &Schema, label: &str) -> Result<()> {
    if schema.field_with_name(CATEGORY_COLUMN).is_ok() {
        return Err(Error::input(
            label,
            format!(
                "already has a column `{CATEGORY_COLUMN}`; rename it before running gato, \
                 which appends its own"
            ),
        ));
    }
    Ok(())
}

/// Writes every batch of `batches` with a `category` column appended to
/// `path`, atomically.
///
/// `categorise(first, rows)` returns the categories of the `rows` rows
/// after the first `first` rows; it is called for consecutive ranges from
/// row 0 on. `label` names the input in errors.
pub fn write_categorised(
    batches: BatchIter,
    raw: &SchemaRef,
    label: &str,
    path: &Path,
    mut categorise: impl FnMut(usize, usize) -> Result<Int32Array> + Send,
) -> Result<()> {
    check_no_category(raw, label)?;
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
                    let column = categorise(row, batch.num_rows())?;
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

/// Rows of the `category` column produced at a time by the copying apply.
const CATEGORY_PIECE_ROWS: usize = 65_536;

/// Copies the Parquet file `input` to `path` with a `category` column
/// appended, atomically.
///
/// The input's column chunks are copied byte for byte, with their
/// encodings, compression, statistics, page indexes and bloom filters.
/// The row groups and key-value metadata stay as they are. Only the
/// `category` column is encoded, with the input's compression.
/// `categorise` is as for [`write_categorised`] and runs on a thread of its
/// own while the columns are copied. `label` names the input in errors.
pub fn copy_categorised(
    input: &Path,
    label: &str,
    path: &Path,
    mut categorise: impl FnMut(usize, usize) -> Result<Int32Array> + Send,
) -> Result<()> {
    use datafusion::parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions,
    };
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use datafusion::parquet::file::writer::SerializedFileWriter;

    let file = std::fs::File::open(input)
        .map_err(|e| Error::input(label, format!("cannot open: {e}")))?;
    let load = |policy| {
        let options = ArrowReaderOptions::new().with_page_index_policy(policy);
        ArrowReaderMetadata::load(&file, options)
    };
    // A damaged page index only costs the copy its index.
    let metadata = load(PageIndexPolicy::Optional)
        .or_else(|damaged| {
            let metadata = load(PageIndexPolicy::Skip)?;
            tracing::warn!(
                input = label,
                error = %damaged,
                "cannot read the page index; the copy is written without one"
            );
            Ok(metadata)
        })
        .map_err(|e: datafusion::parquet::errors::ParquetError| {
            Error::input(
                label,
                format!(
                    "not a readable Parquet file ({e}); check that it is complete Parquet"
                ),
            )
        })?;
    check_no_category(metadata.schema(), label)?;
    let parquet = metadata.metadata();
    let (root, props) = copy_layout(parquet, metadata.schema())
        .map_err(|e| Error::output(path, format!("cannot describe the output: {e}")))?;
    let groups: Vec<usize> =
        parquet.row_groups().iter().map(|g| g.num_rows().max(0) as usize).collect();

    let temp = crate::atomic::temp_file_for(path)?;
    let out = temp.reopen().map_err(|e| Error::output(temp.path(), e.to_string()))?;
    let failed =
        |e: datafusion::parquet::errors::ParquetError| Error::output(path, e.to_string());
    let mut writer = SerializedFileWriter::new(out, root, props).map_err(failed)?;
    std::thread::scope(|scope| -> Result<()> {
        // The categories of the next rows are computed while the columns
        // are copied. The bounded channel buffers at most four pieces.
        let (send, pieces) = std::sync::mpsc::sync_channel::<Result<Int32Array>>(4);
        let sizes = &groups;
        scope.spawn(move || {
            let mut first = 0;
            for &rows in sizes {
                let end = first + rows;
                while first < end {
                    let n = (end - first).min(CATEGORY_PIECE_ROWS);
                    let piece = categorise(first, n);
                    let stop = piece.is_err();
                    // The receiver is gone when writing failed.
                    if send.send(piece).is_err() || stop {
                        return;
                    }
                    first += n;
                }
            }
        });
        for (g, group) in parquet.row_groups().iter().enumerate() {
            let mut row_group = writer.next_row_group().map_err(failed)?;
            for (c, chunk) in group.columns().iter().enumerate() {
                let column = chunk.column_path().string();
                let close = copied_chunk(&file, parquet, g, c).map_err(|e| {
                    Error::input(
                        label,
                        format!(
                            "column `{column}` of row group {g} is damaged ({e}); repair or \
                             rewrite the file"
                        ),
                    )
                })?;
                row_group.append_column(&file, close).map_err(|e| {
                    Error::output(
                        path,
                        format!("cannot copy column `{column}` of row group {g}: {e}"),
                    )
                })?;
            }
            let mut column =
                row_group.next_column().map_err(failed)?.ok_or_else(|| {
                    Error::Internal("the output has no category column".into())
                })?;
            let typed = column.typed::<datafusion::parquet::data_type::Int32Type>();
            let mut left = groups[g];
            let (mut values, mut levels) = (Vec::new(), Vec::new());
            while left > 0 {
                let piece = pieces.recv().map_err(|_| {
                    Error::Internal("the categories ended before the rows".into())
                })??;
                if piece.is_empty() || piece.len() > left {
                    return Err(Error::Internal(format!(
                        "{} categories for {left} rows",
                        piece.len()
                    )));
                }
                values.clear();
                levels.clear();
                for category in piece.iter() {
                    levels.push(i16::from(category.is_some()));
                    values.extend(category);
                }
                typed.write_batch(&values, Some(&levels), None).map_err(failed)?;
                left -= piece.len();
            }
            column.close().map_err(failed)?;
            row_group.close().map_err(failed)?;
        }
        writer.close().map_err(failed)?;
        Ok(())
    })?;
    crate::atomic::persist(temp, path)
}

/// Returns the Parquet schema and writer properties of a copy of the file
/// described by `parquet`, whose Arrow schema is `arrow`, with the
/// `category` column appended.
///
/// The copied leaves keep their exact Parquet types, so that their column
/// chunks can be copied as they are. The key-value metadata is the
/// input's, with the Arrow schema replaced by one that lists `category`.
fn copy_layout(
    parquet: &datafusion::parquet::file::metadata::ParquetMetaData,
    arrow: &Schema,
) -> datafusion::parquet::errors::Result<(
    datafusion::parquet::schema::types::TypePtr,
    Arc<datafusion::parquet::file::properties::WriterProperties>,
)> {
    use datafusion::parquet::arrow::{ARROW_SCHEMA_META_KEY, encode_arrow_schema};
    use datafusion::parquet::basic::{Repetition, Type as PhysicalType};
    use datafusion::parquet::file::metadata::KeyValue;
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use datafusion::parquet::schema::types::{ColumnPath, Type};

    let input_root = parquet.file_metadata().schema_descr().root_schema();
    let mut fields = input_root.get_fields().to_vec();
    fields.push(Arc::new(
        Type::primitive_type_builder(CATEGORY_COLUMN, PhysicalType::INT32)
            .with_repetition(Repetition::OPTIONAL)
            .build()?,
    ));
    let root = Type::group_type_builder(input_root.name()).with_fields(fields).build()?;

    let mut with_category: Vec<Field> =
        arrow.fields().iter().map(|f| f.as_ref().clone()).collect();
    with_category.push(Field::new(CATEGORY_COLUMN, DataType::Int32, true));
    let with_category =
        Schema::new_with_metadata(with_category, arrow.metadata().clone());
    let mut metadata: Vec<KeyValue> = parquet
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key != ARROW_SCHEMA_META_KEY)
        .cloned()
        .collect();
    metadata.push(KeyValue::new(
        ARROW_SCHEMA_META_KEY.to_string(),
        encode_arrow_schema(&with_category),
    ));

    let groups = parquet.row_groups();
    let mut props = WriterProperties::builder().set_key_value_metadata(Some(metadata));
    // The writer needs an offset index for every column chunk or for none.
    // The reader keeps the input's only when every chunk has one.
    if parquet.offset_index().is_none() {
        props = props
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true);
    }
    if let Some(chunk) = groups.first().and_then(|g| g.columns().first()) {
        props = props.set_column_compression(
            ColumnPath::from(CATEGORY_COLUMN),
            chunk.compression_codec().into(),
        );
    }
    // Row groups sorted alike stay declared sorted. `category` comes last,
    // so the column numbers still hold.
    let sorting = groups.first().and_then(|g| g.sorting_columns().cloned());
    if sorting.is_some() && groups.iter().all(|g| g.sorting_columns() == sorting.as_ref())
    {
        props = props.set_sorting_columns(sorting);
    }
    Ok((Arc::new(root), Arc::new(props.build())))
}

/// Returns the column chunk `column` of row group `group` of `file`,
/// described by `parquet`, ready to be appended to a row group as it is,
/// with its bloom filter if it has one.
fn copied_chunk(
    file: &std::fs::File,
    parquet: &datafusion::parquet::file::metadata::ParquetMetaData,
    group: usize,
    column: usize,
) -> datafusion::parquet::errors::Result<
    datafusion::parquet::column::writer::ColumnCloseResult,
> {
    use datafusion::parquet::bloom_filter::Sbbf;
    use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
    let row_group = parquet.row_group(group);
    let chunk = row_group.column(column);
    let column_index = parquet
        .column_index()
        .and_then(|index| index.get(group)?.get(column).cloned())
        .filter(|index| !matches!(index, ColumnIndexMetaData::NONE));
    let offset_index =
        parquet.offset_index().and_then(|index| index.get(group)?.get(column).cloned());
    check_pages(file, chunk, row_group.num_rows().max(0) as usize)?;
    // The bloom filter only speeds up reading, so a damaged one is dropped.
    let bloom_filter = match chunk.bloom_filter_offset() {
        Some(_) => Sbbf::read_from_column_chunk(chunk, file).unwrap_or_else(|e| {
            tracing::warn!(
                column = %chunk.column_path().string(),
                row_group = group,
                error = %e,
                "cannot read the bloom filter; the copy is written without it"
            );
            None
        }),
        None => None,
    };
    Ok(datafusion::parquet::column::writer::ColumnCloseResult {
        bytes_written: chunk.compressed_size().max(0) as u64,
        rows_written: row_group.num_rows().max(0) as u64,
        metadata: chunk.clone(),
        bloom_filter,
        column_index,
        offset_index,
    })
}

/// Reads the page headers of the column chunk `chunk` of `file`, whose row
/// group has `rows` rows, and fails unless they fill the chunk exactly and
/// count its values.
///
/// The pages themselves are copied unread, so this is what finds a chunk
/// that is truncated or whose headers are damaged.
fn check_pages(
    file: &std::fs::File,
    chunk: &datafusion::parquet::file::metadata::ColumnChunkMetaData,
    rows: usize,
) -> datafusion::parquet::errors::Result<()> {
    use datafusion::parquet::column::page::PageReader;
    use datafusion::parquet::errors::ParquetError;
    use datafusion::parquet::file::serialized_reader::SerializedPageReader;
    let reader = Arc::new(file.try_clone()?);
    let mut pages = SerializedPageReader::new(reader, chunk, rows, None)?;
    let mut values = 0usize;
    while let Some(page) = pages.peek_next_page()? {
        if !page.is_dict {
            values += page.num_levels.unwrap_or(0);
        }
        pages.skip_next_page()?;
    }
    let expected = chunk.num_values().max(0) as usize;
    if values != expected {
        return Err(ParquetError::General(format!(
            "its pages hold {values} values, its metadata {expected}"
        )));
    }
    Ok(())
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

/// Row counts of one file categorised by [`apply_model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rows of the file.
    pub rows: usize,
    /// Rows left without a category.
    pub uncategorised: usize,
    /// Per discriminant, rows with a finite value outside the model's
    /// range, which are in the first or last category.
    pub outside_range: Vec<usize>,
}

/// Categorises the Parquet file `input` with a saved model and writes it,
/// with the `category` column, to `output`.
///
/// The model's discriminant columns must be numeric columns of the file.
/// Rows where one of them is null, NaN or ±inf get a null category.
pub fn apply_model(saved: &SavedModel, input: &Path, output: &Path) -> Result<Applied> {
    check_not_input(input, output)?;
    let builder = crate::source::parquet_reader(input)?;
    check_schema(saved, input, builder.schema())?;

    // Only the discriminants are decoded, and the other columns are copied.
    let roots = saved
        .discriminants
        .iter()
        .map(|name| builder.schema().index_of(name))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|e| Error::Internal(format!("discriminant column: {e}")))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut batches = builder
        .with_projection(mask)
        .with_batch_size(crate::source::READ_BATCH_ROWS)
        .build()
        .map_err(|e| Error::input(input, format!("cannot read as Parquet: {e}")))?;

    let model = saved.model();
    let mut applied = Applied {
        rows: 0,
        uncategorised: 0,
        outside_range: vec![0; saved.discriminants.len()],
    };
    let mut pending: VecDeque<Option<i32>> = VecDeque::new();
    let label = input.display().to_string();
    copy_categorised(input, &label, output, |_, n| {
        while pending.len() < n {
            let batch = batches
                .next()
                .ok_or_else(|| {
                    Error::input(
                        input,
                        "has fewer rows than its footer says; the file may be truncated",
                    )
                })?
                .map_err(|e| {
                    Error::input(
                        input,
                        format!(
                            "cannot read Parquet data ({e}); the file may be truncated"
                        ),
                    )
                })?;
            let columns = discriminant_values(saved, &batch, input)?;
            let assign = model.assign(&saved.parameters, &columns);
            for ((outside, column), [low, high]) in
                applied.outside_range.iter_mut().zip(&columns).zip(&saved.ranges)
            {
                *outside += column
                    .iter()
                    .filter(|x| x.is_finite() && (**x < *low || **x > *high))
                    .count();
            }
            pending.extend((0..batch.num_rows()).map(|i| {
                let finite = columns.iter().all(|c| c[i].is_finite());
                finite.then_some(assign[i] as i32)
            }));
        }
        let piece: Int32Array = pending.drain(..n).collect();
        applied.rows += n;
        applied.uncategorised += piece.null_count();
        Ok(piece)
    })?;
    Ok(applied)
}

/// Returns the model's discriminant columns of `batch`, read from `input`,
/// as float64 with NaN for nulls.
fn discriminant_values(
    saved: &SavedModel,
    batch: &RecordBatch,
    input: &Path,
) -> Result<Vec<Vec<f64>>> {
    let mut columns = Vec::with_capacity(saved.discriminants.len());
    for name in &saved.discriminants {
        let array = batch.column_by_name(name).ok_or_else(|| {
            Error::Internal(format!("column {name} missing from a batch"))
        })?;
        let array = cast(array, &DataType::Float64).map_err(|e| {
            Error::input(input, format!("cannot convert `{name}` to float64: {e}"))
        })?;
        let array =
            array.as_any().downcast_ref::<Float64Array>().cloned().ok_or_else(|| {
                Error::Internal("cast to Float64 gave another type".into())
            })?;
        let values = (0..batch.num_rows())
            .map(|i| if array.is_null(i) { f64::NAN } else { array.value(i) })
            .collect();
        columns.push(values);
    }
    Ok(columns)
}

/// Fails when `output` is the file `input`.
pub fn check_not_input(input: &Path, output: &Path) -> Result<()> {
    let same =
        output.canonicalize().ok().is_some_and(|p| Some(p) == input.canonicalize().ok());
    if same {
        return Err(Error::output(
            output,
            "is the input file; choose another output directory",
        ));
    }
    Ok(())
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
        let numeric = match field.data_type() {
            DataType::Dictionary(_, values) => values.is_numeric(),
            other => other.is_numeric(),
        };
        if !numeric {
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
    /// Writes 18 rows of `batch` in row groups of 7, with zstd, a bloom
    /// filter on `name`, sorting columns and key-value metadata.
    fn copy_input(path: &Path) -> SchemaRef {
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::metadata::{KeyValue, SortingColumn};
        use datafusion::parquet::schema::types::ColumnPath;
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("id", DataType::Int32, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("x", DataType::Float64, false),
            ],
            [("origin".to_string(), "unit test".to_string())].into(),
        ));
        let sorted =
            SortingColumn { column_idx: 0, descending: false, nulls_first: false };
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(7))
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_column_bloom_filter_enabled(ColumnPath::from("name"), true)
            .set_sorting_columns(Some(vec![sorted]))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "producer".to_string(),
                "gato tests".to_string(),
            )]))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        writer.write(&batch(&schema, 0, 10)).unwrap();
        writer.write(&batch(&schema, 10, 8)).unwrap();
        writer.close().unwrap();
        schema
    }

    /// Returns the category of row `row` in the copy tests, null for every
    /// fifth row.
    fn test_category(row: usize) -> Option<i32> {
        (row % 5 != 0).then_some((row % 3) as i32)
    }

    #[test]
    fn copy_keeps_chunks_and_appends_categories() {
        use datafusion::parquet::arrow::arrow_reader::{
            ArrowReaderMetadata, ArrowReaderOptions,
        };
        use datafusion::parquet::basic::Compression;
        use datafusion::parquet::file::metadata::PageIndexPolicy;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        let schema = copy_input(&input);
        let before = std::fs::read(&input).unwrap();
        let mut calls = Vec::new();
        copy_categorised(&input, "in.parquet", &output, |first, rows| {
            calls.push((first, rows));
            Ok((first..first + rows).map(test_category).collect())
        })
        .unwrap();
        // One call per row group, since each is smaller than a piece.
        assert_eq!(calls, [(0, 7), (7, 7), (14, 4)]);
        assert_eq!(std::fs::read(&input).unwrap(), before, "the input changed");

        let options =
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let file = std::fs::File::open(&output).unwrap();
        let metadata = ArrowReaderMetadata::load(&file, options).unwrap();
        let parquet = metadata.metadata();
        let groups: Vec<i64> =
            parquet.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [7, 7, 4]);
        let input_file = std::fs::File::open(&input).unwrap();
        let input_parquet = ArrowReaderMetadata::load(
            &input_file,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )
        .unwrap();
        for (g, group) in parquet.row_groups().iter().enumerate() {
            assert_eq!(group.num_columns(), 4);
            assert_eq!(group.sorting_columns().map(|s| s[0].column_idx), Some(0));
            for (c, chunk) in group.columns().iter().enumerate() {
                assert!(matches!(
                    Compression::from(chunk.compression_codec()),
                    Compression::ZSTD(_)
                ));
                // The offset index points at this file's pages.
                let first_page = &parquet.offset_index().unwrap()[g][c].page_locations[0];
                assert_eq!(
                    first_page.offset,
                    chunk.data_page_offset(),
                    "group {g} column {c}"
                );
                if c < 3 {
                    let source = input_parquet.metadata().row_group(g).column(c);
                    assert_eq!(chunk.compressed_size(), source.compressed_size());
                    assert_eq!(chunk.statistics(), source.statistics());
                    let read = |f: &std::fs::File, m: &datafusion::parquet::file::metadata::ColumnChunkMetaData| {
                        use datafusion::parquet::file::reader::ChunkReader;
                        let start = m.dictionary_page_offset().unwrap_or(m.data_page_offset());
                        f.get_bytes(start as u64, m.compressed_size() as usize).unwrap()
                    };
                    assert_eq!(
                        read(&file, chunk),
                        read(&input_file, source),
                        "group {g} column {c}"
                    );
                }
            }
            let name = group.column(1);
            let bloom = datafusion::parquet::bloom_filter::Sbbf::read_from_column_chunk(
                name, &file,
            )
            .unwrap()
            .expect("the bloom filter of `name` is copied");
            assert!(bloom.check(&"p1"));
        }
        let kv = parquet.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|kv| kv.key == "producer"));

        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let read_schema = reader.schema().clone();
        assert_eq!(
            read_schema.metadata().get("origin").map(String::as_str),
            Some("unit test")
        );
        assert_eq!(
            read_schema.field(3),
            &Field::new(CATEGORY_COLUMN, DataType::Int32, true)
        );
        let read: Vec<RecordBatch> =
            reader.build().unwrap().map(|b| b.unwrap()).collect();
        let all =
            datafusion::arrow::compute::concat_batches(&read_schema, &read).unwrap();
        let expected = batch(&schema, 0, 18);
        for c in 0..3 {
            assert_eq!(all.column(c), expected.column(c));
        }
        let categories: Vec<Option<i32>> =
            all.column(3).as_any().downcast_ref::<Int32Array>().unwrap().iter().collect();
        let wanted: Vec<Option<i32>> = (0..18).map(test_category).collect();
        assert_eq!(categories, wanted);
    }

    #[test]
    fn copy_splits_large_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let rows = CATEGORY_PIECE_ROWS + 10;
        let ids = Int32Array::from_iter_values(0..rows as i32);
        let file = std::fs::File::create(&input).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer
            .write(
                &RecordBatch::try_new(schema, vec![Arc::new(ids) as ArrayRef]).unwrap(),
            )
            .unwrap();
        writer.close().unwrap();

        let mut calls = Vec::new();
        copy_categorised(&input, "in.parquet", &output, |first, n| {
            calls.push((first, n));
            Ok((first..first + n).map(test_category).collect())
        })
        .unwrap();
        assert_eq!(calls, [(0, CATEGORY_PIECE_ROWS), (CATEGORY_PIECE_ROWS, 10)]);

        assert_eq!(metadata_of(&output).num_row_groups(), 1);
        let wanted: Vec<Option<i32>> = (0..rows).map(test_category).collect();
        assert_eq!(categories_of(&output), wanted);
    }

    #[test]
    fn empty_copy_has_category_column() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
        let file = std::fs::File::create(&input).unwrap();
        ArrowWriter::try_new(file, schema, None).unwrap().close().unwrap();
        copy_categorised(&input, "in.parquet", &output, |_, _| {
            panic!("no rows to categorise")
        })
        .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&output).unwrap(),
        )
        .unwrap();
        let names: Vec<&str> =
            reader.schema().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["x", CATEGORY_COLUMN]);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }

    #[test]
    fn failed_copy_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        copy_input(&input);
        let err = copy_categorised(&input, "in.parquet", &output, |first, rows| {
            if first > 0 {
                return Err(Error::input("events", "the event store broke"));
            }
            Ok((first..first + rows).map(test_category).collect())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "input events: the event store broke");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["in.parquet"]);
    }

    #[test]
    fn copy_rejects_input_with_category() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("category", DataType::Int32, true)]));
        let file = std::fs::File::create(&input).unwrap();
        ArrowWriter::try_new(file, schema, None).unwrap().close().unwrap();
        let err = copy_categorised(
            &input,
            "in.parquet",
            &dir.path().join("out.parquet"),
            |_, _| panic!("no rows to categorise"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("already has a column `category`"), "{err}");
    }

    /// Writes 18 rows of `batch` in row groups of 7 with `props`, without
    /// compression or dictionaries, so that page bytes are easy to find.
    fn plain_input(path: &Path, props: WriterProperties) -> SchemaRef {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("x", DataType::Float64, false),
        ]));
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        writer.write(&batch(&schema, 0, 18)).unwrap();
        writer.close().unwrap();
        schema
    }

    fn plain_props() -> datafusion::parquet::file::properties::WriterPropertiesBuilder {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(7))
            .set_dictionary_enabled(false)
    }

    /// Overwrites `length` bytes of `path` from `offset` with `byte`.
    fn damage(path: &Path, offset: u64, length: usize, byte: u8) {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&vec![byte; length]).unwrap();
    }

    fn metadata_of(
        path: &Path,
    ) -> Arc<datafusion::parquet::file::metadata::ParquetMetaData> {
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .metadata()
            .clone()
    }

    fn categories_of(path: &Path) -> Vec<Option<i32>> {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap();
        let mut out = Vec::new();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let column = batch.column_by_name(CATEGORY_COLUMN).unwrap();
            out.extend(column.as_any().downcast_ref::<Int32Array>().unwrap().iter());
        }
        out
    }

    fn copy_test_categories(input: &Path, output: &Path) -> Result<()> {
        copy_categorised(input, "in.parquet", output, |first, rows| {
            Ok((first..first + rows).map(test_category).collect())
        })
    }

    #[test]
    fn copy_without_page_index() {
        use datafusion::parquet::file::properties::EnabledStatistics;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        let props = plain_props()
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .build();
        plain_input(&input, props);
        assert!(
            metadata_of(&input).row_group(0).column(0).offset_index_offset().is_none()
        );

        copy_test_categories(&input, &output).unwrap();

        let copied = metadata_of(&output);
        for column in copied.row_group(0).columns() {
            assert!(column.offset_index_offset().is_none(), "{}", column.column_path());
        }
        let wanted: Vec<Option<i32>> = (0..18).map(test_category).collect();
        assert_eq!(categories_of(&output), wanted);
    }

    #[test]
    fn copy_rejects_damaged_page_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        plain_input(&input, plain_props().build());
        let name = metadata_of(&input).row_group(1).column(1).clone();
        damage(&input, name.data_page_offset() as u64, 6, 0xff);

        let err = copy_test_categories(&input, &output).unwrap_err().to_string();
        assert!(
            err.starts_with("input in.parquet: column `name` of row group 1 is damaged"),
            "{err}"
        );
        assert!(!output.exists());
    }

    #[test]
    fn copy_drops_damaged_page_index() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        plain_input(&input, plain_props().build());
        let x = metadata_of(&input).row_group(0).column(2).clone();
        let start = x.column_index_offset().unwrap() as u64;
        damage(&input, start, x.column_index_length().unwrap() as usize, 0xfe);

        copy_test_categories(&input, &output).unwrap();

        let copied = metadata_of(&output);
        assert!(copied.row_group(0).column(2).column_index_offset().is_none());
        let wanted: Vec<Option<i32>> = (0..18).map(test_category).collect();
        assert_eq!(categories_of(&output), wanted);
    }

    #[test]
    fn copy_drops_damaged_bloom_filter() {
        use datafusion::parquet::schema::types::ColumnPath;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        let output = dir.path().join("out.parquet");
        let props =
            plain_props().set_column_bloom_filter_enabled(ColumnPath::from("name"), true);
        plain_input(&input, props.build());
        let name = metadata_of(&input).row_group(0).column(1).clone();
        damage(&input, name.bloom_filter_offset().unwrap() as u64, 4, 0xff);

        copy_test_categories(&input, &output).unwrap();

        let copied = metadata_of(&output);
        assert!(copied.row_group(0).column(1).bloom_filter_offset().is_none());
        assert!(copied.row_group(1).column(1).bloom_filter_offset().is_some());
    }
}
