//! Event sources: Parquet files and toy generators, opened as streams of
//! Arrow record batches, and the DataFusion table `events` over all of them.
//!
//! [`Sources`] contains the pipeline's inputs. Each input is read in file order,
//! once for the selection and once more for the apply stage. The table
//! `events` has the input's columns, a `process` column with gato's process
//! name, and three hidden columns ([`HIDDEN_COLUMNS`]) that tie every
//! selected event back to its input row.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use crate::config::{Input, InputKind, Pipeline, ProcessAssign};
use crate::error::{Error, Result};

/// Index of the process (position in the pipeline's process list), Int32.
pub const PROCESS_INDEX_COLUMN: &str = "_gato_process";
/// Index of the input (position in [`Sources`]), Int32.
pub const INPUT_COLUMN: &str = "_gato_input";
/// Row number within the input, from 0, Int64.
pub const ROW_COLUMN: &str = "_gato_row";
/// The hidden columns that gato adds to `events`.
pub const HIDDEN_COLUMNS: [&str; 3] = [PROCESS_INDEX_COLUMN, INPUT_COLUMN, ROW_COLUMN];

/// Rows per batch when reading Parquet.
pub(crate) const READ_BATCH_ROWS: usize = 65_536;

/// An iterator over the raw record batches of one input, in file order.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// The pipeline's inputs, ready to be read.
#[derive(Debug, Clone)]
pub struct Sources {
    inputs: Vec<LoadedInput>,
    process_names: Vec<String>,
    /// Local copies of the inputs on object stores, deleted on drop.
    _staged: Option<Arc<(tempfile::TempDir, crate::interrupt::Tracked)>>,
    /// Rows whose process-column value matches no process, per input and
    /// value, counted while `events` is scanned.
    unmatched: Arc<Mutex<BTreeMap<(usize, String), usize>>>,
    /// The schema of `events` common to every input, once checked.
    common: Arc<std::sync::OnceLock<SchemaRef>>,
}

#[derive(Debug, Clone)]
struct LoadedInput {
    input: Input,
    raw_schema: SchemaRef,
    generated: Option<Arc<Vec<RecordBatch>>>,
    /// Number of rows.
    rows: u64,
    /// The file that is read: the input's own, or its local copy.
    local: Option<std::path::PathBuf>,
}

impl Sources {
    /// Opens every input once to read its schema, and draws toy samples.
    pub fn open(pipeline: &Pipeline) -> Result<Sources> {
        let mut inputs = Vec::new();
        // Inputs of one process with their own `process` column.
        let mut hidden = Vec::new();
        let mut staged: Option<(tempfile::TempDir, crate::interrupt::Tracked)> = None;
        for (index, input) in pipeline.inputs.iter().enumerate() {
            let local = match &input.kind {
                InputKind::File(path) => Some(path.clone()),
                InputKind::Object(url) => {
                    if staged.is_none() {
                        let dir = tempfile::Builder::new()
                            .prefix("gato-inputs-")
                            .tempdir()
                            .map_err(|e| {
                                Error::input(
                                    url,
                                    format!(
                                        "cannot create a temporary directory for the \
                                         copies of the inputs: {e}; set TMPDIR"
                                    ),
                                )
                            })?;
                        let tracked = crate::interrupt::Tracked::new(dir.path());
                        staged = Some((dir, tracked));
                    }
                    let dir = staged.as_ref().map(|d| d.0.path()).unwrap_or(Path::new("."));
                    let copy = dir.join(format!("input{index}.parquet"));
                    let bytes = crate::remote::download(url, &copy)?;
                    tracing::info!(input = %url, bytes, "copied the input from the object store");
                    Some(copy)
                }
                InputKind::Generator { .. } => None,
            };
            let (raw_schema, generated, rows) = match (&input.kind, &local) {
                (InputKind::File(_) | InputKind::Object(_), Some(path)) => {
                    let reader = parquet_reader(path)
                        .map_err(|e| relabel(e, path, &input.label()))?;
                    let rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
                    (reader.schema().clone(), None, rows)
                }
                (InputKind::Generator { spec, .. }, _) => {
                    tracing::info!(kind = ?spec.kind, seed = spec.seed, "generating toy events");
                    let batches = crate::toy::generate(spec);
                    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                    (spec.schema(), Some(Arc::new(batches)), rows)
                }
                (_, None) => {
                    return Err(Error::Internal(format!("no file to read for {}", input.label())));
                }
            };
            if check_process_column(input, &raw_schema)? {
                hidden.push(input.label());
            }
            // The apply stage appends this column, so check before any work.
            let category = crate::apply::CATEGORY_COLUMN;
            if raw_schema.field_with_name(category).is_ok() {
                return Err(Error::input(
                    input.label(),
                    format!(
                        "already has a column `{category}`; rename or drop it before running \
                         gato, which appends its own"
                    ),
                ));
            }
            inputs.push(LoadedInput {
                input: input.clone(),
                raw_schema,
                generated,
                rows,
                local,
            });
        }
        if let Some(first) = hidden.first() {
            tracing::warn!(
                inputs = hidden.len(),
                first = %first,
                "inputs have their own `process` column, which the selection cannot read: \
                 there `process` is gato's process name (the categorised outputs keep the \
                 file's column). Rename the column, or name it in the source's \
                 `process_column` if it holds the process names"
            );
        }
        let process_names = pipeline.processes.iter().map(|p| p.name.clone()).collect();
        Ok(Sources {
            inputs,
            process_names,
            _staged: staged.map(Arc::new),
            unmatched: Arc::default(),
            common: Arc::default(),
        })
    }

