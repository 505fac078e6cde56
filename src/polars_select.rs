//! The Polars engine of the selection (`selection.engine: polars`).
//!
//! The table `events` becomes a Polars lazy frame: a streaming Parquet scan
//! per input file, or the generated batches of a toy. The selection is
//! Polars SQL or a [`LazyQuery`] written in Rust. Polars' streaming engine
//! runs it, and every result batch crosses to arrow-rs through the Arrow C
//! Data Interface before gato checks and stores the events, exactly as it
//! does with DataFusion's batches.
//!
//! Polars SQL does not carry columns through a projection by itself, so the
//! SQL is rewritten before it runs: every `SELECT` that reads `events`
//! returns the hidden columns too (see [`crate::source::HIDDEN_COLUMNS`]).

use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use datafusion::arrow::array::make_array;
use datafusion::arrow::datatypes::{Field, Schema};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use polars::prelude as pl;

use crate::config::{Pipeline, ProcessAssign};
use crate::error::{Error, Result};
use crate::select::{UNTRACEABLE, missing_column};
use crate::source::{HIDDEN_COLUMNS, INPUT_COLUMN, PROCESS_INDEX_COLUMN, ROW_COLUMN, Sources};

/// Rows per result batch handed from Polars to gato.
const BATCH_ROWS: usize = 65_536;

/// A selection written as a Polars lazy query: it receives the table
/// `events` and returns the selected events, one row per event.
///
/// Filters (`filter`) and new columns (`with_columns`) keep the hidden
/// columns that tie an event to its input row; a `select` must list them.
#[derive(Clone)]
pub struct LazyQuery(
    pub Arc<dyn Fn(pl::LazyFrame) -> pl::PolarsResult<pl::LazyFrame> + Send + Sync>,
);

impl LazyQuery {
    /// Wraps a function from `events` to the selected events.
    pub fn new(
        query: impl Fn(pl::LazyFrame) -> pl::PolarsResult<pl::LazyFrame> + Send + Sync + 'static,
    ) -> LazyQuery {
        LazyQuery(Arc::new(query))
    }
}

impl fmt::Debug for LazyQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LazyQuery(..)")
    }
}

/// Builds the table `events` as a Polars lazy frame: every input's columns,
/// the `process` name and the hidden columns, inputs one after the other.
pub fn events_frame(sources: &Sources) -> Result<pl::LazyFrame> {
    let schema = sources.common_events_schema()?;
    let order: Vec<pl::Expr> =
        schema.fields().iter().map(|f| pl::col(f.name().as_str())).collect();
    let mut frames = Vec::with_capacity(sources.len());
    for index in 0..sources.len() {
        let frame = match sources.local_file(index) {
            Some(path) => file_frame(sources, index, path)?,
            None => memory_frame(sources, index)?,
        };
        frames.push(frame.select(order.clone()));
    }
    pl::concat(frames, pl::UnionArgs { maintain_order: true, ..Default::default() })
        .map_err(|e| Error::Select(format!("Polars failed to join the inputs into `events`: {e}")))
}

/// Scans the Parquet file of input `index` as a stream.
fn scan(sources: &Sources, index: usize, path: &Path) -> Result<pl::LazyFrame> {
    let polars_error = |e: pl::PolarsError| {
        Error::input(
            sources.input(index).label(),
            format!("Polars failed to scan it: {e}. Check that it is a readable Parquet file"),
        )
    };
    // Polars panics on Float16 columns instead of returning an error.
    if let Some(column) = half_float_column(&sources.raw_schema(index)) {
        return Err(Error::input(
            sources.input(index).label(),
            format!(
                "column `{column}` is Float16 (half precision), which Polars cannot read; \
                 use `selection.engine: datafusion`, or write the column as Float32"
            ),
        ));
    }
    let location = pl::PlRefPath::try_from_path(path).map_err(polars_error)?;
    let args = pl::ScanArgsParquet { glob: false, ..Default::default() };
    pl::LazyFrame::scan_parquet(location, args).map_err(polars_error)
}

