//! Pipeline configuration: the YAML file, `${VAR}` substitution, and the
//! validated [`Pipeline`] that the stages run from.
//!
//! Reading happens in three steps. First the text is read and its `${VAR}`
//! references replaced ([`env`]). Then serde-saphyr parses it into the raw
//! structs of [`file`], where unknown keys and wrong types fail with line and
//! column. Last, [`Pipeline::from_file`] checks what involves several keys or
//! the file system, and resolves globs.

pub mod env;
pub mod file;
mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

pub use file::{
    Checkpoint, CombineRule, EventStorage, SelectEngine, GeneratorKind, GmmInit, MeanMapping, ModelKind,
    NonFinitePolicy, OptimizerKind, ReportFile, Role, SignificanceKind, Statistics,
};
pub use schedule::Schedule;

use crate::error::{Error, Result};
use file::{PipelineFile, ScheduleFile, ScheduleKind};

/// Largest number of epochs a pipeline may ask for.
pub const MAX_EPOCHS: usize = 1_000_000;
/// Largest number of starts per K.
pub const MAX_RESTARTS: usize = 1000;
/// Largest number of categories.
pub const MAX_CATEGORIES: usize = 1000;
/// Largest DP histogram; the DP costs O(K·bins²) time.
pub const MAX_DP_BINS: usize = 20_000;
/// Most cells of binned statistics (bins per discriminant to the power of
/// the number of discriminants).
pub const MAX_STATISTICS_CELLS: usize = 1_000_000;
/// Largest `report.bins`.
pub const MAX_REPORT_BINS: usize = 1000;

/// A validated pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Name used in reports.
    pub name: String,
    /// Path of the pipeline file, or `<string>` when parsed from text.
    pub origin: String,
    /// The pipeline text after `${VAR}` substitution, echoed in summary.json.
    pub text: String,
    /// Seed for generation, initialisation and restarts.
    pub seed: u64,
    /// Distinct event inputs, each read once.
    pub inputs: Vec<Input>,
    /// Processes, in the order of the file.
    pub processes: Vec<Process>,
    /// The selection query and its output columns.
    pub selection: Selection,
    /// The category model and its schedules.
    pub model: ModelSpec,
    /// Significance formula and penalties.
    pub objective: ObjectiveSpec,
    /// Optimiser and learning-rate schedule.
    pub optimizer: OptimizerSpec,
    /// Epochs, restarts and checkpointing.
    pub training: file::TrainingFile,
    /// Exact-evaluation settings.
    pub evaluation: file::EvaluationFile,
    /// Output directory.
    pub output: PathBuf,
    /// Training device.
    pub device: crate::device::DeviceChoice,
    /// Plot settings.
    pub report: file::ReportFile,
}

/// One input of events, read once even when several processes share it.
#[derive(Debug, Clone)]
pub struct Input {
    /// Origin of the events.
    pub kind: InputKind,
    /// Assignment of rows to processes.
    pub assign: ProcessAssign,
}

impl Input {
    /// Returns a short label for messages.
    pub fn label(&self) -> String {
        match &self.kind {
            InputKind::File(path) => path.display().to_string(),
            InputKind::Object(url) => url.clone(),
            InputKind::Generator { source, .. } => format!("generator `{source}`"),
        }
    }
}

/// Origin of an input's events.
#[derive(Debug, Clone)]
pub enum InputKind {
    /// A Parquet file.
    File(PathBuf),
    /// A Parquet object on an object store, by URL (`s3://` or `gs://`).
    Object(String),
    /// A built-in toy generator, under the name of its source.
    Generator { source: String, spec: crate::toy::ToySpec },
}

/// Assignment of an input's rows to processes.
#[derive(Debug, Clone)]
pub enum ProcessAssign {
    /// Every row belongs to the process with this index.
    All(usize),
    /// The value of `column` names the process; rows with other values are
    /// not in any process and are left out of `events`.
    ByColumn { column: String, values: BTreeMap<String, usize> },
}

/// A validated process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Name, as in the `process` column of `events`.
    pub name: String,
    /// Signal or background.
    pub role: Role,
    /// Factor applied to the selected weights (1 without a `scale`).
    pub scale: f64,
}

/// The validated selection.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The SQL text.
    pub sql: String,
    /// Output columns the model cuts on.
    pub discriminants: Vec<String>,
    /// Output column holding the event weight.
    pub weight: String,
    /// Handling of NaN and ±inf.
    pub non_finite: NonFinitePolicy,
    /// Output column holding the invariant mass.
    pub mass: Option<String>,
    /// Storage of the selected events.
    pub events: EventStorage,
    /// Query engine that runs the SQL.
    pub engine: SelectEngine,
    /// A Polars lazy query that replaces the SQL (engine `polars`; set from
    /// Rust only).
    pub lazy: Option<crate::polars_select::LazyQuery>,
}

/// The validated model settings.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Sigmoid cuts or Gaussian mixture.
    pub kind: ModelKind,
    /// Numbers of categories K, one training run each.
    pub categories: Vec<usize>,
    /// Bins per discriminant of each run: `[K]` for one discriminant and
    /// for the GMM, the grid of a sigmoid model on several discriminants.
    pub bins: Vec<Vec<usize>>,
    /// Range `(low, high)` of each discriminant.
    pub ranges: Vec<(f64, f64)>,
    /// Sigmoid steepness over the epochs, one schedule per discriminant.
    pub steepness: Vec<Schedule>,
    /// GMM temperature over the epochs.
    pub temperature: Schedule,
    /// GMM base width; `None` for the volume-based default.
    pub sigma_base: Option<f64>,
    /// GMM initialisation.
    pub init: GmmInit,
    /// GMM mean mapping.
    pub means: MeanMapping,
}

