//! The selection stage: runs the pipeline's SQL on DataFusion (or on Polars,
//! see [`crate::polars_select`]) over the table `events` and collects the
//! selected events as [`Events`].
//!
//! The query may filter rows, compute discriminants and weights, and join
//! lookup tables, but it must keep one output row per event. gato rewrites
//! every projection of the plan to carry the hidden columns that tie an event
//! to its input row, and rejects aggregations. The weights returned by the
//! query are multiplied by each process's `scale`.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, Float64Array, Int32Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Column;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{LogicalPlan, Projection};
use datafusion::prelude::{Expr, SessionContext};
use futures::StreamExt;

use crate::config::{NonFinitePolicy, Pipeline, Role, SelectEngine};
use crate::error::{Error, Result};
use crate::store::EventSet;
use crate::source::{
    HIDDEN_COLUMNS, INPUT_COLUMN, PROCESS_INDEX_COLUMN, ROW_COLUMN, Sources,
};

/// The selected events, sorted by process, then input, then row.
#[derive(Debug, Clone, Default)]
pub struct Events {
    /// One vector per discriminant, one entry per event.
    pub discriminants: Vec<Vec<f64>>,
    /// Event weight, already multiplied by the process scale.
    pub weight: Vec<f64>,
    /// Process index of each event.
    pub process: Vec<u32>,
    /// Input index of each event.
    pub input: Vec<u32>,
    /// Row of the event within its input.
    pub row: Vec<u64>,
    /// Event index range of each process.
    pub process_ranges: Vec<Range<usize>>,
    /// The `selection.mass` column, when the pipeline names one.
    pub mass: Option<Vec<f64>>,
    /// Σw² of each entry where an entry stands for several events (binned
    /// statistics); `None` means w² of each event.
    pub weight2: Option<Vec<f64>>,
    /// Number of events of each entry where an entry stands for several
    /// events; `None` means one each.
    pub count: Option<Vec<u32>>,
}

impl Events {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.weight.len()
    }

    /// Returns whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    /// Compresses the events into `bins` equal bins per discriminant on
    /// `ranges`, per process: one entry per filled cell, with the cell's Σw,
    /// Σw² and event count, placed at the mean position of its events.
    ///
    /// Values outside a range count in its first or last bin. Entries keep
    /// the process order and, within a process, the cell order, so the
    /// result depends only on the events. The entries carry no input, row
    /// or mass.
    pub fn binned(&self, ranges: &[(f64, f64)], bins: usize) -> Events {
        let mut binner = Binner::new(ranges, bins, self.process_ranges.len());
        binner.add(self);
        binner.finish()
    }

    /// Sum of weights of each process, in float64.
    pub fn process_yields(&self) -> Vec<f64> {
        self.process_ranges.iter().map(|r| self.weight[r.clone()].iter().sum()).collect()
    }
}

/// Returns the bin of `x` among `bins` equal bins of `lo..hi`; values
/// outside, and NaN, go to the end bins.
pub fn bin_of(x: f64, lo: f64, hi: f64, bins: usize) -> usize {
    let t = ((x - lo) / (hi - lo) * bins as f64).floor();
    if t.is_nan() || t < 0.0 { 0 } else { (t as usize).min(bins - 1) }
}

/// Builds [`Events::binned`] chunk by chunk from events sorted by process.
pub struct Binner {
    ranges: Vec<(f64, f64)>,
    bins: usize,
    dims: usize,
    processes: usize,
    /// Process whose cells are being filled.
    current: Option<usize>,
    /// Per cell: Σw, Σw², count and the sum of each coordinate.
    sumw: Vec<f64>,
    sumw2: Vec<f64>,
    count: Vec<u32>,
    position: Vec<f64>,
    out: Events,
}

impl Binner {
    /// Starts empty binned statistics with `bins` equal bins per range.
    pub fn new(ranges: &[(f64, f64)], bins: usize, processes: usize) -> Binner {
        let mut binner = Binner::with_cells(ranges.len(), bins.pow(ranges.len() as u32), processes);
        binner.ranges = ranges.to_vec();
        binner.bins = bins;
        binner
    }

    /// Starts empty statistics of `cells` cells for events with `dims`
    /// discriminants, filled with [`Binner::add_by`].
    pub fn with_cells(dims: usize, cells: usize, processes: usize) -> Binner {
        Binner {
            ranges: Vec::new(),
            bins: 0,
            dims,
            processes,
            current: None,
            sumw: vec![0.0; cells],
            sumw2: vec![0.0; cells],
            count: vec![0; cells],
            position: vec![0.0; cells * dims],
            out: Events {
                discriminants: vec![Vec::new(); dims],
                process_ranges: Vec::with_capacity(processes),
                weight2: Some(Vec::new()),
                count: Some(Vec::new()),
                ..Events::default()
            },
        }
    }

