//! Exact evaluation of hard categories on every event, the equidistant
//! baseline, and the dynamic-programming optimum in 1D.
//!
//! Sums run in float64 over events. Weights are signed and summed as they
//! are; Σw² uses w². Categories with zero or negative background, or zero or
//! negative signal, score Z = 0 (see [`crate::significance`]) and are
//! counted in [`CategoryTable::nonpositive_background`].

use serde::Serialize;

use crate::config::{CombineRule, ObjectiveSpec, Pipeline, Role};
use crate::select::Events;
use crate::significance::{category_z, combine};

/// One category of an evaluation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CategoryRow {
    /// Category index, from 0.
    pub category: usize,
    /// Lower edge in the discriminant (1D cut models only).
    pub lower: Option<f64>,
    /// Upper edge in the discriminant (1D cut models only).
    pub upper: Option<f64>,
    /// `[low, high]` on each discriminant (sigmoid grids only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<Vec<[f64; 2]>>,
    /// Factor on the yields of the reweighted background processes
    /// (`objective.background_reweight` only); the yields below include it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_factor: Option<f64>,
    /// Number of selected events (unweighted), signal and background.
    pub events: usize,
    /// Number of selected background MC events (unweighted).
    pub background_events: usize,
    /// Yield of each signal process, in the order of the pipeline.
    pub signal: Vec<f64>,
    /// Total background yield.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub background: f64,
    /// Yield of each background process, in the order of the pipeline.
    pub background_by_process: Vec<f64>,
    /// Background sum of weights squared.
    pub background_sumw2: f64,
    /// √Σw² / B; `None` where B ≤ 0.
    pub relative_mc_uncertainty: Option<f64>,
    /// Z of each signal in this category (other signals count as background).
    #[serde(deserialize_with = "crate::report::numbers_or_nan")]
    pub z: Vec<f64>,
}

/// Hard categories evaluated exactly.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CategoryTable {
    /// One row per category.
    pub categories: Vec<CategoryRow>,
    /// √(Σ_k Z_k²) per signal.
    #[serde(deserialize_with = "crate::report::numbers_or_nan")]
    pub z_per_signal: Vec<f64>,
    /// The objective's combination of `z_per_signal` (the value itself for
    /// one signal).
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub z: f64,
    /// Categories whose background yield is zero or negative.
    pub nonpositive_background: usize,
    /// Category indices from the most to the least significant: by the
    /// largest share Z_ik² / Σ_k Z_ik² of one signal i's significance that
    /// falls in category k (for one signal, simply by Z_k).
    pub by_significance: Vec<usize>,
    /// Names of the signal processes, the order of `signal` and `z`.
    pub signal_processes: Vec<String>,
    /// Names of the background processes, the order of
    /// `background_by_process`.
    pub background_processes: Vec<String>,
}

impl CategoryTable {
    /// Checks that every category meets the minimum background yield and
    /// the maximum relative MC uncertainty of the pipeline's penalties.
    pub fn meets_constraints(&self, pipeline: &Pipeline) -> bool {
        let low_ok = pipeline
            .objective
            .low_background
            .is_none_or(|(t, _)| self.categories.iter().all(|c| c.background >= t));
        let mc_ok = pipeline.objective.mc_uncertainty.is_none_or(|(r, _)| {
            self.categories
                .iter()
                .all(|c| c.relative_mc_uncertainty.is_some_and(|u| u <= r))
        });
        low_ok && mc_ok
    }
}

/// Evaluates `assign` (one category per event, each < `k`).
///
/// `factors` (one per category) scale the yields, and their squares the
/// Σw², of the background processes named in
/// `objective.background_reweight`; `None` scales nothing.
pub fn evaluate(
    pipeline: &Pipeline,
    events: &Events,
    assign: &[u32],
    k: usize,
    edges: Option<&[f64]>,
    factors: Option<&[f64]>,
) -> CategoryTable {
    let mut yields = CategoryYields::new(pipeline, k);
    yields.add(events, assign);
    yields.table(pipeline, edges, factors)
}