/// The validated objective.
#[derive(Debug, Clone)]
pub struct ObjectiveSpec {
    /// Per-category significance formula.
    pub significance: SignificanceKind,
    /// `(threshold, λ)` of the low-background penalty.
    pub low_background: Option<(f64, f64)>,
    /// `(max_relative, λ)` of the MC-uncertainty penalty.
    pub mc_uncertainty: Option<(f64, f64)>,
    /// Combination of the per-signal significances.
    pub combine: CombineRule,
    /// Weight of each signal for [`CombineRule::Quadrature`].
    pub signal_weights: Vec<f64>,
    /// Per-category reweighting of some background processes.
    pub reweight: Option<ReweightSpec>,
    /// Mass window and sideband fit of a resonance search.
    pub sideband: Option<SidebandSpec>,
}

/// The validated mass-window settings; see [`crate::sideband`].
#[derive(Debug, Clone, PartialEq)]
pub struct SidebandSpec {
    /// Signal mass window.
    pub window: (f64, f64),
    /// Fit range of the background mass spectrum.
    pub range: (f64, f64),
    /// Bins of the fitted spectrum.
    pub bins: usize,
    /// Epochs between two fits.
    pub every: usize,
}

/// Per-category factors on the yields (f) and Σw² (f²) of a subset of the
/// background processes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReweightSpec {
    /// Whether each process, by index, is scaled.
    pub scaled: Vec<bool>,
    /// Starting factors: one for every category, or one per category.
    pub factors: file::Factors,
}

impl ReweightSpec {
    /// Returns the starting factors of a run with `k` categories.
    pub fn initial(&self, k: usize) -> Vec<f64> {
        match &self.factors {
            file::Factors::Uniform(f) => vec![*f; k],
            file::Factors::PerCategory(list) => list.clone(),
        }
    }
}

/// The validated optimiser.
#[derive(Debug, Clone)]
pub struct OptimizerSpec {
    /// RMSprop or Adam.
    pub kind: OptimizerKind,
    /// Learning rate over the epochs.
    pub learning_rate: Schedule,
}