/// Returns the name of the first column that is Float16 or contains
/// Float16 values (in a list or struct).
fn half_float_column(schema: &Schema) -> Option<String> {
    use datafusion::arrow::datatypes::DataType;
    fn has_half(data_type: &DataType) -> bool {
        match data_type {
            DataType::Float16 => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::Map(f, _) => has_half(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| has_half(f.data_type())),
            DataType::Dictionary(_, value) => has_half(value),
            _ => false,
        }
    }
    schema.fields().iter().find(|f| has_half(f.data_type())).map(|f| f.name().clone())
}

/// Scans one Parquet input as a stream and adds gato's columns.
fn file_frame(sources: &Sources, index: usize, path: &Path) -> Result<pl::LazyFrame> {
    let input = sources.input(index);
    // The row index is taken in file order, before any filter.
    let frame = scan(sources, index, path)?.with_row_index(ROW_COLUMN, None);
    let names = sources.process_names();
    let process = match &input.assign {
        ProcessAssign::All(p) => pl::lit(*p as i32),
        ProcessAssign::ByColumn { column, values } => {
            let value = pl::col(column.as_str()).cast(pl::DataType::String);
            values.iter().rev().fold(
                pl::lit(pl::NULL).cast(pl::DataType::Int32),
                |otherwise, (name, &p)| {
                    pl::when(value.clone().eq(pl::lit(name.as_str())))
                        .then(pl::lit(p as i32))
                        .otherwise(otherwise)
                },
            )
        }
    };
    let process_name = (0..names.len()).rev().fold(pl::lit(""), |otherwise, p| {
        pl::when(pl::col(PROCESS_INDEX_COLUMN).eq(pl::lit(p as i32)))
            .then(pl::lit(names[p].as_str()))
            .otherwise(otherwise)
    });
    Ok(frame
        .with_column(process.cast(pl::DataType::Int32).alias(PROCESS_INDEX_COLUMN))
        .filter(pl::col(PROCESS_INDEX_COLUMN).is_not_null())
        .with_columns([
            process_name.alias("process"),
            pl::lit(index as i32).cast(pl::DataType::Int32).alias(INPUT_COLUMN),
            pl::col(ROW_COLUMN).cast(pl::DataType::Int64),
        ]))
}

/// Counts the rows of each Parquet input whose process value matches no
/// process, by value, for [`Sources::warn_unmatched`].
///
/// DataFusion's table `events` counts them while it is read. Polars reads
/// only the process column once more for them.
pub fn count_unmatched(sources: &Sources) -> Result<()> {
    for index in 0..sources.len() {
        let (Some(path), ProcessAssign::ByColumn { column, values }) =
            (sources.local_file(index), &sources.input(index).assign)
        else {
            continue;
        };
        let value = pl::col(column.as_str()).cast(pl::DataType::String);
        let matched = values.keys().fold(pl::lit(false), |any, known| {
            any.or(pl::col("value").eq(pl::lit(known.as_str())))
        });
        // A null value matches nothing: the comparisons give null, so the
        // negation is filled with true.
        let counts = scan(sources, index, path)?
            .select([value.alias("value")])
            .filter(matched.not().fill_null(pl::lit(true)))
            .group_by([pl::col("value")])
            .agg([pl::len().cast(pl::DataType::UInt64).alias("rows")])
            .collect()
            .map_err(|e| polars_internal("counting unmatched process values", e))?;
        let names = counts
            .column("value")
            .and_then(|c| c.as_materialized_series().str())
            .map_err(|e| polars_internal("reading the unmatched values", e))?;
        let rows = counts
            .column("rows")
            .and_then(|c| c.as_materialized_series().u64())
            .map_err(|e| polars_internal("reading the unmatched counts", e))?;
        for (name, n) in names.iter().zip(rows.iter()) {
            let name = name.unwrap_or("<null>").to_string();
            sources.add_unmatched(index, name, n.unwrap_or(0) as usize);
        }
    }
    Ok(())
}