    /// Adds a chunk of events; chunks must come in event order.
    pub fn add(&mut self, events: &Events) {
        let ranges = std::mem::take(&mut self.ranges);
        let bins = self.bins;
        self.add_by(events, |i| {
            let mut cell = 0;
            for d in (0..ranges.len()).rev() {
                let (lo, hi) = ranges[d];
                cell = cell * bins + bin_of(events.discriminants[d][i], lo, hi, bins);
            }
            Some(cell)
        });
        self.ranges = ranges;
    }

    /// Adds a chunk of events: event `i` goes to cell `cell_of(i)`, or
    /// nowhere when that is `None`. Chunks must come in event order.
    pub fn add_by(&mut self, events: &Events, mut cell_of: impl FnMut(usize) -> Option<usize>) {
        let dims = self.dims;
        for (p, range) in events.process_ranges.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            if self.current != Some(p) {
                self.flush();
                self.current = Some(p);
            }
            for i in range.clone() {
                let Some(cell) = cell_of(i) else {
                    continue;
                };
                let w = events.weight[i];
                self.sumw[cell] += w;
                self.sumw2[cell] += events.weight2.as_ref().map_or(w * w, |w2| w2[i]);
                self.count[cell] += events.count.as_ref().map_or(1, |n| n[i]);
                for d in 0..dims {
                    self.position[cell * dims + d] += events.discriminants[d][i];
                }
            }
        }
    }

    /// Moves the filled cells of the current process to the output.
    fn flush(&mut self) {
        let Some(p) = self.current.take() else {
            return;
        };
        let dims = self.dims;
        let out = &mut self.out;
        let start = out.weight.len();
        while out.process_ranges.len() < p {
            out.process_ranges.push(start..start);
        }
        for cell in (0..self.count.len()).filter(|&c| self.count[c] > 0) {
            for d in 0..dims {
                out.discriminants[d]
                    .push(self.position[cell * dims + d] / self.count[cell] as f64);
            }
            out.weight.push(self.sumw[cell]);
            if let Some(w2) = out.weight2.as_mut() {
                w2.push(self.sumw2[cell]);
            }
            if let Some(n) = out.count.as_mut() {
                n.push(self.count[cell]);
            }
            out.process.push(p as u32);
            out.input.push(0);
            out.row.push(0);
        }
        out.process_ranges.push(start..out.weight.len());
        self.sumw.fill(0.0);
        self.sumw2.fill(0.0);
        self.count.fill(0);
        self.position.fill(0.0);
    }

    /// Returns the binned statistics.
    pub fn finish(mut self) -> Events {
        self.flush();
        let end = self.out.weight.len();
        while self.out.process_ranges.len() < self.processes {
            self.out.process_ranges.push(end..end);
        }
        self.out
    }
}

/// Plans the selection and checks its output columns without reading
/// events.
pub async fn check(pipeline: &Pipeline, sources: &Sources) -> Result<()> {
    if uses_polars(pipeline) {
        return crate::polars_select::check(pipeline, sources);
    }
    plan(pipeline, sources, Keep::Memory, None).await.map(|_| ())
}

/// Returns whether Polars runs the selection: with `engine: polars`, or
/// with a lazy query.
pub fn uses_polars(pipeline: &Pipeline) -> bool {
    pipeline.selection.engine == SelectEngine::Polars || pipeline.selection.lazy.is_some()
}

/// Storage of the selected events by [`select_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every event in memory.
    Memory,
    /// On disk under the system's temporary directory, in chunks of
    /// `chunk` events; DataFusion sorts within `sort_bytes` of memory and
    /// spills the rest to disk.
    Disk {
        /// Events per chunk.
        chunk: usize,
        /// Memory for DataFusion's sort, in bytes.
        sort_bytes: usize,
    },
}

/// Runs the selection and collects the events in memory.
pub async fn select(pipeline: &Pipeline, sources: &Sources) -> Result<Events> {
    select_with_progress(pipeline, sources, &indicatif::ProgressBar::hidden()).await
}

/// [`select`], counting the selected events on `progress` as they arrive.
pub async fn select_with_progress(
    pipeline: &Pipeline,
    sources: &Sources,
    progress: &indicatif::ProgressBar,
) -> Result<Events> {
    match select_into(pipeline, sources, Keep::Memory, progress).await? {
        EventSet::Memory(events) => Ok(events),
        EventSet::Disk(_) => Err(Error::Internal("events kept in memory went to disk".into())),
    }
}