impl Pipeline {
    /// Reads, substitutes, parses and validates the pipeline at `path`.
    pub fn load(path: &Path) -> Result<Pipeline> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read pipeline {}: {e}", path.display()))
        })?;
        Self::from_text(&raw, &path.display().to_string())
    }

    /// Substitutes, parses and validates pipeline text; `origin` names it in
    /// messages.
    pub fn from_text(raw: &str, origin: &str) -> Result<Pipeline> {
        let text = env::substitute(raw, |name| std::env::var(name).ok())
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        let file: PipelineFile = serde_saphyr::from_str(&text).map_err(|e| {
            let message = e.to_string();
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            Error::Config(format!(
                "{origin}: invalid pipeline: {}",
                message.replace("<input>", origin)
            ))
        })?;
        Self::from_file(file, text, origin)
    }

    /// Validates a parsed pipeline.
    pub fn from_file(file: PipelineFile, text: String, origin: &str) -> Result<Pipeline> {
        let at = |loc: &Location, key: &str, message: String| {
            Error::Config(format!(
                "{origin}:{}:{}: {key}: {message}",
                loc.line(),
                loc.column()
            ))
        };
        let plain = |key: &str, message: String| {
            Error::Config(format!("{origin}: {key}: {message}"))
        };

        let processes = validate_processes(&file, &at)?;
        let inputs = resolve_inputs(&file, &at, &plain)?;
        let selection = validate_selection(&file, &plain)?;
        let model = validate_model(&file.model, selection.discriminants.len(), &at)?;
        let objective = validate_objective(&file, &model.categories, &plain)?;
        let learning_rate = match &file.optimizer.learning_rate {
            Some(spanned) => {
                schedule_from(spanned, "optimizer.learning_rate", true, &at)?
            }
            None => Schedule::new(ScheduleKind::Cosine, 0.1, 0.001),
        };
        let in_range = |key: &str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                return Err(plain(
                    key,
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
            Ok(())
        };
        in_range("training.epochs", file.training.epochs, 1, MAX_EPOCHS)?;
        in_range("training.restarts", file.training.restarts, 1, MAX_RESTARTS)?;
        let largest_k = model.categories.iter().copied().max().unwrap_or(2);
        in_range("evaluation.dp_bins", file.evaluation.dp_bins, largest_k, MAX_DP_BINS)
            .map_err(|e| Error::Config(format!("{e} (it must be at least the largest K)")))?;
        in_range("report.bins", file.report.bins, 2, MAX_REPORT_BINS)?;
        if file.selection.events == EventStorage::Disk
            && file.objective.sideband_fit.is_some()
        {
            return Err(plain(
                "selection.events",
                "`disk` cannot be combined with `objective.sideband_fit`, which refits \
                 the background from every event's mass in memory; use `memory` or `auto`"
                    .into(),
            ));
        }
        if file.training.chunk_events == Some(0) {
            return Err(plain(
                "training.chunk_events",
                "must be at least 1, got 0".into(),
            ));
        }
        if let Some(scale) = file.report.signal_scale
            && !(1e-6..=1e9).contains(&scale)
        {
            return Err(plain(
                "report.signal_scale",
                format!("must be between 1e-6 and 1e9, got {scale}"),
            ));
        }
        if let Some(low) = file.evaluation.argmax_low {
            let signals = processes.iter().filter(|p| p.role == Role::Signal).count();
            if !(low.is_finite() && (0.0..1.0).contains(&low)) {
                return Err(plain(
                    "evaluation.argmax_low",
                    format!("must be in [0, 1), got {low}"),
                ));
            }
            if selection.discriminants.len() != signals {
                return Err(plain(
                    "evaluation.argmax_low",
                    format!(
                        "the argmax baseline reads discriminant i as the softmax score of \
                         signal i, so it needs one discriminant per signal: {} discriminants, \
                         {signals} signals",
                        selection.discriminants.len()
                    ),
                ));
            }
        }
        let name_ok = !file.name.is_empty()
            && file.name != "."
            && file.name != ".."
            && file.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return Err(plain(
                "name",
                format!(
                    "`{}` is not a valid name; use letters, digits, `_`, `.` and `-`, \
                     because it names the default output directory",
                    file.name
                ),
            ));
        }
        if file.output.as_deref().is_some_and(|o| o.trim().is_empty()) {
            return Err(plain(
                "output",
                "is empty; give a directory, or remove the key for runs/NAME".into(),
            ));
        }
        // A remote output stays a URL; a `file://` URL becomes its path.
        let output = crate::remote::local_path(
            &file.output.clone().unwrap_or_else(|| format!("runs/{}", file.name)),
        )
        .map_err(|m| plain("output", m))?;
        let training = file::TrainingFile {
            statistics_bins: statistics_bins(&file, &selection, &plain)?,
            ..file.training.clone()
        };
        let device = match &file.device {
            None => crate::device::DeviceChoice::Cpu,
            Some(d) => d.parse().map_err(|e: String| plain("device", e))?,
        };
        Ok(Pipeline {
            name: file.name.clone(),
            origin: origin.to_string(),
            text,
            seed: file.seed,
            inputs,
            processes,
            selection,
            model,
            objective,
            optimizer: OptimizerSpec { kind: file.optimizer.kind, learning_rate },
            training,
            evaluation: file.evaluation.clone(),
            output,
            device,
            report: file.report.clone(),
        })
    }

    /// Indices of the signal processes.
    pub fn signal_indices(&self) -> Vec<usize> {
        self.role_indices(Role::Signal)
    }

    /// Indices of the background processes.
    pub fn background_indices(&self) -> Vec<usize> {
        self.role_indices(Role::Background)
    }

    fn role_indices(&self, role: Role) -> Vec<usize> {
        (0..self.processes.len()).filter(|&i| self.processes[i].role == role).collect()
    }

    /// Paths of the input files (generators excluded).
    pub fn input_paths(&self) -> Vec<&Path> {
        self.inputs
            .iter()
            .filter_map(|input| match &input.kind {
                InputKind::File(path) => Some(path.as_path()),
                InputKind::Object(_) | InputKind::Generator { .. } => None,
            })
            .collect()
    }
}

type AtFn<'a> = dyn Fn(&Location, &str, String) -> Error + 'a;
type PlainFn<'a> = dyn Fn(&str, String) -> Error + 'a;

fn validate_processes(file: &PipelineFile, at: &AtFn) -> Result<Vec<Process>> {
    let mut processes: Vec<Process> = Vec::new();
    for spanned in &file.processes {
        let p = &spanned.value;
        let loc = &spanned.referenced;
        if p.name.is_empty() {
            return Err(at(loc, "processes.name", "must not be empty".into()));
        }
        if processes.iter().any(|q| q.name == p.name) {
            return Err(at(
                loc,
                "processes.name",
                format!("process `{}` is defined twice", p.name),
            ));
        }
        let scale = match &p.scale {
            None => 1.0,
            Some(s) => {
                let positive = |v: f64| v.is_finite() && v > 0.0;
                if !positive(s.cross_section)
                    || !positive(s.luminosity)
                    || !positive(s.sum_generated_weights)
                {
                    return Err(at(
                        loc,
                        "processes.scale",
                        format!(
                            "process `{}`: cross_section, luminosity and \
                             sum_generated_weights must be finite and positive, got \
                             {}, {}, {}",
                            p.name,
                            s.cross_section,
                            s.luminosity,
                            s.sum_generated_weights
                        ),
                    ));
                }
                s.cross_section * s.luminosity / s.sum_generated_weights
            }
        };
        processes.push(Process { name: p.name.clone(), role: p.role, scale });
    }
    let roles = |role: Role| processes.iter().filter(|p| p.role == role).count();
    let loc = file.processes.first().map(|p| p.referenced);
    let missing = if processes.is_empty() {
        Some("the pipeline has no processes; add at least one signal and one background")
    } else if roles(Role::Signal) == 0 {
        Some("no process has role `signal`; add one")
    } else if roles(Role::Background) == 0 {
        Some("no process has role `background`; add one")
    } else {
        None
    };
    match (missing, loc) {
        (Some(message), Some(loc)) => Err(at(&loc, "processes", message.into())),
        (Some(message), None) => Err(Error::Config(format!("processes: {message}"))),
        (None, _) => Ok(processes),
    }
}