/// Hands the generated events of a toy input to Polars through the C Data
/// Interface.
fn memory_frame(sources: &Sources, index: usize) -> Result<pl::LazyFrame> {
    let mut frame: Option<pl::DataFrame> = None;
    for batch in sources.events_batches(index)? {
        let part = batch_to_frame(&batch)?;
        match frame.as_mut() {
            None => frame = Some(part),
            Some(f) => {
                f.vstack_mut_owned(part).map_err(|e| polars_internal("stacking batches", e))?;
            }
        }
    }
    let frame = match frame {
        Some(f) => f,
        None => {
            let schema = sources.common_events_schema()?;
            batch_to_frame(&RecordBatch::new_empty(schema))?
        }
    };
    Ok(pl::IntoLazy::lazy(frame))
}

/// Returns Polars' message without the query plan it appends to planning
/// errors, which lists gato's hidden columns and runs to many lines.
fn polars_message(e: &pl::PolarsError) -> String {
    let text = e.to_string();
    let text = match text.find("\n\nResolved plan until failure") {
        Some(end) => text[..end].to_string(),
        None => text,
    };
    if text.contains("not currently supported") || text.contains("unsupported") {
        format!(
            "{}; write the selection without it, or use `engine: datafusion`",
            without_syntax_trees(&text)
        )
    } else {
        text
    }
}

/// Removes the bodies `{ … }` of the syntax trees that Polars SQL prints in
/// its messages about unsupported SQL, keeping the node names: `expression
/// Exists { subquery: … } is not …` becomes `expression Exists is not …`.
fn without_syntax_trees(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if depth == 0 {
            if c == ' ' && chars.peek() == Some(&'{') {
                chars.next();
                depth = 1;
            } else {
                out.push(c);
            }
        } else if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth -= 1;
        }
    }
    out
}

fn polars_internal(what: &str, e: pl::PolarsError) -> Error {
    Error::Internal(format!("Polars: {what}: {e}"))
}

/// Moves an arrow-rs record batch into a Polars data frame.
fn batch_to_frame(batch: &RecordBatch) -> Result<pl::DataFrame> {
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let (c_array, c_schema) = to_ffi(&array.to_data())
            .map_err(|e| Error::Internal(format!("exporting `{}`: {e}", field.name())))?;
        // SAFETY: arrow-rs and polars-arrow both declare the structs of the
        // Arrow C Data Interface with #[repr(C)] and the same fields, so the
        // bytes of one are a valid value of the other. transmute checks the
        // sizes, and the ownership of the buffers moves with the struct.
        let c_array: polars_arrow::ffi::ArrowArray = unsafe { std::mem::transmute(c_array) };
        let c_schema: polars_arrow::ffi::ArrowSchema = unsafe { std::mem::transmute(c_schema) };
        // SAFETY: the structs were filled by arrow-rs' exporter just above.
        let imported = unsafe {
            polars_arrow::ffi::import_field_from_c(&c_schema).and_then(|f| {
                polars_arrow::ffi::import_array_from_c(c_array, f.dtype.clone())
            })
        }
        .map_err(|e| polars_internal(&format!("importing `{}`", field.name()), e))?;
        let series = pl::Series::from_arrow(field.name().as_str().into(), imported)
            .map_err(|e| polars_internal(&format!("importing `{}`", field.name()), e))?;
        columns.push(pl::Column::from(series));
    }
    pl::DataFrame::new(batch.num_rows(), columns)
        .map_err(|e| polars_internal("building a data frame", e))
}