/// Runs the selection and keeps the events as `keep` requests, counting
/// them on `progress` as they arrive.
///
/// DataFusion returns the events sorted by process, input and row, so the
/// result depends only on the inputs and the query, and an event returned
/// twice shows up as two neighbours.
pub async fn select_into(
    pipeline: &Pipeline,
    sources: &Sources,
    keep: Keep,
    progress: &indicatif::ProgressBar,
) -> Result<EventSet> {
    // Lives until the sorted stream has been read.
    let spill = match keep {
        Keep::Memory => None,
        Keep::Disk { .. } => Some(SpillDir::create(&std::env::temp_dir())?),
    };
    let spill = spill.as_ref().map(SpillDir::path);
    if uses_polars(pipeline) {
        let batches = crate::polars_select::start(pipeline, sources)?;
        let mut ingest = Ingest::new(pipeline, keep)?;
        match keep {
            // Polars runs the query on its own threads, and this one only waits.
            Keep::Memory => {
                for batch in batches {
                    let batch = batch?;
                    ingest.push(&batch)?;
                    progress.inc(batch.num_rows() as u64);
                }
            }
            // Polars sorts in memory without a limit, so DataFusion sorts
            // the result instead, within the budget, spilling to disk.
            Keep::Disk { .. } => {
                if let Some(stream) = sort_batches(pipeline, keep, spill, batches).await? {
                    ingest_stream(stream, &mut ingest, progress).await?;
                }
            }
        }
        progress.finish_and_clear();
        crate::polars_select::count_unmatched(sources)?;
        sources.warn_unmatched();
        return ingest.finish();
    }
    let (state, plan) = plan(pipeline, sources, keep, spill).await?;
    let plan = match keep {
        Keep::Memory => plan,
        Keep::Disk { .. } => sorted_by_event(pipeline, plan)?,
    };
    let stream = DataFrame::new(state, plan)
        .execute_stream()
        .await
        .map_err(|e| Error::datafusion("selection: starting the query", e))?;
    let mut ingest = Ingest::new(pipeline, keep)?;
    ingest_stream(stream, &mut ingest, progress).await?;
    progress.finish_and_clear();
    sources.warn_unmatched();
    ingest.finish()
}

/// Hands every batch of `stream` to `ingest`, counting the events on
/// `progress`.
async fn ingest_stream(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    ingest: &mut Ingest<'_>,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(unwrap_input_error)?;
        ingest.push(&batch)?;
        progress.inc(batch.num_rows() as u64);
    }
    Ok(())
}

/// Sorts the result batches of a Polars selection by process, input and
/// row with DataFusion, within the memory of `keep`. Returns `None` when
/// the selection returned no batches.
async fn sort_batches(
    pipeline: &Pipeline,
    keep: Keep,
    spill: Option<&Path>,
    mut batches: crate::polars_select::Batches,
) -> Result<Option<datafusion::execution::SendableRecordBatchStream>> {
    let Some(first) = batches.next() else {
        return Ok(None);
    };
    let first = first?;
    let schema = first.schema();

    let (send, receive) = tokio::sync::mpsc::channel(2);
    let feed_schema = schema.clone();
    // A thread waits for the Polars batches and passes them to DataFusion's
    // stream. It stops when the stream is dropped.
    std::thread::Builder::new()
        .name("gato-polars-feed".into())
        .spawn(move || {
            for batch in std::iter::once(Ok(first)).chain(batches) {
                let batch = batch.and_then(|b| {
                    RecordBatch::try_new(feed_schema.clone(), b.columns().to_vec()).map_err(|e| {
                        Error::Internal(format!("a Polars result batch changed its columns: {e}"))
                    })
                });
                let failed = batch.is_err();
                let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)));
                if send.blocking_send(batch).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| Error::Internal(format!("starting the Polars feed thread: {e}")))?;

    let partition = ChannelPartition { schema: schema.clone(), receive: Mutex::new(Some(receive)) };
    let table = datafusion::catalog::streaming::StreamingTable::try_new(
        schema,
        vec![Arc::new(partition)],
    )
    .map_err(|e| Error::datafusion("selection: reading the Polars result", e))?;

    let ctx = session(keep, spill)?;
    let frame = ctx
        .read_table(Arc::new(table))
        .map_err(|e| Error::datafusion("selection: reading the Polars result", e))?;
    let (state, plan) = frame.into_parts();
    let plan = sorted_by_event(pipeline, plan)?;
    let stream = DataFrame::new(state, plan)
        .execute_stream()
        .await
        .map_err(|e| Error::datafusion("selection: sorting the Polars result", e))?;
    Ok(Some(stream))
}