    /// Adds `rows` rows of input `index` whose process value `value` matches
    /// no process to the counts of [`Sources::warn_unmatched`].
    pub(crate) fn add_unmatched(&self, index: usize, value: String, rows: usize) {
        let mut counts = self.unmatched.lock().expect("lock is not poisoned");
        *counts.entry((index, value)).or_default() += rows;
    }

    /// Logs a warning per input whose rows had process values that match no
    /// process, with the counts, and resets the counts.
    pub fn warn_unmatched(&self) {
        let counts =
            std::mem::take(&mut *self.unmatched.lock().expect("lock is not poisoned"));
        let mut by_input: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for ((input, value), n) in counts {
            by_input.entry(input).or_default().push(format!("{value}: {n}"));
        }
        for (input, values) in by_input {
            tracing::warn!(
                "input {}: rows with process values [{}] match no process of the pipeline; \
                 they are left out and get a null category (add the processes, or set \
                 `process_value` if the names differ)",
                self.inputs[input].input.label(),
                values.join(", ")
            );
        }
    }

    /// Number of rows of all inputs together.
    pub fn rows(&self) -> u64 {
        self.inputs.iter().map(|i| i.rows).sum()
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Returns whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Returns the input at `index`.
    pub fn input(&self, index: usize) -> &Input {
        &self.inputs[index].input
    }

    /// Schema of the raw batches of input `index`.
    pub fn raw_schema(&self, index: usize) -> SchemaRef {
        self.inputs[index].raw_schema.clone()
    }

    /// Reads the raw batches of input `index`, in order.
    pub fn read(&self, index: usize) -> Result<BatchIter> {
        let loaded = &self.inputs[index];
        match (&loaded.input.kind, &loaded.generated) {
            (_, Some(batches)) => {
                let batches = batches.clone();
                Ok(Box::new((0..batches.len()).map(move |i| Ok(batches[i].clone()))))
            }
            (InputKind::File(_) | InputKind::Object(_), None) => {
                let path = loaded.local.as_deref().ok_or_else(|| {
                    Error::Internal(format!("no file to read for {}", loaded.input.label()))
                })?;
                read_parquet_file(path)
                    .map(|(_, batches)| batches)
                    .map_err(|e| relabel(e, path, &loaded.input.label()))
            }
            (InputKind::Generator { .. }, None) => {
                Err(Error::Internal("generator input without generated batches".into()))
            }
        }
    }

    /// Schema of the table `events` for input `index`.
    fn events_schema(&self, index: usize) -> SchemaRef {
        let loaded = &self.inputs[index];
        let mut fields: Vec<Field> = loaded
            .raw_schema
            .fields()
            .iter()
            .filter(|f| f.name() != "process")
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("process", DataType::Utf8, false));
        fields.push(Field::new(PROCESS_INDEX_COLUMN, DataType::Int32, false));
        fields.push(Field::new(INPUT_COLUMN, DataType::Int32, false));
        fields.push(Field::new(ROW_COLUMN, DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }

    /// Builds the DataFusion table `events` over every input.
    ///
    /// All inputs must give the same columns; the error lists the difference.
    pub fn events_table(&self) -> Result<StreamingTable> {
        let schema = self.common_events_schema()?;
        let partitions: Vec<Arc<dyn PartitionStream>> = (0..self.inputs.len())
            .map(|index| {
                Arc::new(EventsPartition { sources: self.clone(), index, schema: schema.clone() })
                    as Arc<dyn PartitionStream>
            })
            .collect();
        StreamingTable::try_new(schema, partitions)
            .map_err(|e| Error::datafusion("building the table `events`", e))
    }

    /// Schema of the table `events`, after checking that every input gives
    /// the same column names and types, in any order; the error lists the
    /// differences. The columns come in the first input's order. A column
    /// is nullable when it is in any input, and field metadata is
    /// dropped, so files that differ only there can be read together.
    pub(crate) fn common_events_schema(&self) -> Result<SchemaRef> {
        if let Some(schema) = self.common.get() {
            return Ok(schema.clone());
        }
        let first = self.events_schema(0);
        let mut nullable: Vec<bool> = first.fields().iter().map(|f| f.is_nullable()).collect();
        for index in 1..self.inputs.len() {
            let this = self.events_schema(index);
            let differences = column_differences(&this, &first);
            if !differences.is_empty() {
                return Err(Error::input(
                    self.inputs[index].input.label(),
                    format!(
                        "its columns differ from those of {}: {}; every input must have \
                         the same column names and types",
                        self.inputs[0].input.label(),
                        differences.join(", ")
                    ),
                ));
            }
            for (n, f) in nullable.iter_mut().zip(first.fields()) {
                *n |= this.field_with_name(f.name()).is_ok_and(|g| g.is_nullable());
            }
        }
        let fields: Vec<Field> = first
            .fields()
            .iter()
            .zip(&nullable)
            .map(|(f, &n)| Field::new(f.name(), f.data_type().clone(), n))
            .collect();
        Ok(self.common.get_or_init(|| Arc::new(Schema::new(fields))).clone())
    }

    /// The local Parquet file of input `index`: the input's own file or its
    /// copy of an object; `None` for a generator.
    pub(crate) fn local_file(&self, index: usize) -> Option<&Path> {
        let loaded = &self.inputs[index];
        match loaded.generated {
            Some(_) => None,
            None => loaded.local.as_deref(),
        }
    }

    /// Names of the pipeline's processes, by index.
    pub(crate) fn process_names(&self) -> &[String] {
        &self.process_names
    }

    /// Reads input `index` as rows of `events`, in order.
    pub(crate) fn events_batches(&self, index: usize) -> Result<Vec<RecordBatch>> {
        let mut first_row = 0i64;
        let mut out = Vec::new();
        for batch in self.read(index)? {
            let batch = batch?;
            out.push(self.to_events(index, first_row, &batch)?);
            first_row += batch.num_rows() as i64;
        }
        Ok(out)
    }

    /// Turns a raw batch of input `index` that starts at row `first_row` into
    /// rows of `events`, dropping rows that belong to no process.
    fn to_events(
        &self,
        index: usize,
        first_row: i64,
        batch: &RecordBatch,
    ) -> Result<RecordBatch> {
        let loaded = &self.inputs[index];
        let rows = batch.num_rows();
        let process: Vec<Option<i32>> = match &loaded.input.assign {
            ProcessAssign::All(p) => vec![Some(*p as i32); rows],
            ProcessAssign::ByColumn { column, values } => {
                let array = batch.column_by_name(column).ok_or_else(|| {
                    Error::Internal(format!("process column {column} vanished"))
                })?;
                let strings = cast(array, &DataType::Utf8)
                    .map_err(|e| Error::input(loaded.input.label(), e.to_string()))?;
                let strings =
                    strings.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                        Error::Internal("cast to Utf8 gave another type".into())
                    })?;
                let mut unmatched: BTreeMap<String, usize> = BTreeMap::new();
                let process: Vec<Option<i32>> = (0..rows)
                    .map(|i| {
                        let value = (!strings.is_null(i)).then(|| strings.value(i));
                        let p = value.and_then(|v| values.get(v)).map(|&p| p as i32);
                        if p.is_none() {
                            *unmatched
                                .entry(value.unwrap_or("<null>").to_string())
                                .or_default() += 1;
                        }
                        p
                    })
                    .collect();
                if !unmatched.is_empty() {
                    let mut counts = self.unmatched.lock().expect("lock is not poisoned");
                    for (value, n) in unmatched {
                        *counts.entry((index, value)).or_default() += n;
                    }
                }
                process
            }
        };
        // The input's columns in the order of the common schema, which
        // ends with `process` and the three hidden columns.
        let schema = self.common_events_schema()?;
        let input_columns = &schema.fields()[..schema.fields().len() - 4];
        let mut columns: Vec<ArrayRef> = input_columns
            .iter()
            .map(|f| {
                batch.column_by_name(f.name()).cloned().ok_or_else(|| {
                    Error::input(
                        self.inputs[index].input.label(),
                        format!("a batch lacks the column `{}` of the file's schema", f.name()),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let names: StringArray = process
            .iter()
            .map(|p| Some(p.map_or("", |p| self.process_names[p as usize].as_str())))
            .collect();
        columns.push(Arc::new(names));
        columns.push(Arc::new(Int32Array::from_iter_values(
            process.iter().map(|p| p.unwrap_or(-1)),
        )));
        columns.push(Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(
            index as i32,
            rows,
        ))));
        columns.push(Arc::new(Int64Array::from_iter_values(
            first_row..first_row + rows as i64,
        )));
        let events = RecordBatch::try_new(schema, columns)
            .map_err(|e| Error::Internal(format!("building events batch: {e}")))?;
        if process.iter().all(Option::is_some) {
            return Ok(events);
        }
        let keep: BooleanArray = process.iter().map(|p| Some(p.is_some())).collect();
        filter_record_batch(&events, &keep)
            .map_err(|e| Error::Internal(format!("filtering events batch: {e}")))
    }
}

/// Opens a Parquet file for reading in file order: its schema and batches.
pub fn read_parquet_file(path: &std::path::Path) -> Result<(SchemaRef, BatchIter)> {
    let builder = parquet_reader(path)?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| Error::input(path, format!("cannot read as Parquet: {e}")))?;
    let path = path.to_path_buf();
    let batches = reader.map(move |batch| {
        batch.map_err(|e| {
            Error::input(
                &path,
                format!("cannot read Parquet data ({e}); the file may be truncated"),
            )
        })
    });
    Ok((schema, Box::new(batches)))
}

pub(crate) fn parquet_reader(
    path: &std::path::Path,
) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        Error::input(
            path,
            format!(
                "not a readable Parquet file ({e}); check that it is complete Parquet"
            ),
        )
    })
}

