//! The run's outputs for people and programs: [`Summary`] (written as
//! `summary.json`) and the tables printed on the terminal.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::evaluate::{CategoryTable, DpOptimum};
use crate::model::Params;
use crate::optimize::EpochRecord;

/// Version of the layout of `summary.json`.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything a run produced, as written to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Layout version of this file.
    pub schema_version: u32,
    /// Versions of gato and its numerical stack.
    pub versions: Versions,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file.
    pub pipeline_origin: String,
    /// The pipeline text after `${VAR}` substitution.
    pub pipeline_text: String,
    /// Seed of the run.
    pub seed: u64,
    /// Training device (`cpu` or `cuda:N`).
    pub device: String,
    /// Storage of the selected events: `memory` or `disk`.
    #[serde(default)]
    pub event_storage: String,
    /// Engine of the selection: `datafusion` or `polars` (Polars SQL or a
    /// lazy query).
    #[serde(default)]
    pub engine: String,
    /// Selected events per process.
    pub processes: Vec<ProcessSummary>,
    /// One entry per number of categories.
    pub runs: Vec<RunSummary>,
    /// The penalties of the objective.
    pub penalties: Penalties,
    /// Plot settings of the pipeline.
    pub report: crate::config::ReportFile,
    /// Wall-clock times of the stages, in seconds.
    pub timings_s: Timings,
    /// Peak resident memory of the process up to the end of the apply
    /// stage, in MiB (Linux only).
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// Warnings logged during the run, in order.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Reads the peak resident memory of this process (VmHWM) in MiB; `None`
/// where /proc/self/status does not exist.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The objective's penalties: their thresholds and weights λ.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Penalties {
    /// Smallest background yield per category before the penalty applies.
    pub low_background: Option<Penalty>,
    /// Largest relative MC uncertainty √Σw²/B per category.
    pub mc_uncertainty: Option<Penalty>,
}

/// One penalty.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Penalty {
    pub threshold: f64,
    pub weight: f64,
}

/// Software versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub gato: String,
    pub burn: String,
    pub datafusion: String,
    #[serde(default)]
    pub polars: String,
}

impl Default for Versions {
    fn default() -> Self {
        Versions {
            gato: env!("CARGO_PKG_VERSION").into(),
            burn: "0.21.0".into(),
            datafusion: datafusion::DATAFUSION_VERSION.into(),
            polars: polars::VERSION.into(),
        }
    }
}

/// Selected events of one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSummary {
    pub name: String,
    pub role: String,
    /// Unweighted count after selection.
    pub events: usize,
    /// Sum of weights after selection and scaling.
    #[serde(deserialize_with = "number_or_nan")]
    pub event_yield: f64,
}

/// Stage timings in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub select: f64,
    pub train: f64,
    pub evaluate: f64,
    pub apply: f64,
    pub total: f64,
}

/// One trained model and its evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run directory name under the output directory.
    pub name: String,
    /// `sigmoid` or `gmm`.
    pub model: String,
    /// Number of categories K.
    pub categories: usize,
    /// Bins per discriminant of a sigmoid grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<Vec<usize>>,
    /// `asimov` or `asimov-gato`.
    pub significance_formula: String,
    /// Rule that combines the per-signal Z into `table.z`, in words.
    pub combine: String,
    /// Every start that was trained.
    pub restarts: Vec<RestartSummary>,
    /// Index of the start that was kept.
    pub best_restart: usize,
    /// Epoch of the kept parameters, from 0.
    pub kept_epoch: usize,
    /// Hard Z of the kept epoch, before refinement.
    #[serde(deserialize_with = "number_or_nan")]
    pub trained_z: f64,
    /// Whether the cuts were refined on the exact hard significance.
    pub refined: bool,
    /// Whether every category meets the penalties' limits.
    pub meets_constraints: bool,
    /// Boundaries of 1D cut models (the learnt cuts).
    pub boundaries: Option<Vec<f64>>,
    /// Cuts per discriminant of a sigmoid grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_boundaries: Option<Vec<Vec<f64>>>,
    /// Background reweighting factors per category used in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_factors: Option<Vec<f64>>,
    /// Mass spectra and exponential fits of the final categories
    /// (`objective.sideband_fit` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sideband: Option<SidebandSummary>,
    /// Kept parameters, raw.
    pub parameters: Params,
    /// Hard categories, exactly evaluated.
    pub table: CategoryTable,
    /// Soft significance of the kept parameters.
    #[serde(deserialize_with = "number_or_nan")]
    pub soft_z: f64,
    /// (soft Z − hard Z) / hard Z at the kept epoch, before refinement.
    #[serde(deserialize_with = "number_or_nan")]
    pub soft_hard_bias: f64,
    /// K equal bins on the range.
    pub equidistant: Baseline,
    /// The DP optimum (one discriminant and one signal only).
    pub dp_optimum: Option<DpSummary>,
    /// The argmax baseline, with `evaluation.argmax_low`.
    pub argmax: Option<crate::evaluate::ArgmaxBaseline>,
    /// Output files with the `category` column, one per input.
    pub outputs: Vec<OutputFile>,
    /// The saved model, for `gato apply`.
    pub model_file: String,
    /// Training time of all starts, in seconds.
    #[serde(deserialize_with = "number_or_nan")]
    pub training_s: f64,
}