/// One partition of a DataFusion table that yields the batches of a channel.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    receive: Mutex<Option<tokio::sync::mpsc::Receiver<DFResult<RecordBatch>>>>,
}

impl datafusion::physical_plan::streaming::PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Returns the channel's batches; a second call returns no batches.
    fn execute(
        &self,
        _: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::execution::SendableRecordBatchStream {
        let receive = self.receive.lock().map(|mut r| r.take()).unwrap_or(None);
        let batches = futures::stream::unfold(receive, |receive| async move {
            let mut receive = receive?;
            let batch = receive.recv().await?;
            Some((batch, Some(receive)))
        });
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        ))
    }
}

/// Keeps only the columns gato reads and sorts the rows by process, input
/// and row.
fn sorted_by_event(pipeline: &Pipeline, plan: LogicalPlan) -> Result<LogicalPlan> {
    let s = &pipeline.selection;
    let mut names: Vec<&str> = s.discriminants.iter().map(String::as_str).collect();
    names.push(&s.weight);
    names.extend(s.mass.as_deref());
    names.extend(HIDDEN_COLUMNS);
    let mut unique: Vec<&str> = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    let keep: Vec<Expr> = unique.iter().map(|n| datafusion::prelude::ident(*n)).collect();
    let order = HIDDEN_COLUMNS.map(|c| datafusion::prelude::ident(c).sort(true, false));
    datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(keep)
        .and_then(|b| b.sort(order))
        .and_then(|b| b.build())
        .map_err(|e| Error::datafusion("selection: sorting the events", e))
}

/// Removes the hidden columns from the list after "Valid fields are " in a
/// DataFusion message; the list ends at a period that ends a sentence.
fn without_hidden_fields(message: &str) -> String {
    const LEAD: &str = "Valid fields are ";
    let Some(at) = message.find(LEAD) else {
        return message.to_string();
    };
    let start = at + LEAD.len();
    let rest = &message[start..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| c == '.' && rest[i + 1..].chars().next().is_none_or(char::is_whitespace))
        .map_or(rest.len(), |(i, _)| i);
    let fields: Vec<&str> =
        rest[..end].split(", ").filter(|f| !f.contains("_gato_")).collect();
    format!("{}{}{}", &message[..start], fields.join(", "), &rest[end..])
}

/// Largest number of sorted spill files that DataFusion merges in one pass.
/// More files are merged in several passes, so the memory of the merge
/// does not grow with the number of events. A 50M-event selection peaked
/// 15 MiB lower with 8 than with no limit, and took the same time.
const SPILL_MERGE_FAN_IN: usize = 8;

/// A temporary directory for DataFusion's spill files, removed when it is
/// dropped or when gato is interrupted.
struct SpillDir {
    dir: tempfile::TempDir,
    _tracked: crate::interrupt::Tracked,
}