/// Names the input by `label` (its URL) in an error about its local copy
/// `local`.
fn relabel(error: Error, local: &Path, label: &str) -> Error {
    match error {
        Error::Input { path, message } if path == local => Error::input(label, message),
        other => other,
    }
}

/// Lists the differences in column names and types of `this` against
/// `first`, in words; empty when they agree.
fn column_differences(this: &Schema, first: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for f in this.fields() {
        match first.field_with_name(f.name()) {
            Err(_) => out.push(format!("`{}` ({}) is only in this input", f.name(), f.data_type())),
            Ok(g) if g.data_type() != f.data_type() => out.push(format!(
                "`{}` is {} here and {} there",
                f.name(),
                f.data_type(),
                g.data_type()
            )),
            Ok(_) => {}
        }
    }
    for g in first.fields() {
        if this.field_with_name(g.name()).is_err() {
            out.push(format!("`{}` ({}) is missing here", g.name(), g.data_type()));
        }
    }
    out
}

/// Checks that an input assigned by column has that column, as strings.
/// Returns whether an input assigned to one process has its own `process`
/// column, which the selection's `process` hides.
fn check_process_column(input: &Input, schema: &Schema) -> Result<bool> {
    let ProcessAssign::ByColumn { column, .. } = &input.assign else {
        return Ok(schema.field_with_name("process").is_ok());
    };
    let field = schema.field_with_name(column).map_err(|_| {
        let names: Vec<&str> =
            schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::input(
            input.label(),
            format!(
                "process column `{column}` not found; the file has columns [{}]",
                names.join(", ")
            ),
        )
    })?;
    if !matches!(
        field.data_type(),
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Dictionary(_, _)
    ) {
        return Err(Error::input(
            input.label(),
            format!(
                "process column `{column}` has type {}, expected a string column",
                field.data_type()
            ),
        ));
    }
    if column != "process" && schema.field_with_name("process").is_ok() {
        return Err(Error::input(
            input.label(),
            format!(
                "column `process` is reserved for gato's process name, but the process \
                 column is `{column}`; rename the file's `process` column or use it as \
                 `process_column`"
            ),
        ));
    }
    Ok(false)
}

/// One input as a partition of the table `events`.
#[derive(Debug)]
struct EventsPartition {
    sources: Sources,
    index: usize,
    schema: SchemaRef,
}

impl PartitionStream for EventsPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let sources = self.sources.clone();
        let index = self.index;
        let batches: BatchIter = match sources.read(index) {
            Ok(iter) => iter,
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        let mut next_row = 0i64;
        let events = batches.map(move |batch| {
            let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
            let first_row = next_row;
            next_row += batch.num_rows() as i64;
            sources
                .to_events(index, first_row, &batch)
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(events),
        ))
    }
}