/// An input and the categorised copy written for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputFile {
    /// Input file, or the generator source.
    pub input: String,
    /// Written Parquet file.
    pub output: String,
}

/// One start of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartSummary {
    pub restart: usize,
    pub kept_epoch: usize,
    #[serde(deserialize_with = "number_or_nan")]
    pub hard_z: f64,
    #[serde(deserialize_with = "number_or_nan")]
    pub training_s: f64,
}

/// A baseline binning.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Category edges on the one discriminant; empty otherwise.
    pub edges: Vec<f64>,
    /// Bin edges per discriminant of a sigmoid grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_edges: Option<Vec<Vec<f64>>>,
    #[serde(deserialize_with = "number_or_nan")]
    pub z: f64,
    #[serde(deserialize_with = "numbers_or_nan")]
    pub z_per_signal: Vec<f64>,
}

/// The DP optimum and how far the learnt categories are from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpSummary {
    #[serde(flatten)]
    pub optimum: DpOptimum,
    /// (Z_dp − Z_learnt) / Z_dp; negative where the learnt cuts are better
    /// than the binned optimum.
    #[serde(deserialize_with = "number_or_nan")]
    pub gap: f64,
}

/// The sideband fits of a run's final categories.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SidebandSummary {
    /// Signal mass window `[low, high]`.
    pub window: [f64; 2],
    /// Fit range `[low, high]`.
    pub range: [f64; 2],
    /// Bin edges of the spectra.
    pub edges: Vec<f64>,
    /// One spectrum and fit per category.
    pub categories: Vec<crate::sideband::CategorySpectrum>,
}

/// Reads a float64 that JSON may hold as `null` (how NaN is written).
pub(crate) fn number_or_nan<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Reads float64 values that JSON may hold as `null` (how NaN is written).
pub(crate) fn numbers_or_nan<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Reads an output file of `gato run`. A missing or unreadable file gives
/// an error that names it and points to `gato run`.
pub(crate) fn read_output(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::input(
            path,
            format!("cannot read it ({e}); `gato run` writes it with the run's outputs"),
        )
    })
}