/// The sums behind a [`CategoryTable`], added up chunk by chunk.
#[derive(Debug, Clone)]
pub struct CategoryYields {
    k: usize,
    /// Σw per process and category.
    yields: Vec<Vec<f64>>,
    /// Background Σw² per category, of processes without reweighting.
    sumw2: Vec<f64>,
    /// Σw² per category of each reweighted background process.
    scaled_sumw2: Vec<Option<Vec<f64>>>,
    counts: Vec<usize>,
    background_counts: Vec<usize>,
    background: Vec<bool>,
}

impl CategoryYields {
    /// Starts empty sums over `k` categories.
    pub fn new(pipeline: &Pipeline, k: usize) -> CategoryYields {
        let n = pipeline.processes.len();
        let scaled = |p: usize| {
            pipeline.objective.reweight.as_ref().is_some_and(|r| r.scaled[p])
        };
        CategoryYields {
            k,
            yields: vec![vec![0.0; k]; n],
            sumw2: vec![0.0; k],
            scaled_sumw2: (0..n).map(|p| scaled(p).then(|| vec![0.0; k])).collect(),
            counts: vec![0; k],
            background_counts: vec![0; k],
            background: pipeline
                .processes
                .iter()
                .map(|p| p.role == Role::Background)
                .collect(),
        }
    }

    /// Adds `events` in the categories `assign` (one per event, each < k).
    pub fn add(&mut self, events: &Events, assign: &[u32]) {
        for (p, range) in events.process_ranges.iter().enumerate() {
            let background = self.background[p];
            for i in range.clone() {
                let c = assign[i] as usize;
                let w = events.weight[i];
                let w2 = events.weight2.as_ref().map_or(w * w, |w2| w2[i]);
                let n = events.count.as_ref().map_or(1, |n| n[i] as usize);
                self.yields[p][c] += w;
                self.counts[c] += n;
                if background {
                    match self.scaled_sumw2[p].as_mut() {
                        Some(process) => process[c] += w2,
                        None => self.sumw2[c] += w2,
                    }
                    self.background_counts[c] += n;
                }
            }
        }
    }

    /// Builds the table. `factors` (one per category) scale the yields, and
    /// their squares the Σw², of the background processes named in
    /// `objective.background_reweight`, and `None` scales nothing.
    pub fn table(
        &self,
        pipeline: &Pipeline,
        edges: Option<&[f64]>,
        factors: Option<&[f64]>,
    ) -> CategoryTable {
        let k = self.k;
        let mut yields = self.yields.clone();
        let mut sumw2 = self.sumw2.clone();
        for (p, process) in self.scaled_sumw2.iter().enumerate() {
            let Some(process) = process else { continue };
            for c in 0..k {
                let f = factors.map_or(1.0, |f| f[c]);
                yields[p][c] *= f;
                sumw2[c] += process[c] * f * f;
            }
        }
        let signals = pipeline.signal_indices();
        let backgrounds = pipeline.background_indices();
        let mut table = table_from_yields(
            &pipeline.objective,
            &yields,
            &sumw2,
            &self.counts,
            &signals,
            &backgrounds,
            edges,
        );
        for (row, &n) in table.categories.iter_mut().zip(&self.background_counts) {
            row.background_events = n;
            row.background_factor = factors.map(|f| f[row.category]);
        }
        let name = |p: &usize| pipeline.processes[*p].name.clone();
        table.signal_processes = signals.iter().map(name).collect();
        table.background_processes = backgrounds.iter().map(name).collect();
        table
    }
}