fn resolve_inputs(file: &PipelineFile, at: &AtFn, plain: &PlainFn) -> Result<Vec<Input>> {
    let mut inputs: Vec<Input> = Vec::new();
    // Where each file is first listed: the source or process, and the path
    // as written there.
    let mut file_index: BTreeMap<PathBuf, (String, PathBuf)> = BTreeMap::new();
    let mut source_inputs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();

    // Named sources first, so processes can refer to them.
    for (name, source) in &file.sources {
        let key = format!("sources.{name}");
        let mut indices = Vec::new();
        match (&source.files, &source.generator) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(plain(
                    &key,
                    "give exactly one of `files` or `generator`".into(),
                ));
            }
            (None, Some(generator)) => {
                if source.process_column.is_some() {
                    return Err(plain(
                        &key,
                        "a generator source has its own `process` column; remove \
                         `process_column`"
                            .into(),
                    ));
                }
                let spec = crate::toy::ToySpec::from_config(generator, file.seed)
                    .map_err(|message| plain(&format!("{key}.generator"), message))?;
                indices.push(inputs.len());
                inputs.push(Input {
                    kind: InputKind::Generator { source: name.clone(), spec },
                    assign: ProcessAssign::ByColumn {
                        column: "process".into(),
                        values: BTreeMap::new(),
                    },
                });
            }
            (Some(patterns), None) => {
                for path in expand_patterns(patterns).map_err(|m| plain(&key, m))? {
                    let canonical = canonical(&path);
                    if let Some((owner, first)) = file_index.get(&canonical) {
                        return Err(plain(
                            &key,
                            format!(
                                "file {} is listed twice: {owner} already reads it as {}; \
                                 list each file once",
                                path.display(),
                                first.display()
                            ),
                        ));
                    }
                    file_index.insert(canonical, (format!("`{key}`"), path.clone()));
                    indices.push(inputs.len());
                    let assign = match &source.process_column {
                        Some(column) => ProcessAssign::ByColumn {
                            column: column.clone(),
                            values: BTreeMap::new(),
                        },
                        None => ProcessAssign::All(usize::MAX),
                    };
                    inputs.push(Input { kind: input_kind(path), assign });
                }
            }
        }
        source_inputs.insert(name.as_str(), indices);
    }

    // Then attach every process to its inputs.
    for (index, spanned) in file.processes.iter().enumerate() {
        let p = &spanned.value;
        let loc = &spanned.referenced;
        match (&p.source, &p.files) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(at(
                    loc,
                    "processes",
                    format!(
                        "process `{}`: give exactly one of `source` or `files`",
                        p.name
                    ),
                ));
            }
            (Some(source), None) => {
                let Some(indices) = source_inputs.get(source.as_str()) else {
                    let known: Vec<&str> = source_inputs.keys().copied().collect();
                    return Err(at(
                        loc,
                        "processes.source",
                        format!(
                            "process `{}` refers to source `{source}`, which is not \
                             defined; defined sources: [{}]",
                            p.name,
                            known.join(", ")
                        ),
                    ));
                };
                for &i in indices {
                    attach(&mut inputs[i], index, &p.name, p.process_value.as_deref())
                        .map_err(|m| at(loc, "processes", m))?;
                }
            }
            (None, Some(patterns)) => {
                if p.process_value.is_some() {
                    return Err(at(
                        loc,
                        "processes.process_value",
                        format!(
                            "process `{}`: `process_value` needs a `source` with a \
                             `process_column`",
                            p.name
                        ),
                    ));
                }
                for path in expand_patterns(patterns)
                    .map_err(|m| at(loc, "processes.files", m))?
                {
                    if let Some((owner, first)) = file_index.get(&canonical(&path)) {
                        return Err(at(
                            loc,
                            "processes.files",
                            format!(
                                "file {} is already used by {owner} (as {}); list it once, \
                                 as a source with a `process_column` if several processes \
                                 share it",
                                path.display(),
                                first.display()
                            ),
                        ));
                    }
                    file_index
                        .insert(canonical(&path), (format!("process `{}`", p.name), path.clone()));
                    inputs.push(Input {
                        kind: input_kind(path),
                        assign: ProcessAssign::All(index),
                    });
                }
            }
        }
    }

    for input in &inputs {
        if matches!(input.assign, ProcessAssign::All(usize::MAX)) {
            return Err(plain(
                "sources",
                format!("input {} is not used by any process", input.label()),
            ));
        }
    }
    inputs.retain(|input| match &input.assign {
        ProcessAssign::ByColumn { values, .. } => !values.is_empty(),
        ProcessAssign::All(_) => true,
    });
    Ok(inputs)
}

/// Attaches process `index` to `input`.
fn attach(
    input: &mut Input,
    index: usize,
    name: &str,
    value: Option<&str>,
) -> Result<(), String> {
    let label = input.label();
    match &mut input.assign {
        ProcessAssign::ByColumn { values, .. } => {
            let value = value.unwrap_or(name).to_string();
            if values.insert(value.clone(), index).is_some() {
                return Err(format!(
                    "two processes select the value `{value}` of the process column of {label}"
                ));
            }
            Ok(())
        }
        ProcessAssign::All(owner) if *owner == usize::MAX => {
            if value.is_some() {
                return Err(format!(
                    "process `{name}`: `process_value` needs a source with a `process_column`"
                ));
            }
            *owner = index;
            Ok(())
        }
        ProcessAssign::All(_) => Err(format!(
            "process `{name}`: {label} has no `process_column` and already belongs to \
             another process; add a `process_column` to the source"
        )),
    }
}