impl Summary {
    /// Reads `summary.json` from `path`; its `schema_version` must be
    /// [`SCHEMA_VERSION`].
    pub fn read(path: &Path) -> Result<Summary> {
        let text = read_output(path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not valid JSON: {e}")))?;
        let field = value.get("schema_version");
        let version = field.and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(SCHEMA_VERSION)) {
            return Err(Error::input(
                path,
                format!(
                    "schema_version is {}, this gato reads {SCHEMA_VERSION}; rerun the \
                     pipeline with this gato to rewrite it",
                    field.map_or("missing".to_string(), |v| v.to_string())
                ),
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::input(path, format!("not a gato summary: {e}")))
    }

    /// Writes the summary as pretty JSON to `path`, through a temporary
    /// file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("serialising summary: {e}")))?;
        crate::atomic::write(path, json.as_bytes())
    }
}

/// Writes the epoch history of a run as JSON.
pub fn write_history(path: &Path, history: &[Vec<EpochRecord>]) -> Result<()> {
    let json = serde_json::to_string(history)
        .map_err(|e| Error::Internal(format!("serialising history: {e}")))?;
    crate::atomic::write(path, json.as_bytes())
}

/// Formats the per-category table of one run.
pub fn format_run(run: &RunSummary, processes: &[ProcessSummary]) -> String {
    let signals: Vec<&str> = processes
        .iter()
        .filter(|p| p.role == "signal")
        .map(|p| p.name.as_str())
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (K = {}, {}): Z = {:.4}{}; kept epoch {} (from 0): hard Z {:.4}, soft Z {:.4}",
        run.name,
        run.categories,
        run.significance_formula,
        run.table.z,
        if run.refined { " after refining the cuts" } else { "" },
        run.kept_epoch,
        run.trained_z,
        run.soft_z,
    );
    if run.restarts.len() > 1 {
        let starts: Vec<String> = run
            .restarts
            .iter()
            .map(|r| format!("{}: Z {:.4} (epoch {})", r.restart, r.hard_z, r.kept_epoch))
            .collect();
        let _ = writeln!(
            out,
            "starts: {}; kept start {}",
            starts.join(", "),
            run.best_restart
        );
    }
    let grid = run.table.categories.iter().any(|r| r.cell.is_some());
    let width = if grid { 12 * run.bins.as_ref().map_or(1, Vec::len) + 1 } else { 21 };
    let mut header = format!("{:>4} {:>width$} {:>8}", "cat", "range", "bkg MC");
    for s in &signals {
        let _ = write!(header, " {:>11}", truncate(s, 11));
    }
    let _ = write!(header, " {:>12} {:>8}", "background", "rel.unc");
    for s in &signals {
        let label = if signals.len() == 1 {
            "Z".to_string()
        } else {
            format!("Z {}", truncate(s, 9))
        };
        let _ = write!(header, " {label:>11}");
    }
    // 1D cuts are listed in the order of the discriminant; other models'
    // categories from the most to the least significant.
    let order: Vec<usize> = if run.boundaries.is_some() {
        (0..run.table.categories.len()).collect()
    } else {
        let _ = writeln!(out, "categories from the most to the least significant:");
        run.table.by_significance.clone()
    };
    let _ = writeln!(out, "{header}");
    let last = run.table.categories.len().saturating_sub(1);
    for &c in &order {
        let row = &run.table.categories[c];
        let range = match (row.lower, row.upper, &row.cell) {
            (Some(lo), Some(hi), _) if row.category == last => {
                format!("[{lo:.5}, {hi:.5}]")
            }
            (Some(lo), Some(hi), _) => format!("[{lo:.5}, {hi:.5})"),
            (_, _, Some(cell)) => cell
                .iter()
                .map(|[lo, hi]| format!("[{lo:.3},{hi:.3}]"))
                .collect::<Vec<_>>()
                .join("x"),
            _ => "-".into(),
        };
        let mut line =
            format!("{:>4} {:>width$} {:>8}", row.category, range, row.background_events);
        for s in &row.signal {
            let _ = write!(line, " {s:>11.4}");
        }
        let unc = row.relative_mc_uncertainty.map_or("-".into(), |u| format!("{u:.4}"));
        let _ = write!(line, " {:>12.3} {:>8}", row.background, unc);
        for z in &row.z {
            let _ = write!(line, " {z:>11.4}");
        }
        let _ = writeln!(out, "{line}");
    }
    if signals.len() > 1 {
        let per_signal: Vec<String> = signals
            .iter()
            .zip(&run.table.z_per_signal)
            .map(|(s, z)| format!("{s} {z:.4}"))
            .collect();
        let _ = writeln!(
            out,
            "Z per signal: {}; Z above is their geometric mean",
            per_signal.join(", ")
        );
    }
    out
}

/// Formats the significance of every run against its baselines.
pub fn format_comparison(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:>12} {:>10} {:>14} {:>9} {:>10}",
        "run", "K", "equal bins", "learnt", "best binned", "shortfall", "argmax"
    );
    let mut bins = None;
    for run in runs {
        let (dp, gap) = match &run.dp_optimum {
            Some(d) => {
                bins = Some(d.optimum.bins);
                (format!("{:.4}", d.optimum.z), format!("{:+.2}%", 100.0 * d.gap))
            }
            None => ("-".into(), "-".into()),
        };
        let equal = if run.equidistant.z.is_finite() {
            format!("{:.4}", run.equidistant.z)
        } else {
            "-".into()
        };
        let argmax =
            run.argmax.as_ref().map_or("-".to_string(), |a| format!("{:.4}", a.z));
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:>12} {:>10.4} {:>14} {:>9} {:>10}",
            run.name, run.categories, equal, run.table.z, dp, gap, argmax
        );
    }
    if let Some(bins) = bins {
        let _ = writeln!(
            out,
            "best binned: the best K contiguous groups of {bins} equal bins (dynamic \
             programming); learnt cuts are not tied to those bin edges and can beat it.\n\
             shortfall: (best binned − learnt) / best binned; negative where the learnt \
             cuts are better."
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
