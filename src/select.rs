//! The selection stage: runs the pipeline's SQL on DataFusion over the table
//! `events` and collects the selected events as [`Events`].
//!
//! The query may filter rows, compute discriminants and weights, and join
//! lookup tables, but it must keep one output row per event. gato rewrites
//! every projection of the plan to carry the hidden columns that tie an event
//! to its input row, and rejects aggregations. The weights returned by the
//! query are multiplied by each process's `scale`.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int32Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{LogicalPlan, Projection};
use datafusion::prelude::{Expr, SessionContext};
use futures::StreamExt;

use crate::config::{NonFinitePolicy, Pipeline, Role};
use crate::error::{Error, Result};
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
        let dims = self.discriminants.len();
        let cells = bins.pow(dims as u32);
        let mut out = Events {
            discriminants: vec![Vec::new(); dims],
            weight: Vec::new(),
            process: Vec::new(),
            input: Vec::new(),
            row: Vec::new(),
            process_ranges: Vec::with_capacity(self.process_ranges.len()),
            mass: None,
            weight2: Some(Vec::new()),
            count: Some(Vec::new()),
        };
        // Per cell: Σw, Σw², count and the sum of each coordinate.
        let mut sumw = vec![0.0f64; cells];
        let mut sumw2 = vec![0.0f64; cells];
        let mut count = vec![0u32; cells];
        let mut position = vec![0.0f64; cells * dims];
        for (p, range) in self.process_ranges.iter().enumerate() {
            sumw.fill(0.0);
            sumw2.fill(0.0);
            count.fill(0);
            position.fill(0.0);
            for i in range.clone() {
                let mut cell = 0;
                for d in (0..dims).rev() {
                    let (lo, hi) = ranges[d];
                    let t = ((self.discriminants[d][i] - lo) / (hi - lo) * bins as f64)
                        .floor();
                    let bin = if t.is_nan() || t < 0.0 {
                        0
                    } else {
                        (t as usize).min(bins - 1)
                    };
                    cell = cell * bins + bin;
                }
                let w = self.weight[i];
                sumw[cell] += w;
                sumw2[cell] += self.weight2.as_ref().map_or(w * w, |w2| w2[i]);
                count[cell] += self.count.as_ref().map_or(1, |n| n[i]);
                for d in 0..dims {
                    position[cell * dims + d] += self.discriminants[d][i];
                }
            }
            let start = out.weight.len();
            for cell in (0..cells).filter(|&c| count[c] > 0) {
                for d in 0..dims {
                    out.discriminants[d]
                        .push(position[cell * dims + d] / count[cell] as f64);
                }
                out.weight.push(sumw[cell]);
                if let Some(w2) = out.weight2.as_mut() {
                    w2.push(sumw2[cell]);
                }
                if let Some(n) = out.count.as_mut() {
                    n.push(count[cell]);
                }
                out.process.push(p as u32);
                out.input.push(0);
                out.row.push(0);
            }
            out.process_ranges.push(start..out.weight.len());
        }
        out
    }

    /// Sum of weights of each process, in float64.
    pub fn process_yields(&self) -> Vec<f64> {
        self.process_ranges.iter().map(|r| self.weight[r.clone()].iter().sum()).collect()
    }
}

/// Plans the selection and checks its output columns without reading
/// events.
pub async fn check(pipeline: &Pipeline, sources: &Sources) -> Result<()> {
    plan(pipeline, sources).await.map(|_| ())
}

/// Runs the selection and collects the events.
pub async fn select(pipeline: &Pipeline, sources: &Sources) -> Result<Events> {
    select_with_progress(pipeline, sources, &indicatif::ProgressBar::hidden()).await
}

/// [`select`], counting the selected events on `progress` as they arrive.
pub async fn select_with_progress(
    pipeline: &Pipeline,
    sources: &Sources,
    progress: &indicatif::ProgressBar,
) -> Result<Events> {
    let (state, plan) = plan(pipeline, sources).await?;
    let mut stream = DataFrame::new(state, plan)
        .execute_stream()
        .await
        .map_err(|e| Error::datafusion("selection: starting the query", e))?;
    let dims = pipeline.selection.discriminants.len();
    let mut raw =
        RawEvents { discriminants: vec![Vec::new(); dims], ..RawEvents::default() };
    raw.mass = pipeline.selection.mass.as_ref().map(|_| Vec::new());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(unwrap_input_error)?;
        raw.push(pipeline, &batch)?;
        progress.inc(batch.num_rows() as u64);
    }
    progress.finish_and_clear();
    sources.warn_unmatched();
    raw.finish(pipeline)
}