impl SpillDir {
    fn create(parent: &Path) -> Result<SpillDir> {
        let dir = tempfile::Builder::new().prefix("gato-spill-").tempdir_in(parent).map_err(
            |e| {
                Error::output(
                    parent,
                    format!(
                        "cannot create a directory for the selection's sort: {e}; set \
                         TMPDIR to a writable directory with room for the selected events"
                    ),
                )
            },
        )?;
        Ok(SpillDir { _tracked: crate::interrupt::Tracked::new(dir.path()), dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Creates the DataFusion session of the selection: for events bound for
/// disk, its sorts spill to files under `spill` beyond `sort_bytes`.
fn session(keep: Keep, spill: Option<&Path>) -> Result<SessionContext> {
    Ok(match keep {
        Keep::Memory => SessionContext::new(),
        Keep::Disk { sort_bytes, .. } => {
            let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(
                    datafusion::execution::memory_pool::FairSpillPool::new(sort_bytes),
                ));
            if let Some(spill) = spill {
                use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
                runtime = runtime.with_disk_manager_builder(
                    DiskManagerBuilder::default()
                        .with_mode(DiskManagerMode::Directories(vec![spill.to_path_buf()]))
                        .with_max_spill_merge_fan_in(SPILL_MERGE_FAN_IN),
                );
            }
            let runtime = runtime
                .build_arc()
                .map_err(|e| Error::datafusion("selection: setting the memory limit", e))?;
            // The merge of the sorted runs reads them back within its own
            // reservation, taken before the sort starts spilling.
            let mut config = datafusion::prelude::SessionConfig::new();
            config.options_mut().execution.sort_spill_reservation_bytes = sort_bytes / 4;
            SessionContext::new_with_config_rt(config, runtime)
        }
    })
}

/// Builds the logical plan of the selection, with the hidden columns, and
/// checks that it returns the discriminants and the weight as numbers.
async fn plan(
    pipeline: &Pipeline,
    sources: &Sources,
    keep: Keep,
    spill: Option<&Path>,
) -> Result<(datafusion::execution::SessionState, LogicalPlan)> {
    let ctx = session(keep, spill)?;
    ctx.register_table("events", Arc::new(sources.events_table()?))
        .map_err(|e| Error::datafusion("registering the table `events`", e))?;
    let df = ctx.sql(&pipeline.selection.sql).await.map_err(|e| {
        Error::Select(format!(
            "the SQL failed to plan: {}\n(the table is `events`; its columns are [{}])",
            without_hidden_fields(&e.to_string()),
            visible_columns(sources)
        ))
    })?;
    let (state, plan) = df.into_parts();
    let plan = carry_hidden_columns(plan)?;
    let output_columns: Vec<String> =
        plan.schema().fields().iter().map(|f| f.name().clone()).collect();
    let required: Vec<&str> = pipeline
        .selection
        .discriminants
        .iter()
        .map(String::as_str)
        .chain([pipeline.selection.weight.as_str()])
        .chain(pipeline.selection.mass.as_deref())
        .collect();
    for name in &required {
        if !output_columns.iter().any(|c| c == name) {
            let returned: Vec<&str> = output_columns.iter().map(String::as_str).collect();
            return Err(missing_column(name, &returned));
        }
    }
    for field in plan.schema().fields() {
        if required.contains(&field.name().as_str()) && !field.data_type().is_numeric() {
            return Err(Error::Select(format!(
                "column `{}` has type {}, expected a number; cast it in the SQL",
                field.name(),
                field.data_type()
            )));
        }
    }

    Ok((state, plan))
}

/// Events as they come from the query, before checks and sorting.
#[derive(Default)]
struct RawEvents {
    discriminants: Vec<Vec<f64>>,
    weight: Vec<f64>,
    process: Vec<u32>,
    input: Vec<u32>,
    row: Vec<u64>,
    mass: Option<Vec<f64>>,
}

impl RawEvents {
    /// Appends the events of one result batch.
    fn push(
        &mut self,
        pipeline: &Pipeline,
        batch: &datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<()> {
        let raw = self;
        let float = |name: &str| -> Result<Float64Array> {
            let array = batch.column_by_name(name).ok_or_else(|| {
                Error::Internal(format!("column {name} missing from a result batch"))
            })?;
            let array = cast(array, &DataType::Float64).map_err(|e| {
                Error::Select(format!("cannot convert `{name}` to float64: {e}"))
            })?;
            Ok(array.as_any().downcast_ref::<Float64Array>().cloned().ok_or_else(
                || Error::Internal("cast to Float64 gave another type".into()),
            )?)
        };
        let hidden_i32 = |name: &str| -> Result<Int32Array> {
            batch
                .column_by_name(name)
                .and_then(|a| a.as_any().downcast_ref::<Int32Array>().cloned())
                .ok_or_else(|| Error::Internal(format!("hidden column {name} lost")))
        };
        let process = hidden_i32(PROCESS_INDEX_COLUMN)?;
        let input = hidden_i32(INPUT_COLUMN)?;
        let row = batch
            .column_by_name(ROW_COLUMN)
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>().cloned())
            .ok_or_else(|| Error::Internal(format!("hidden column {ROW_COLUMN} lost")))?;
        let weight = float(&pipeline.selection.weight)?;
        let discriminants: Vec<Float64Array> = pipeline
            .selection
            .discriminants
            .iter()
            .map(|d| float(d))
            .collect::<Result<_>>()?;
        let mass = pipeline.selection.mass.as_deref().map(float).transpose()?;
        for i in 0..batch.num_rows() {
            let value =
                |a: &Float64Array| if a.is_null(i) { f64::NAN } else { a.value(i) };
            raw.process.push(process.value(i) as u32);
            raw.input.push(input.value(i) as u32);
            raw.row.push(row.value(i) as u64);
            raw.weight.push(value(&weight));
            for (d, array) in discriminants.iter().enumerate() {
                raw.discriminants[d].push(value(array));
            }
            if let (Some(column), Some(array)) = (raw.mass.as_mut(), mass.as_ref()) {
                column.push(value(array));
            }
        }
        Ok(())
    }
}

/// Checks the sorted events batch by batch, applies the process scales and
/// keeps them in memory or writes them to disk chunk by chunk.
struct Ingest<'a> {
    pipeline: &'a Pipeline,
    /// Events not yet written to disk (all of them in memory).
    buffer: Events,
    disk: Option<(crate::store::DiskWriter, usize)>,
    /// Kept events of each process.
    counts: Vec<usize>,
    /// Σw of each process.
    yields: Vec<f64>,
    /// Events with a non-finite value, per process.
    bad: Vec<usize>,
    /// Process, input and row of the last event.
    last: Option<(u32, u32, u64)>,
}

impl<'a> Ingest<'a> {
    fn new(pipeline: &'a Pipeline, keep: Keep) -> Result<Ingest<'a>> {
        let dims = pipeline.selection.discriminants.len();
        let has_mass = pipeline.selection.mass.is_some();
        let disk = match keep {
            Keep::Memory => None,
            Keep::Disk { chunk, .. } => Some((
                crate::store::DiskWriter::create(&std::env::temp_dir(), dims, has_mass)?,
                chunk.max(1),
            )),
        };
        let n = pipeline.processes.len();
        Ok(Ingest {
            pipeline,
            buffer: Events {
                discriminants: vec![Vec::new(); dims],
                mass: has_mass.then(Vec::new),
                ..Events::default()
            },
            disk,
            counts: vec![0; n],
            yields: vec![0.0; n],
            bad: vec![0; n],
            last: None,
        })
    }

    /// Adds the events of one result batch.
    fn push(&mut self, batch: &datafusion::arrow::record_batch::RecordBatch) -> Result<()> {
        let pipeline = self.pipeline;
        let mut raw = RawEvents {
            discriminants: vec![Vec::new(); self.buffer.discriminants.len()],
            mass: self.buffer.mass.as_ref().map(|_| Vec::new()),
            ..RawEvents::default()
        };
        raw.push(pipeline, batch)?;
        for i in 0..raw.weight.len() {
            let p = raw.process[i];
            let key = (p, raw.input[i], raw.row[i]);
            // Events bound for disk come sorted; those kept in memory are
            // sorted and checked at the end.
            if let (Some(last), Some(_)) = (self.last, &self.disk) {
                if (last.1, last.2) == (key.1, key.2) {
                    return Err(returned_twice(pipeline, key.1, key.2));
                }
                if key < last {
                    return Err(Error::Internal(
                        "the selection's events came back out of order".into(),
                    ));
                }
            }
            self.last = Some(key);
            let finite = raw.weight[i].is_finite()
                && raw.discriminants.iter().all(|d| d[i].is_finite())
                && raw.mass.as_ref().is_none_or(|m| m[i].is_finite());
            if !finite {
                self.bad[p as usize] += 1;
                continue;
            }
            let weight = raw.weight[i] * pipeline.processes[p as usize].scale;
            let events = &mut self.buffer;
            for (column, values) in events.discriminants.iter_mut().zip(&raw.discriminants) {
                column.push(values[i]);
            }
            events.weight.push(weight);
            if let (Some(column), Some(values)) = (events.mass.as_mut(), raw.mass.as_ref()) {
                column.push(values[i]);
            }
            events.process.push(p);
            events.input.push(key.1);
            events.row.push(key.2);
            self.counts[p as usize] += 1;
            self.yields[p as usize] += weight;
        }
        if let Some((writer, chunk)) = self.disk.as_mut() {
            while self.buffer.len() >= *chunk {
                let rest = split_off(&mut self.buffer, *chunk);
                writer.write(&self.buffer)?;
                self.buffer = rest;
            }
        }
        Ok(())
    }

    /// Reports non-finite values, checks that every process kept events
    /// and that the signal and background yields are positive.
    fn finish(mut self) -> Result<EventSet> {
        let pipeline = self.pipeline;
        let n_bad: usize = self.bad.iter().sum();
        if n_bad > 0 {
            let counts: Vec<String> = self
                .bad
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(p, n)| format!("{}: {n}", pipeline.processes[p].name))
                .collect();
            let columns = pipeline
                .selection
                .discriminants
                .iter()
                .chain(pipeline.selection.mass.as_ref())
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            match pipeline.selection.non_finite {
                NonFinitePolicy::Reject => {
                    return Err(Error::Select(format!(
                        "{n_bad} selected events have NaN, ±inf or null in [{columns}] or \
                         `{}` ({}); fix the inputs or the SQL, or set \
                         `selection.non_finite: drop` to drop them",
                        pipeline.selection.weight,
                        counts.join(", ")
                    )));
                }
                NonFinitePolicy::Drop => tracing::warn!(
                    "dropping {n_bad} events with NaN, ±inf or null values ({})",
                    counts.join(", ")
                ),
            }
        }
        let mut process_ranges = Vec::with_capacity(self.counts.len());
        let mut start = 0;
        for (p, &n) in self.counts.iter().enumerate() {
            if n == 0 && self.bad[p] > 0 {
                return Err(Error::Select(format!(
                    "process `{}` has no events left: the selection returned {} of its \
                     events, all with NaN, ±inf or null values, and \
                     `selection.non_finite: drop` dropped them; fix the inputs or the SQL",
                    pipeline.processes[p].name, self.bad[p]
                )));
            }
            if n == 0 {
                return Err(Error::Select(format!(
                    "process `{}` has no events after the selection; check its input \
                     and the SQL's WHERE clause",
                    pipeline.processes[p].name
                )));
            }
            process_ranges.push(start..start + n);
            start += n;
        }
        for (role, word) in [(Role::Signal, "signal"), (Role::Background, "background")] {
            let total: f64 = (0..self.yields.len())
                .filter(|&p| pipeline.processes[p].role == role)
                .map(|p| self.yields[p])
                .sum::<f64>()
                + 0.0;
            if !(total > 0.0) {
                return Err(Error::Select(format!(
                    "the total {word} yield after the selection is {total}, but it must be \
                     positive; check the weights and the `scale` of the {word} processes"
                )));
            }
        }
        tracing::info!(events = start, on_disk = self.disk.is_some(), "selected events");
        match self.disk.take() {
            None => {
                let mut events = self.buffer;
                if events.len() > u32::MAX as usize {
                    return Err(Error::Select(format!(
                        "{} selected events are too many to keep in memory; set \
                         `selection.events: disk`",
                        events.len()
                    )));
                }
                sort_by_event(&mut events);
                let key = |i: usize| (events.input[i], events.row[i]);
                if let Some(i) = (1..events.len()).find(|&i| key(i - 1) == key(i)) {
                    return Err(returned_twice(pipeline, events.input[i], events.row[i]));
                }
                events.process_ranges = process_ranges;
                Ok(EventSet::Memory(events))
            }
            Some((mut writer, _)) => {
                writer.write(&self.buffer)?;
                let disk = writer.finish(pipeline.processes.len(), process_ranges)?;
                tracing::info!(chunks = disk.chunks(), bytes = disk.bytes(), "kept the selected events on disk");
                Ok(EventSet::Disk(disk))
            }
        }
    }
}

/// Builds the error for an event the query returned more than once.
fn returned_twice(pipeline: &Pipeline, input: u32, row: u64) -> Error {
    Error::Select(format!(
        "the query returned row {row} of input {} more than once; a selection must \
         return each event at most once (no UNION ALL of `events` with itself, no joins \
         that match an event several times)",
        pipeline.inputs[input as usize].label()
    ))
}

/// Sorts the columns of `events` by process, input and row, one column at
/// a time, so that the sort needs one extra column of memory at most.
fn sort_by_event(events: &mut Events) {
    let mut order: Vec<u32> = (0..events.len() as u32).collect();
    order.sort_unstable_by_key(|&i| {
        let i = i as usize;
        (events.process[i], events.input[i], events.row[i])
    });
    fn permute<T: Copy>(column: &mut Vec<T>, order: &[u32]) {
        *column = order.iter().map(|&i| column[i as usize]).collect();
    }
    for column in events.discriminants.iter_mut().chain([&mut events.weight]) {
        permute(column, &order);
    }
    if let Some(mass) = events.mass.as_mut() {
        permute(mass, &order);
    }
    permute(&mut events.process, &order);
    permute(&mut events.input, &order);
    permute(&mut events.row, &order);
}

/// Splits `events` after `at` events and returns the tail; both keep the
/// columns and neither has process ranges.
fn split_off(events: &mut Events, at: usize) -> Events {
    Events {
        discriminants: events.discriminants.iter_mut().map(|d| d.split_off(at)).collect(),
        weight: events.weight.split_off(at),
        process: events.process.split_off(at),
        input: events.input.split_off(at),
        row: events.row.split_off(at),
        process_ranges: Vec::new(),
        mass: events.mass.as_mut().map(|m| m.split_off(at)),
        weight2: None,
        count: None,
    }
}

/// Rewrites every projection over `events` to keep the hidden columns, and
/// checks that the result still has them.
fn carry_hidden_columns(plan: LogicalPlan) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up(|node| match node {
        LogicalPlan::Projection(p) => {
            for e in &p.expr {
                let name = e.schema_name().to_string();
                let plain = matches!(e, Expr::Column(c) if c.name == name);
                if name.starts_with("_gato_") && !plain {
                    return Err(datafusion::error::DataFusionError::Plan(format!(
                        "the output column `{name}` uses the prefix `_gato_`, which is \
                         reserved for gato's own columns; rename it"
                    )));
                }
            }
            let mut expr = p.expr.clone();
            for name in HIDDEN_COLUMNS {
                if p.schema.has_column_with_unqualified_name(name)
                    || !p.input.schema().has_column_with_unqualified_name(name)
                {
                    continue;
                }
                let (qualifier, _) = p
                    .input
                    .schema()
                    .qualified_field_with_unqualified_name(name)
                    .map_err(|_| {
                        datafusion::error::DataFusionError::Plan(
                            "the query uses the table `events` twice (a self-join), so gato \
                             cannot tell which input row an output row belongs to; join \
                             `events` with other tables only"
                                .into(),
                        )
                    })?;
                expr.push(Expr::Column(Column::new(qualifier.cloned(), name)));
            }
            Projection::try_new(expr, p.input).map(|p| Transformed::yes(LogicalPlan::Projection(p)))
        }
        LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => {
            Err(datafusion::error::DataFusionError::Plan(
                "the selection must return one row per event, without GROUP BY, \
                 aggregates or DISTINCT"
                    .into(),
            ))
        }
        other => other.recompute_schema().map(Transformed::yes),
    });
    let plan = rewritten.map(|t| t.data).map_err(|e| {
        Error::Select(format!("the query cannot be used as a selection: {e}"))
    })?;
    for name in HIDDEN_COLUMNS {
        if !plan.schema().has_column_with_unqualified_name(name) {
            return Err(Error::Select(UNTRACEABLE.into()));
        }
    }
    Ok(plan)
}

/// Message of the error for a query whose output rows cannot be traced back
/// to rows of `events`, because it lost the hidden columns.
pub(crate) const UNTRACEABLE: &str = "the query cannot be used as a selection: its rows \
     cannot be traced back to rows of the table `events`; select from `events` (filters, \
     computed columns and joins with other tables are fine)";

/// Builds the error for the required column `name` that the query does not
/// return, listing the columns in `returned` that are not hidden.
pub(crate) fn missing_column(name: &str, returned: &[&str]) -> Error {
    let visible: Vec<&str> =
        returned.iter().copied().filter(|c| !HIDDEN_COLUMNS.contains(c)).collect();
    Error::Select(format!(
        "the query returns no column `{name}`; it returns [{}]. Return it, or change \
         `selection.discriminants` / `selection.weight`",
        visible.join(", ")
    ))
}

pub(crate) fn visible_columns(sources: &Sources) -> String {
    let mut names: Vec<String> = (0..sources.len().min(1))
        .flat_map(|i| {
            sources
                .raw_schema(i)
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        })
        .filter(|n| n != "process")
        .collect();
    names.push("process".into());
    names.join(", ")
}

/// Surfaces gato's own input errors from inside DataFusion's stream.
fn unwrap_input_error(e: datafusion::error::DataFusionError) -> Error {
    match e {
        datafusion::error::DataFusionError::External(inner) => {
            match inner.downcast::<Error>() {
                Ok(gato) => *gato,
                Err(other) => Error::Select(other.to_string()),
            }
        }
        datafusion::error::DataFusionError::Context(context, inner) => {
            match unwrap_input_error(*inner) {
                Error::Select(m) => Error::Select(format!("{context}: {m}")),
                gato => gato,
            }
        }
        other => Error::datafusion("selection", other),
    }
}

#[cfg(test)]
mod tests {
    use super::without_hidden_fields;

    #[test]
    fn hidden_fields_removed_from_list() {
        let message = "Schema error: No field named scor. Valid fields are events.score, \
                       events._gato_row, events.weight, _gato_input.\nmore text";
        assert_eq!(
            without_hidden_fields(message),
            "Schema error: No field named scor. Valid fields are events.score, \
             events.weight.\nmore text"
        );
    }

    #[test]
    fn hidden_fields_list_at_end() {
        assert_eq!(
            without_hidden_fields("Valid fields are a.b, _gato_row"),
            "Valid fields are a.b"
        );
    }

    #[test]
    fn hidden_fields_other_message_unchanged() {
        let message = "No field named x. Did you mean `events._gato_row`?";
        assert_eq!(without_hidden_fields(message), message);
    }
}