/// Builds the table from per-process yields [process][category].
fn table_from_yields(
    objective: &ObjectiveSpec,
    yields: &[Vec<f64>],
    sumw2: &[f64],
    counts: &[usize],
    signals: &[usize],
    backgrounds: &[usize],
    edges: Option<&[f64]>,
) -> CategoryTable {
    let k = sumw2.len();
    let mut rows = Vec::with_capacity(k);
    for c in 0..k {
        let signal: Vec<f64> = signals.iter().map(|&p| yields[p][c]).collect();
        let background_by_process: Vec<f64> =
            backgrounds.iter().map(|&p| yields[p][c]).collect();
        let background: f64 = background_by_process.iter().sum();
        let total_signal: f64 = signal.iter().sum();
        let z = signal
            .iter()
            .map(|&s| {
                category_z(objective.significance, s, background + total_signal - s)
            })
            .collect();
        rows.push(CategoryRow {
            category: c,
            lower: edges.map(|e| e[c]),
            upper: edges.map(|e| e[c + 1]),
            cell: None,
            background_factor: None,
            events: counts[c],
            background_events: 0,
            signal,
            background,
            background_by_process,
            background_sumw2: sumw2[c],
            relative_mc_uncertainty: (background > 0.0)
                .then(|| sumw2[c].sqrt() / background),
            z,
        });
    }
    let z_per_signal: Vec<f64> = (0..signals.len())
        .map(|i| combine(&rows.iter().map(|r| r.z[i]).collect::<Vec<_>>()))
        .collect();
    let z = combine_signals(objective, &z_per_signal);
    let nonpositive_background = rows.iter().filter(|r| r.background <= 0.0).count();
    // Rank: the largest share of one signal's Σ_k Z_k² that the category
    // falls in it, so a category made for one signal ranks by that signal.
    let share: Vec<f64> = rows
        .iter()
        .map(|r| {
            r.z.iter()
                .zip(&z_per_signal)
                .map(
                    |(z, total)| if *total > 0.0 { z * z / (total * total) } else { 0.0 },
                )
                .fold(0.0, f64::max)
        })
        .collect();
    let mut by_significance: Vec<usize> = (0..k).collect();
    by_significance.sort_by(|&a, &b| share[b].total_cmp(&share[a]).then(a.cmp(&b)));
    CategoryTable {
        categories: rows,
        z_per_signal,
        z,
        nonpositive_background,
        by_significance,
        signal_processes: Vec::new(),
        background_processes: Vec::new(),
    }
}

/// Combines per-signal significances by the objective's rule; a single
/// signal gives its own value.
pub fn combine_signals(objective: &ObjectiveSpec, values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() == 1 {
        return values[0];
    }
    match objective.combine {
        CombineRule::Geometric if values.iter().any(|&v| v <= 0.0) => 0.0,
        CombineRule::Geometric => (values.iter().map(|v| v.ln()).sum::<f64>() / n).exp(),
        CombineRule::Arithmetic => values.iter().sum::<f64>() / n,
        CombineRule::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
        CombineRule::Quadrature => values
            .iter()
            .zip(&objective.signal_weights)
            .map(|(z, w)| w * z * z)
            .sum::<f64>()
            .sqrt(),
    }
}

/// Category edges of `k` equal bins on `[low, high]`.
pub fn equidistant_edges(k: usize, low: f64, high: f64) -> Vec<f64> {
    (0..=k).map(|i| low + (high - low) * i as f64 / k as f64).collect()
}

/// The best K contiguous groups of a fine histogram.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DpOptimum {
    /// Bins of the histogram.
    pub bins: usize,
    /// Category edges, K + 1 values from low to high.
    pub edges: Vec<f64>,
    /// Combined significance of the optimum.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub z: f64,
}

/// Finds the K contiguous groups of a `bins`-bin histogram of the single
/// discriminant on `[low, high]` that maximise Σ Z², by dynamic
/// programming in O(K·bins²).
///
/// Events outside the range count in the first or last bin. A group is
/// allowed only if its background yield is positive (or, with
/// `evaluation.dp_allow_zero_background`, any; such groups score Z = 0)
/// and, when the pipeline has a low-background penalty, at least its
/// threshold. Returns `None` for
/// several signals or discriminants, or when no allowed partition exists.
pub fn dp_optimum(
    pipeline: &Pipeline,
    events: &Events,
    k: usize,
    bins: usize,
) -> Option<DpOptimum> {
    let signals = pipeline.signal_indices();
    if signals.len() != 1 || events.discriminants.len() != 1 {
        return None;
    }
    let mut histogram = DpHistogram::new(bins);
    histogram.add(pipeline, events);
    histogram.optimum(pipeline, k)
}