/// Moves the columns `names` of a Polars data frame into an arrow-rs
/// record batch.
fn frame_to_batch(frame: &pl::DataFrame, names: &[String]) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(names.len());
    let mut arrays = Vec::with_capacity(names.len());
    for name in names {
        let column = frame
            .column(name)
            .map_err(|e| polars_internal(&format!("result column `{name}`"), e))?
            .clone();
        let array = column.rechunk_to_arrow(pl::CompatLevel::oldest());
        let field =
            polars_arrow::datatypes::Field::new(name.as_str().into(), array.dtype().clone(), true);
        let c_schema = polars_arrow::ffi::export_field_to_c(&field);
        let c_array = polars_arrow::ffi::export_array_to_c(array);
        // SAFETY: as in `batch_to_frame`, in the other direction.
        let c_schema: FFI_ArrowSchema = unsafe { std::mem::transmute(c_schema) };
        let c_array: FFI_ArrowArray = unsafe { std::mem::transmute(c_array) };
        // SAFETY: the structs were filled by polars-arrow's exporter above.
        let data = unsafe { from_ffi(c_array, &c_schema) }
            .map_err(|e| Error::Internal(format!("importing `{name}` from Polars: {e}")))?;
        let array = make_array(data);
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(format!("building a batch from Polars: {e}")))
}