/// Resolves links and `..` in `path`, so that two spellings of one file
/// compare equal.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// Returns the kind of an input: a file, or an object named by its URL.
fn input_kind(path: PathBuf) -> InputKind {
    match path.to_str() {
        Some(text) if crate::remote::is_remote(text) => InputKind::Object(text.to_string()),
        _ => InputKind::File(path),
    }
}

/// Expands paths, `file://`, `s3://` and `gs://` URLs and glob patterns, in
/// sorted order within each pattern. Objects come back as their URLs.
fn expand_patterns(patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    if patterns.is_empty() {
        return Err("the list of files is empty".into());
    }
    let mut paths = Vec::new();
    for pattern in patterns {
        if pattern.trim().is_empty() {
            return Err(
                "an input path is empty; is the environment variable that should \
                        name it unset or empty?"
                    .into(),
            );
        }
        if crate::remote::is_remote(pattern) {
            paths.extend(crate::remote::expand(pattern)?.into_iter().map(PathBuf::from));
            continue;
        }
        let local = crate::remote::local_path(pattern)?;
        let pattern = local.to_str().ok_or_else(|| format!("{pattern} is not UTF-8"))?;
        let is_glob = pattern.contains(['*', '?', '[']);
        if !is_glob {
            let path = PathBuf::from(pattern);
            if path.is_dir() {
                return Err(format!(
                    "input {pattern} is a directory; name the Parquet files in it, for \
                     example `{}/*.parquet`",
                    pattern.trim_end_matches('/')
                ));
            }
            if !path.is_file() {
                return Err(format!(
                    "input file {pattern} not found; check the path (relative paths are \
                     relative to the working directory)"
                ));
            }
            paths.push(path);
            continue;
        }
        let entries = glob::glob(pattern)
            .map_err(|e| format!("invalid glob pattern {pattern}: {e}"))?;
        let mut matched: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).filter(|p| p.is_file()).collect();
        if matched.is_empty() {
            return Err(format!("glob pattern {pattern} matches no file"));
        }
        matched.sort();
        paths.extend(matched);
    }
    Ok(paths)
}

fn validate_selection(file: &PipelineFile, plain: &PlainFn) -> Result<Selection> {
    let s = &file.selection;
    let sql = match (&s.sql, &s.sql_file) {
        (Some(sql), None) => sql.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            plain(
                "selection.sql_file",
                format!(
                    "cannot read SQL file {path}: {e} (relative paths are relative to the \
                     working directory)"
                ),
            )
        })?,
        _ => {
            return Err(plain("selection", "give exactly one of `sql` or `sql_file`".into()));
        }
    };
    if sql.trim().is_empty() {
        return Err(plain("selection", "the SQL is empty".into()));
    }
    if let Some((keyword, line, column)) = subset_clause(&sql) {
        let key = if s.sql.is_some() { "selection.sql" } else { "selection.sql_file" };
        return Err(plain(
            key,
            format!(
                "{keyword} at line {line}, column {column} of the SQL keeps an arbitrary \
                 subset of the events: the yields would no longer match the cross-sections, \
                 and a parallel query may pick other events each run; select events with \
                 WHERE on their columns instead, and scale the weights with the process's \
                 `scale` (a column with this name must be quoted: \"{}\")",
                keyword.to_lowercase()
            ),
        ));
    }
    if s.discriminants.is_empty() {
        return Err(plain("selection.discriminants", "name at least one column".into()));
    }
    if let Some((i, d)) = s
        .discriminants
        .iter()
        .enumerate()
        .find(|(i, d)| s.discriminants[..*i].contains(d))
    {
        return Err(plain(
            "selection.discriminants",
            format!("`{d}` is listed twice (entry {}); list each column once", i + 1),
        ));
    }
    if s.discriminants.contains(&s.weight) {
        return Err(plain(
            "selection.discriminants",
            format!(
                "`{}` is the weight column; a discriminant cannot be the weight",
                s.weight
            ),
        ));
    }
    Ok(Selection {
        sql,
        discriminants: s.discriminants.clone(),
        weight: s.weight.clone(),
        non_finite: s.non_finite,
        mass: s.mass.clone(),
        events: s.events,
        engine: s.engine,
        lazy: None,
    })
}

/// Finds the first LIMIT, OFFSET, FETCH or TABLESAMPLE keyword outside
/// quotes and comments in `sql`, with its line and column. SQL that does
/// not tokenize is left to the engine to report.
fn subset_clause(sql: &str) -> Option<(String, u64, u64)> {
    use datafusion::sql::sqlparser::{
        dialect::GenericDialect, keywords::Keyword, tokenizer::Token, tokenizer::Tokenizer,
    };
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location().ok()?;
    tokens.into_iter().find_map(|t| match t.token {
        Token::Word(w)
            if w.quote_style.is_none()
                && matches!(
                    w.keyword,
                    Keyword::LIMIT | Keyword::OFFSET | Keyword::FETCH | Keyword::TABLESAMPLE
                ) =>
        {
            Some((w.value.to_uppercase(), t.span.start.line, t.span.start.column))
        }
        _ => None,
    })
}