/// Signal and background Σw in the fine bins of [`dp_optimum`], added up
/// chunk by chunk.
#[derive(Debug, Clone)]
pub struct DpHistogram {
    s: Vec<f64>,
    b: Vec<f64>,
}

impl DpHistogram {
    /// Creates `bins` empty bins on the model range of the single discriminant.
    pub fn new(bins: usize) -> DpHistogram {
        DpHistogram { s: vec![0.0; bins], b: vec![0.0; bins] }
    }

    /// Adds a chunk of events of one discriminant.
    pub fn add(&mut self, pipeline: &Pipeline, events: &Events) {
        let (low, high) = pipeline.model.ranges[0];
        let bins = self.s.len();
        for (p, range) in events.process_ranges.iter().enumerate() {
            let is_signal = pipeline.processes[p].role == Role::Signal;
            for i in range.clone() {
                let x = events.discriminants[0][i];
                let bin = (((x - low) / (high - low)) * bins as f64)
                    .floor()
                    .clamp(0.0, (bins - 1) as f64) as usize;
                if is_signal {
                    self.s[bin] += events.weight[i];
                } else {
                    self.b[bin] += events.weight[i];
                }
            }
        }
    }

    /// Finds the best partition into `k` groups of bins, as [`dp_optimum`].
    pub fn optimum(&self, pipeline: &Pipeline, k: usize) -> Option<DpOptimum> {
    if pipeline.signal_indices().len() != 1 || pipeline.model.ranges.len() != 1 {
        return None;
    }
    let (low, high) = pipeline.model.ranges[0];
    let bins = self.s.len();
    let (s, b) = (&self.s, &self.b);
    let prefix = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; v.len() + 1];
        for i in 0..v.len() {
            out[i + 1] = out[i] + v[i];
        }
        out
    };
    let (cs, cb) = (prefix(&s), prefix(&b));
    let min_background = pipeline.objective.low_background.map_or(0.0, |(t, _)| t);
    let kind = pipeline.objective.significance;
    let allow_zero = pipeline.evaluation.dp_allow_zero_background;
    let group = |i: usize, j: usize| -> Option<f64> {
        let bg = cb[j] - cb[i];
        if bg < min_background || (bg <= 0.0 && !allow_zero) {
            return None;
        }
        let z = category_z(kind, cs[j] - cs[i], bg);
        Some(z * z)
    };
    // best[c][j]: max Σ Z² of c groups covering bins [0, j).
    let mut best = vec![vec![f64::NEG_INFINITY; bins + 1]; k + 1];
    let mut split = vec![vec![0usize; bins + 1]; k + 1];
    best[0][0] = 0.0;
    for c in 1..=k {
        for j in c..=bins {
            for i in (c - 1)..j {
                if best[c - 1][i] == f64::NEG_INFINITY {
                    continue;
                }
                if let Some(z2) = group(i, j) {
                    let value = best[c - 1][i] + z2;
                    if value > best[c][j] {
                        best[c][j] = value;
                        split[c][j] = i;
                    }
                }
            }
        }
    }
    if best[k][bins] == f64::NEG_INFINITY {
        return None;
    }
    let mut cuts = vec![bins];
    let mut j = bins;
    for c in (1..=k).rev() {
        j = split[c][j];
        cuts.push(j);
    }
    cuts.reverse();
    let edges =
        cuts.iter().map(|&i| low + (high - low) * i as f64 / bins as f64).collect();
    Some(DpOptimum { bins, edges, z: best[k][bins].sqrt() })
}
}

/// The argmax baseline of a softmax classifier.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ArgmaxBaseline {
    /// Lower edge of the bins of each signal's score.
    pub low: f64,
    /// √(Σ_k Z_k²) of each signal in its own categories.
    #[serde(deserialize_with = "crate::report::numbers_or_nan")]
    pub z_per_signal: Vec<f64>,
    /// Their combination by the objective's rule.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub z: f64,
}