/// Lists the columns gato reads from the result: discriminants, weight,
/// mass and the hidden columns, each once.
fn output_names(pipeline: &Pipeline) -> Vec<String> {
    let s = &pipeline.selection;
    let mut names: Vec<String> = Vec::new();
    let wanted = s
        .discriminants
        .iter()
        .map(String::as_str)
        .chain([s.weight.as_str()])
        .chain(s.mass.as_deref())
        .chain(HIDDEN_COLUMNS);
    for name in wanted {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Builds the selection as a lazy frame over `events` and checks its
/// output columns; the frame returns only the columns gato reads.
fn query(pipeline: &Pipeline, sources: &Sources) -> Result<pl::LazyFrame> {
    let events = events_frame(sources)?;
    let columns = crate::select::visible_columns(sources);
    let mut selected = match &pipeline.selection.lazy {
        Some(query) => (query.0)(events).map_err(|e| {
            Error::Select(format!("the Polars lazy query failed: {}", polars_message(&e)))
        })?,
        None => {
            let sql = carry_hidden_columns(&pipeline.selection.sql)?;
            let mut ctx = polars::sql::SQLContext::new();
            ctx.register("events", events);
            ctx.execute(&sql).map_err(|e| {
                Error::Select(format!(
                    "the Polars SQL failed to plan: {}\n(the table is `events`; its \
                     columns are [{columns}])",
                    polars_message(&e)
                ))
            })?
        }
    };
    let schema = selected.collect_schema().map_err(|e| {
        Error::Select(format!(
            "the Polars selection failed to plan: {}\n(the table is `events`; its columns \
             are [{columns}])",
            polars_message(&e)
        ))
    })?;
    for name in HIDDEN_COLUMNS {
        if schema.get(name).is_none() {
            return Err(Error::Select(format!(
                "{UNTRACEABLE}, and in a lazy query keep the columns whose names start \
                 with `_gato_`"
            )));
        }
    }
    let s = &pipeline.selection;
    let required = s.discriminants.iter().chain([&s.weight]).chain(s.mass.as_ref());
    for name in required {
        match schema.get(name) {
            None => {
                let returned: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
                return Err(missing_column(name, &returned));
            }
            Some(dtype) if !dtype.is_primitive_numeric() => {
                return Err(Error::Select(format!(
                    "column `{name}` has type {dtype}, expected a number; cast it in the \
                     query"
                )));
            }
            Some(_) => {}
        }
    }
    let keep: Vec<pl::Expr> = output_names(pipeline)
        .iter()
        .map(|name| match name.as_str() {
            PROCESS_INDEX_COLUMN | INPUT_COLUMN => {
                pl::col(name.as_str()).cast(pl::DataType::Int32)
            }
            ROW_COLUMN => pl::col(name.as_str()).cast(pl::DataType::Int64),
            _ => pl::col(name.as_str()),
        })
        .collect();
    Ok(selected.select(keep))
}

/// Plans the selection and checks its output columns without reading
/// events.
pub fn check(pipeline: &Pipeline, sources: &Sources) -> Result<()> {
    query(pipeline, sources).map(|_| ())
}

/// A message from the thread that runs the Polars query.
enum Message {
    Batch(pl::DataFrame),
    Done(pl::PolarsResult<()>),
}

/// The result batches of a selection that runs on Polars' streaming engine,
/// in no particular order.
///
/// The query runs on its own thread, and a channel of two batches between
/// it and the reader bounds the batches in flight. Dropping the iterator
/// stops the query.
pub struct Batches {
    receive: Receiver<Message>,
    runner: Option<std::thread::JoinHandle<()>>,
    names: Vec<String>,
    done: bool,
}

/// Starts the selection on Polars' streaming engine.
pub fn start(pipeline: &Pipeline, sources: &Sources) -> Result<Batches> {
    let frame = query(pipeline, sources)?;
    let names = output_names(pipeline);

    let (send, receive) = sync_channel::<Message>(2);
    let batches = send.clone();
    let on_batch: Arc<dyn Fn(pl::DataFrame) -> pl::PolarsResult<bool> + Send + Sync> =
        Arc::new(move |frame| {
            // A closed channel means gato stopped reading, so the query stops.
            Ok(batches.send(Message::Batch(frame)).is_err())
        });
    let callback = pl::PlanCallback::Rust(pl::SpecialEq::new(on_batch));
    let sink = frame
        .sink_batches(callback, false, NonZeroUsize::new(BATCH_ROWS))
        .map_err(|e| Error::Select(format!("Polars: {e}")))?;
    let runner = std::thread::Builder::new()
        .name("gato-polars".into())
        .spawn(move || {
            let result = sink.collect_with_engine(pl::Engine::Streaming).map(|_| ());
            send.send(Message::Done(result)).ok();
        })
        .map_err(|e| Error::Internal(format!("starting the Polars thread: {e}")))?;
    Ok(Batches { receive, runner: Some(runner), names, done: false })
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    /// Waits for the next result batch; after an error there are no more.
    fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.done {
            return None;
        }
        let outcome = match self.receive.recv() {
            Ok(Message::Batch(frame)) => frame_to_batch(&frame, &self.names),
            Ok(Message::Done(Ok(()))) => {
                self.done = true;
                return None;
            }
            Ok(Message::Done(Err(e))) => Err(Error::Select(format!(
                "the Polars query failed: {}",
                polars_message(&e)
            ))),
            Err(_) => Err(Error::Internal("the Polars thread panicked".into())),
        };
        self.done = outcome.is_err();
        Some(outcome)
    }
}

impl Drop for Batches {
    /// Closes the channel, which stops a query still running, and waits for
    /// its thread.
    fn drop(&mut self) {
        let (_, closed) = sync_channel(0);
        drop(std::mem::replace(&mut self.receive, closed));
        if let Some(runner) = self.runner.take() {
            runner.join().ok();
        }
    }
}

/// Rewrites the selection SQL so that every `SELECT` reading `events`
/// (directly, through a subquery or through a common table expression)
/// also returns the hidden columns.
pub fn carry_hidden_columns(sql: &str) -> Result<String> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| Error::Select(format!("the SQL does not parse: {e}")))?;
    let mut query = match <[ast::Statement; 1]>::try_from(statements) {
        Ok([ast::Statement::Query(query)]) => query,
        _ => {
            return Err(Error::Select(
                "the selection must be exactly one SELECT statement".into(),
            ));
        }
    };
    carry_query(&mut query, &[])?;
    Ok(query.to_string())
}

/// Returns whether `name` is a relation that carries the hidden columns:
/// `events`, or one of `carriers`, the lower-case names of the common table
/// expressions that read it.
fn is_carrier(name: &ast::ObjectName, carriers: &[String]) -> bool {
    // The last part without quotes: `"events"` and `events` are one table.
    let [ast::ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
        return false;
    };
    let name = ident.value.to_lowercase();
    name == "events" || carriers.contains(&name)
}

fn relations(select: &ast::Select) -> impl Iterator<Item = &ast::TableFactor> {
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
}