fn validate_model(
    spanned: &Spanned<file::ModelFile>,
    dims: usize,
    at: &AtFn,
) -> Result<ModelSpec> {
    let m = &spanned.value;
    let ks = &m.categories;
    let categories_error =
        |message: String| at(&ks.referenced, "model.categories", message);
    if ks.value.is_empty() {
        return Err(categories_error("give at least one K".into()));
    }
    let mut bins = Vec::with_capacity(ks.value.len());
    for entry in &ks.value {
        let grid = match entry {
            file::CategoriesEntry::Count(k)
                if m.kind == ModelKind::Sigmoid && dims > 1 =>
            {
                return Err(categories_error(format!(
                    "the sigmoid model on {dims} discriminants cuts each of them, so give \
                     the bins per discriminant, for example [{}] instead of {k}",
                    vec![k.to_string(); dims].join(", ")
                )));
            }
            file::CategoriesEntry::Count(k) => vec![*k],
            file::CategoriesEntry::Bins(b) if m.kind == ModelKind::Gmm => {
                return Err(categories_error(format!(
                    "the GMM takes a number of components, not bins per discriminant ({b:?})"
                )));
            }
            file::CategoriesEntry::Bins(b) if b.len() != dims => {
                return Err(categories_error(format!(
                    "{b:?} gives bins for {} discriminants, but `selection.discriminants` names {dims}",
                    b.len()
                )));
            }
            file::CategoriesEntry::Bins(b) => b.clone(),
        };
        if dims > 1 {
            if let Some(&b) = grid.iter().find(|&&b| b < 2) {
                return Err(categories_error(format!(
                    "every discriminant of a sigmoid grid needs at least 2 bins, got {b} in {grid:?}"
                )));
            }
        }
        let k = grid
            .iter()
            .try_fold(1usize, |acc, &b| acc.checked_mul(b))
            .unwrap_or(usize::MAX);
        if k < 2 {
            return Err(categories_error(format!(
                "every number of categories must be at least 2, got {k}"
            )));
        }
        if k > MAX_CATEGORIES {
            return Err(categories_error(format!(
                "every number of categories must be at most {MAX_CATEGORIES}, got {k}"
            )));
        }
        if bins.contains(&grid) {
            let label = if dims > 1 { format!("{grid:?}") } else { format!("K = {k}") };
            return Err(categories_error(format!(
                "{label} is listed twice; list each number of categories once"
            )));
        }
        bins.push(grid);
    }
    let categories: Vec<usize> = bins.iter().map(|b| b.iter().product()).collect();
    let check_range = |lo: f64, hi: f64, loc: &Location| {
        if !(lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite()) {
            return Err(at(
                loc,
                "model.range",
                format!("must be [low, high] with finite low < high, got [{lo}, {hi}]"),
            ));
        }
        Ok((lo, hi))
    };
    let ranges = match &m.range {
        None => vec![(0.0, 1.0); dims],
        Some(r) => match &r.value {
            file::RangeFile::One([lo, hi]) => {
                vec![check_range(*lo, *hi, &r.referenced)?; dims]
            }
            file::RangeFile::PerAxis(list) => {
                if list.len() != dims {
                    return Err(at(
                        &r.referenced,
                        "model.range",
                        format!(
                            "gives {} ranges, but `selection.discriminants` names {dims}; give \
                             one [low, high] for all or one per discriminant",
                            list.len()
                        ),
                    ));
                }
                list.iter()
                    .map(|[lo, hi]| check_range(*lo, *hi, &r.referenced))
                    .collect::<Result<_>>()?
            }
        },
    };
    let default =
        |initial, final_value| Schedule::new(ScheduleKind::Cosine, initial, final_value);
    let steepness = match &m.steepness {
        Some(s) => match &s.value {
            file::OneOrMany::One(one) => {
                vec![
                    schedule_check(one, &s.referenced, "model.steepness", false, at)?;
                    dims
                ]
            }
            file::OneOrMany::Many(list) => {
                if list.len() != dims {
                    return Err(at(
                        &s.referenced,
                        "model.steepness",
                        format!(
                            "gives {} schedules, but `selection.discriminants` names {dims}; give \
                             one schedule for all or one per discriminant",
                            list.len()
                        ),
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, one)| {
                        let key = format!("model.steepness (entry {})", i + 1);
                        schedule_check(one, &s.referenced, &key, false, at)
                    })
                    .collect::<Result<_>>()?
            }
        },
        None => vec![default(50.0, 10000.0); dims],
    };
    let temperature = match &m.temperature {
        Some(s) => schedule_from(s, "model.temperature", true, at)?,
        None => default(1.0, 0.05),
    };
    check_model_keys(spanned, at)?;
    if let Some(sigma) = m.sigma_base {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(at(
                &spanned.referenced,
                "model.sigma_base",
                format!("must be finite and positive, got {sigma}"),
            ));
        }
    }
    Ok(ModelSpec {
        kind: m.kind,
        categories,
        bins,
        ranges,
        steepness,
        temperature,
        sigma_base: m.sigma_base,
        init: m.init.unwrap_or_default(),
        means: m.means,
    })
}