/// Evaluates the argmax baseline with K bins per signal.
///
/// Discriminant i is read as the softmax score of signal i (signals in the
/// order of the processes) and the background score as 1 − Σ_i score_i.
/// For signal i, the events whose largest score is score_i are split into
/// K equal bins of score_i on `[low, 1]`, with the top edge closed. There,
/// signal i counts as signal and everything else as background. Events of
/// other argmax classes do not enter signal i's significance. With
/// `objective.sideband_fit`, only events inside the mass window count.
pub fn argmax_baseline(
    pipeline: &Pipeline,
    events: &Events,
    k: usize,
    low: f64,
) -> ArgmaxBaseline {
    let mut yields = ArgmaxYields::new(pipeline, k, low);
    yields.add(pipeline, events);
    yields.baseline(pipeline)
}

/// The yields behind an [`ArgmaxBaseline`], added up chunk by chunk.
#[derive(Debug, Clone)]
pub struct ArgmaxYields {
    low: f64,
    k: usize,
    /// Σw of signal i in bin b of its own class, [i][b].
    signal_yield: Vec<Vec<f64>>,
    /// Σw of everything else in those bins.
    other_yield: Vec<Vec<f64>>,
}

impl ArgmaxYields {
    /// Empty yields with `k` bins per signal on `[low, 1]`.
    pub fn new(pipeline: &Pipeline, k: usize, low: f64) -> ArgmaxYields {
        let n = pipeline.signal_indices().len();
        ArgmaxYields {
            low,
            k,
            signal_yield: vec![vec![0.0; k]; n],
            other_yield: vec![vec![0.0; k]; n],
        }
    }

    /// Adds a chunk of events.
    pub fn add(&mut self, pipeline: &Pipeline, events: &Events) {
    let (low, k) = (self.low, self.k);
    let signals = pipeline.signal_indices();
    let n = signals.len();
    // In a resonance search, only events inside the mass window count.
    let window = pipeline.objective.sideband.as_ref().map(|s| s.window);
    let outside = |e: usize| match (window, events.mass.as_ref()) {
        (Some((lo, hi)), Some(mass)) => !(lo..=hi).contains(&mass[e]),
        _ => false,
    };
    for (p, range) in events.process_ranges.iter().enumerate() {
        let own = signals.iter().position(|&s| s == p);
        for e in range.clone() {
            if outside(e) {
                continue;
            }
            let scores: Vec<f64> = events.discriminants.iter().map(|d| d[e]).collect();
            let background_score = 1.0 - scores.iter().sum::<f64>();
            let (class, top) = scores.iter().copied().enumerate().fold(
                (n, background_score),
                |best, (i, v)| if v > best.1 { (i, v) } else { best },
            );
            if class == n || top < low {
                continue;
            }
            let bin = (((top - low) / (1.0 - low)) * k as f64).floor().min((k - 1) as f64)
                as usize;
            if own == Some(class) {
                self.signal_yield[class][bin] += events.weight[e];
            } else {
                self.other_yield[class][bin] += events.weight[e];
            }
        }
    }
    }

    /// Computes the baseline from the yields added so far.
    pub fn baseline(&self, pipeline: &Pipeline) -> ArgmaxBaseline {
    let (low, k) = (self.low, self.k);
    let n = self.signal_yield.len();
    let (signal_yield, other_yield) = (&self.signal_yield, &self.other_yield);
    let kind = pipeline.objective.significance;
    let z_per_signal: Vec<f64> = (0..n)
        .map(|i| {
            let zs: Vec<f64> = (0..k)
                .map(|b| category_z(kind, signal_yield[i][b], other_yield[i][b]))
                .collect();
            combine(&zs)
        })
        .collect();
    let z = combine_signals(&pipeline.objective, &z_per_signal);
    ArgmaxBaseline { low, z_per_signal, z }
}
}