/// Returns whether `query` reads `events` or one of `carriers`.
fn reads(query: &ast::Query, carriers: &[String]) -> bool {
    let mut names = carriers.to_vec();
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            if reads(&cte.query, &names) {
                names.push(cte.alias.name.value.to_lowercase());
            }
        }
    }
    set_reads(&query.body, &names)
}

fn set_reads(body: &ast::SetExpr, carriers: &[String]) -> bool {
    match body {
        ast::SetExpr::Select(select) => relations(select).any(|r| match r {
            ast::TableFactor::Table { name, .. } => is_carrier(name, carriers),
            ast::TableFactor::Derived { subquery, .. } => reads(subquery, carriers),
            _ => false,
        }),
        ast::SetExpr::Query(query) => reads(query, carriers),
        ast::SetExpr::SetOperation { left, right, .. } => {
            set_reads(left, carriers) || set_reads(right, carriers)
        }
        _ => false,
    }
}

fn carry_query(query: &mut ast::Query, outer: &[String]) -> Result<()> {
    let mut carriers = outer.to_vec();
    if let Some(with) = query.with.as_mut() {
        for cte in &mut with.cte_tables {
            if reads(&cte.query, &carriers) {
                carry_query(&mut cte.query, &carriers)?;
                carriers.push(cte.alias.name.value.to_lowercase());
            }
        }
    }
    carry_set_expr(&mut query.body, &carriers)
}

fn carry_set_expr(body: &mut ast::SetExpr, carriers: &[String]) -> Result<()> {
    match body {
        ast::SetExpr::Select(select) => carry_select(select, carriers),
        ast::SetExpr::Query(query) => carry_query(query, carriers),
        ast::SetExpr::SetOperation {
            op: ast::SetOperator::Union,
            set_quantifier: ast::SetQuantifier::All,
            left,
            right,
        } => {
            carry_set_expr(left, carriers)?;
            carry_set_expr(right, carriers)
        }
        ast::SetExpr::SetOperation { op: ast::SetOperator::Union, .. } => Err(Error::Select(
            "the query cannot be used as a selection: UNION without ALL removes rows that \
             look alike, and the selection must return one row per event; write UNION ALL"
                .into(),
        )),
        _ => Err(Error::Select(
            "the query cannot be used as a selection: every part of it must select from \
             `events`, so INTERSECT, EXCEPT and a bare VALUES list cannot be used (VALUES \
             inside a join or a WITH table can)"
                .into(),
        )),
    }
}