/// Rejects keys that do not apply to the chosen model kind.
fn check_model_keys(spanned: &Spanned<file::ModelFile>, at: &AtFn) -> Result<()> {
    let m = &spanned.value;
    if m.kind == ModelKind::Sigmoid && m.sigma_base.is_some() {
        return Err(at(
            &spanned.referenced,
            "model.sigma_base",
            "applies to the GMM only; remove it for the sigmoid model".into(),
        ));
    }
    if m.kind == ModelKind::Sigmoid && m.init.is_some() {
        return Err(at(
            &spanned.referenced,
            "model.init",
            "applies to the GMM only; remove it for the sigmoid model".into(),
        ));
    }
    if m.kind == ModelKind::Sigmoid && m.means != file::MeanMapping::Range {
        return Err(at(
            &spanned.referenced,
            "model.means",
            "applies to the GMM only; remove it for the sigmoid model".into(),
        ));
    }
    if m.kind == ModelKind::Gmm && m.steepness.is_some() {
        return Err(at(
            &spanned.referenced,
            "model.steepness",
            "applies to the sigmoid model only; the GMM uses `temperature`".into(),
        ));
    }
    if m.kind == ModelKind::Sigmoid && m.temperature.is_some() {
        return Err(at(
            &spanned.referenced,
            "model.temperature",
            "applies to the GMM only; the sigmoid model uses `steepness`".into(),
        ));
    }
    Ok(())
}

fn validate_objective(
    file: &PipelineFile,
    categories: &[usize],
    plain: &PlainFn,
) -> Result<ObjectiveSpec> {
    let p = &file.objective.penalties;
    let low_background = match &p.low_background {
        None => None,
        Some(l) => {
            if !(l.threshold.is_finite() && l.threshold >= 0.0) || !(l.weight >= 0.0) {
                return Err(plain(
                    "objective.penalties.low_background",
                    format!(
                        "threshold and weight must be finite and non-negative, got {} and {}",
                        l.threshold, l.weight
                    ),
                ));
            }
            Some((l.threshold, l.weight))
        }
    };
    let mc_uncertainty = match &p.mc_uncertainty {
        None => None,
        Some(m) => {
            if !(m.max_relative.is_finite() && m.max_relative > 0.0) || !(m.weight >= 0.0)
            {
                return Err(plain(
                    "objective.penalties.mc_uncertainty",
                    format!(
                        "max_relative must be positive and weight non-negative, got {} and {}",
                        m.max_relative, m.weight
                    ),
                ));
            }
            Some((m.max_relative, m.weight))
        }
    };
    let signals = file.processes.iter().filter(|p| p.value.role == Role::Signal).count();
    let signal_weights = match &file.objective.signal_weights {
        None => vec![1.0; signals],
        Some(w) => {
            if w.len() != signals {
                return Err(plain(
                    "objective.signal_weights",
                    format!(
                        "give one weight per signal process: {signals} signals, {} weights",
                        w.len()
                    ),
                ));
            }
            if let Some(bad) = w.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(plain(
                    "objective.signal_weights",
                    format!("weights must be finite and positive, got {bad}"),
                ));
            }
            w.clone()
        }
    };
    if file.objective.signal_weights.is_some()
        && file.objective.combine != CombineRule::Quadrature
    {
        return Err(plain(
            "objective.signal_weights",
            "apply to `combine: quadrature` only; remove them or set that rule".into(),
        ));
    }
    let mut reweight = match &file.objective.background_reweight {
        None => None,
        Some(r) => Some(validate_reweight(file, r, categories, plain)?),
    };
    let sideband = match &file.objective.sideband_fit {
        None => None,
        Some(f) => {
            const KEY: &str = "objective.sideband_fit";
            let ([wl, wh], [rl, rh]) = (f.window, f.range);
            let ok = [wl, wh, rl, rh].iter().all(|v| v.is_finite())
                && rl <= wl
                && wl < wh
                && wh <= rh
                && rl < rh;
            if !ok {
                return Err(plain(
                    KEY,
                    format!(
                        "the window [{wl}, {wh}] must be a non-empty interval inside the range \
                         [{rl}, {rh}]"
                    ),
                ));
            }
            if !(2..=1000).contains(&f.bins) || f.every == 0 {
                return Err(plain(
                    KEY,
                    format!(
                        "`bins` must be from 2 to 1000 and `every` at least 1, got {} and {}",
                        f.bins, f.every
                    ),
                ));
            }
            if file.selection.mass.is_none() {
                return Err(plain(
                    KEY,
                    "needs `selection.mass`, the column with the invariant mass".into(),
                ));
            }
            if reweight.is_some() {
                return Err(plain(
                    KEY,
                    "sets the background factors itself; remove `objective.background_reweight`".into(),
                ));
            }
            // Every background is scaled to its fitted share in the window,
            // starting from the window's share of a flat spectrum.
            reweight = Some(ReweightSpec {
                scaled: file
                    .processes
                    .iter()
                    .map(|p| p.value.role == Role::Background)
                    .collect(),
                factors: file::Factors::Uniform((wh - wl) / (rh - rl)),
            });
            Some(SidebandSpec {
                window: (wl, wh),
                range: (rl, rh),
                bins: f.bins,
                every: f.every,
            })
        }
    };
    Ok(ObjectiveSpec {
        significance: file.objective.significance,
        low_background,
        mc_uncertainty,
        combine: file.objective.combine,
        signal_weights,
        reweight,
        sideband,
    })
}