/// Builds the logical plan of the selection, with the hidden columns, and
/// checks that it returns the discriminants and the weight as numbers.
async fn plan(
    pipeline: &Pipeline,
    sources: &Sources,
) -> Result<(datafusion::execution::SessionState, LogicalPlan)> {
    let ctx = SessionContext::new();
    ctx.register_table("events", Arc::new(sources.events_table()?))
        .map_err(|e| Error::datafusion("registering the table `events`", e))?;
    let df = ctx.sql(&pipeline.selection.sql).await.map_err(|e| {
        Error::Select(format!(
            "the SQL failed to plan: {e}\n(the table is `events`; its columns are [{}])",
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
            let visible: Vec<&str> = output_columns
                .iter()
                .map(String::as_str)
                .filter(|c| !HIDDEN_COLUMNS.contains(c))
                .collect();
            return Err(Error::Select(format!(
                "the query returns no column `{name}`; it returns [{}]. Return it, \
                 or change `selection.discriminants` / `selection.weight`",
                visible.join(", ")
            )));
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

    /// Handles non-finite values, applies the process scales, sorts and
    /// checks that every process kept events.
    fn finish(self, pipeline: &Pipeline) -> Result<Events> {
        let n_processes = pipeline.processes.len();
        let finite = |i: usize| {
            self.weight[i].is_finite()
                && self.discriminants.iter().all(|d| d[i].is_finite())
                && self.mass.as_ref().is_none_or(|m| m[i].is_finite())
        };
        let mut bad = vec![0usize; n_processes];
        for i in 0..self.weight.len() {
            if !finite(i) {
                bad[self.process[i] as usize] += 1;
            }
        }
        let n_bad: usize = bad.iter().sum();
        if n_bad > 0 {
            let counts: Vec<String> = bad
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

        let mut order: Vec<usize> =
            (0..self.weight.len()).filter(|&i| finite(i)).collect();
        order.sort_unstable_by_key(|&i| (self.process[i], self.input[i], self.row[i]));
        let key = |i: usize| (self.input[i], self.row[i]);
        if let Some(pair) = order.windows(2).find(|w| key(w[0]) == key(w[1])) {
            return Err(Error::Select(format!(
                "the query returned row {} of input {} more than once; a selection must \
                 return each event at most once (no UNION ALL of `events` with itself, no \
                 joins that match an event several times)",
                self.row[pair[0]],
                pipeline.inputs[self.input[pair[0]] as usize].label()
            )));
        }
        let mut events = Events {
            discriminants: self
                .discriminants
                .iter()
                .map(|d| order.iter().map(|&i| d[i]).collect())
                .collect(),
            weight: order
                .iter()
                .map(|&i| {
                    self.weight[i] * pipeline.processes[self.process[i] as usize].scale
                })
                .collect(),
            process: order.iter().map(|&i| self.process[i]).collect(),
            input: order.iter().map(|&i| self.input[i]).collect(),
            row: order.iter().map(|&i| self.row[i]).collect(),
            process_ranges: Vec::with_capacity(n_processes),
            mass: self.mass.as_ref().map(|m| order.iter().map(|&i| m[i]).collect()),
            weight2: None,
            count: None,
        };
        let mut start = 0;
        for p in 0..n_processes {
            let end =
                start + events.process[start..].partition_point(|&q| q as usize == p);
            if end == start {
                return Err(Error::Select(format!(
                    "process `{}` has no events after the selection; check its input \
                     and the SQL's WHERE clause",
                    pipeline.processes[p].name
                )));
            }
            events.process_ranges.push(start..end);
            start = end;
        }
        for (role, word) in [(Role::Signal, "signal"), (Role::Background, "background")] {
            let total: f64 = (0..events.len())
                .filter(|&i| pipeline.processes[events.process[i] as usize].role == role)
                .map(|i| events.weight[i])
                .sum::<f64>()
                + 0.0;
            if !(total > 0.0) {
                return Err(Error::Select(format!(
                    "the total {word} yield after the selection is {total}, but it must be \
                     positive; check the weights and the `scale` of the {word} processes"
                )));
            }
        }
        tracing::info!(events = events.len(), "selected events");
        Ok(events)
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
            return Err(Error::Select(
                "the query cannot be used as a selection: its rows cannot be traced back \
                 to rows of the table `events`; select from `events` (filters, computed \
                 columns and joins with other tables are fine)"
                    .into(),
            ));
        }
    }
    Ok(plan)
}

fn visible_columns(sources: &Sources) -> String {
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