fn carry_select(select: &mut ast::Select, carriers: &[String]) -> Result<()> {
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if select.distinct.is_some() || grouped || select.having.is_some() {
        return Err(Error::Select(
            "the query cannot be used as a selection: the selection must return one row \
             per event, without GROUP BY, aggregates or DISTINCT"
                .into(),
        ));
    }
    for item in &select.projection {
        if let ast::SelectItem::ExprWithAlias { alias, .. } = item
            && alias.value.starts_with("_gato_")
        {
            return Err(Error::Select(format!(
                "the query cannot be used as a selection: the output column `{}` uses the \
                 prefix `_gato_`, which is reserved for gato's own columns; rename it",
                alias.value
            )));
        }
    }

    let joined = select.from.len() > 1 || select.from.iter().any(|t| !t.joins.is_empty());
    // The name by which the projection can reach the carrying relation.
    let mut found: Vec<Option<ast::Ident>> = Vec::new();
    for table in &mut select.from {
        let factors = std::iter::once(&mut table.relation)
            .chain(table.joins.iter_mut().map(|j| &mut j.relation));
        for factor in factors {
            match factor {
                ast::TableFactor::Table { name, alias, .. } if is_carrier(name, carriers) => {
                    // Polars finds tables by their exact name, and `events`
                    // is registered in lower case.
                    if let [ast::ObjectNamePart::Identifier(ident)] = name.0.as_mut_slice()
                        && ident.value.eq_ignore_ascii_case("events")
                    {
                        *ident = ast::Ident::new("events");
                    }
                    let own = name.0.last().and_then(|part| part.as_ident()).cloned();
                    found.push(alias.as_ref().map(|a| a.name.clone()).or(own));
                }
                ast::TableFactor::Derived { subquery, alias, .. }
                    if reads(subquery, carriers) =>
                {
                    carry_query(subquery, carriers)?;
                    found.push(alias.as_ref().map(|a| a.name.clone()));
                }
                _ => {}
            }
        }
    }

    let qualifier = match found.as_slice() {
        [] => return Err(Error::Select(UNTRACEABLE.into())),
        [one] => one.clone(),
        _ => {
            return Err(Error::Select(
                "the query cannot be used as a selection: it uses the table `events` twice \
                 (a self-join), so gato cannot tell which input row an output row belongs \
                 to; join `events` with other tables only"
                    .into(),
            ));
        }
    };

    // A wildcard over the carrying relation returns the hidden columns.
    let covered = select.projection.iter().any(|item| match item {
        ast::SelectItem::Wildcard(_) => true,
        ast::SelectItem::QualifiedWildcard(
            ast::SelectItemQualifiedWildcardKind::ObjectName(name),
            _,
        ) => {
            let last = name.0.last().and_then(|part| part.as_ident());
            qualifier.as_ref().is_some_and(|q| last.is_some_and(|l| l.value == q.value))
        }
        _ => false,
    });
    if covered {
        return Ok(());
    }

    for column in HIDDEN_COLUMNS {
        let listed = select.projection.iter().any(|item| {
            matches!(item, ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(i)) if i.value == column)
        });
        if listed {
            continue;
        }
        let expr = match (&qualifier, joined) {
            (Some(q), true) => {
                ast::Expr::CompoundIdentifier(vec![q.clone(), ast::Ident::new(column)])
            }
            _ => ast::Expr::Identifier(ast::Ident::new(column)),
        };
        select.projection.push(ast::SelectItem::UnnamedExpr(expr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{carry_hidden_columns, without_syntax_trees};

    #[test]
    fn syntax_trees_leave_their_names() {
        let text = "expression Exists { subquery: Query { with: None }, negated: false } \
                    is not currently supported";
        assert_eq!(
            without_syntax_trees(text),
            "expression Exists is not currently supported"
        );
        let text =
            "unsupported join constraint expression: BinaryOp { left: A { b: 1 } }";
        assert_eq!(
            without_syntax_trees(text),
            "unsupported join constraint expression: BinaryOp"
        );
        assert_eq!(without_syntax_trees("no tree here"), "no tree here");
    }

    fn carried(sql: &str) -> String {
        carry_hidden_columns(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[test]
    fn plain_select_gets_the_hidden_columns() {
        assert_eq!(
            carried("SELECT score, weight FROM events WHERE score > 0.1"),
            "SELECT score, weight, _gato_process, _gato_input, _gato_row FROM events \
             WHERE score > 0.1"
        );
    }

    #[test]
    fn joins_qualify_the_hidden_columns_with_the_alias() {
        let sql = carried("SELECT e.score, k.f * e.weight AS w FROM events AS e JOIN k ON e.x = k.x");
        assert!(sql.contains("e._gato_process, e._gato_input, e._gato_row FROM"), "{sql}");
    }

    #[test]
    fn quoted_events_is_events() {
        let sql = carried("SELECT score FROM \"events\"");
        assert!(sql.contains("score, _gato_process, _gato_input, _gato_row FROM"), "{sql}");
    }

    #[test]
    fn wildcards_already_return_them() {
        assert_eq!(carried("SELECT * FROM events"), "SELECT * FROM events");
    }

    #[test]
    fn subqueries_and_common_table_expressions_carry_them() {
        let sql = carried(
            "WITH s AS (SELECT score FROM events) SELECT score FROM (SELECT score FROM s) t",
        );
        assert_eq!(sql.matches("_gato_row").count(), 3, "{sql}");
    }

    #[test]
    fn queries_without_events_are_rejected() {
        let e = carry_hidden_columns("SELECT 1 AS score").unwrap_err().to_string();
        assert!(e.contains("traced back"), "{e}");
    }
}