fn validate_reweight(
    file: &PipelineFile,
    r: &file::ReweightFile,
    categories: &[usize],
    plain: &PlainFn,
) -> Result<ReweightSpec> {
    const KEY: &str = "objective.background_reweight";
    let mut scaled = vec![false; file.processes.len()];
    if r.processes.is_empty() {
        return Err(plain(
            KEY,
            "name at least one background process under `processes`".into(),
        ));
    }
    for name in &r.processes {
        let Some(i) = file.processes.iter().position(|p| &p.value.name == name) else {
            let known: Vec<&str> =
                file.processes.iter().map(|p| p.value.name.as_str()).collect();
            return Err(plain(
                KEY,
                format!(
                    "`{name}` is not a process of this pipeline; the processes are {}",
                    known.join(", ")
                ),
            ));
        };
        if file.processes[i].value.role != Role::Background {
            return Err(plain(
                KEY,
                format!(
                    "`{name}` is a signal; only background processes can be reweighted"
                ),
            ));
        }
        if scaled[i] {
            return Err(plain(KEY, format!("`{name}` is listed twice")));
        }
        scaled[i] = true;
    }
    let factors = r.factors.clone().unwrap_or(file::Factors::Uniform(1.0));
    let values = match &factors {
        file::Factors::Uniform(f) => vec![*f],
        file::Factors::PerCategory(list) => {
            if categories.len() != 1 || list.len() != categories[0] {
                return Err(plain(
                    KEY,
                    format!(
                        "{} factors given, but one per category needs a single run whose K \
                         equals that number (model.categories gives K = {:?}); give one \
                         factor for all categories instead",
                        list.len(),
                        categories
                    ),
                ));
            }
            list.clone()
        }
    };
    if let Some(bad) = values.iter().find(|f| !(f.is_finite() && **f >= 0.0)) {
        return Err(plain(
            KEY,
            format!("factors must be finite and non-negative, got {bad}"),
        ));
    }
    let all_backgrounds = file
        .processes
        .iter()
        .zip(&scaled)
        .all(|(p, scaled)| p.value.role != Role::Background || *scaled);
    if let Some(c) = values.iter().position(|f| *f == 0.0).filter(|_| all_backgrounds) {
        return Err(plain(
            KEY,
            format!(
                "factor 0 (for category {c}) on every background process leaves that \
                 category without background; use factors above 0 or reweight fewer processes"
            ),
        ));
    }
    if let Some(bad) = values.iter().find(|f| **f > 1e6) {
        return Err(plain(KEY, format!("factors must be at most 1e6, got {bad}")));
    }
    Ok(ReweightSpec { scaled, factors })
}

/// Validates a schedule: both ends finite and positive, and for a quantity
/// that is meant to decrease, `final` not above `initial`.
fn schedule_from(
    spanned: &Spanned<ScheduleFile>,
    key: &str,
    decreasing: bool,
    at: &AtFn,
) -> Result<Schedule> {
    schedule_check(&spanned.value, &spanned.referenced, key, decreasing, at)
}

/// [`schedule_from`] for a schedule located at `location`.
fn schedule_check(
    s: &ScheduleFile,
    location: &Location,
    key: &str,
    decreasing: bool,
    at: &AtFn,
) -> Result<Schedule> {
    if s.schedule == ScheduleKind::Constant
        && s.final_value.is_some_and(|f| f != s.initial)
    {
        return Err(at(
            location,
            key,
            "a constant schedule has no `final` value; remove it, or choose `cosine` or \
             `exponential`"
                .into(),
        ));
    }
    let final_value = s.final_value.unwrap_or(s.initial);
    for (name, v) in [("initial", s.initial), ("final", final_value)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(at(
                location,
                key,
                format!("`{name}` must be finite and positive, got {v}"),
            ));
        }
    }
    if decreasing && final_value > s.initial {
        return Err(at(
            location,
            key,
            format!(
                "`final` ({final_value}) is above `initial` ({}); this value is meant to \
                 decrease over the epochs, so swap them or use a constant schedule",
                s.initial
            ),
        ));
    }
    Ok(Schedule::new(s.schedule, s.initial, final_value))
}

/// Checks `training.statistics` and returns the bins per discriminant of
/// binned statistics (`None` for statistics over events).
fn statistics_bins(
    file: &PipelineFile,
    selection: &Selection,
    plain: &PlainFn,
) -> Result<Option<usize>> {
    let t = &file.training;
    if t.statistics == Statistics::Events {
        if t.statistics_bins.is_some() {
            return Err(plain(
                "training.statistics_bins",
                "applies only with `statistics: binned`".to_string(),
            ));
        }
        return Ok(None);
    }
    let dims = selection.discriminants.len();
    if dims > 3 {
        return Err(plain(
            "training.statistics",
            format!(
                "binned statistics support one to three discriminants, got {dims}; use \
                 `statistics: events`"
            ),
        ));
    }
    if file.objective.sideband_fit.is_some() {
        return Err(plain(
            "training.statistics",
            "binned statistics drop each event's mass, which `objective.sideband_fit` \
             refits from; use `statistics: events`"
                .to_string(),
        ));
    }
    let bins = t.statistics_bins.unwrap_or(match dims {
        1 => 4000,
        2 => 300,
        _ => 60,
    });
    let cells = (bins as f64).powi(dims as i32);
    if bins < 2 || cells > MAX_STATISTICS_CELLS as f64 {
        return Err(plain(
            "training.statistics_bins",
            format!(
                "must be at least 2 with at most {MAX_STATISTICS_CELLS} cells in all \
                 ({dims} discriminants), got {bins}"
            ),
        ));
    }
    Ok(Some(bins))
}
