//! Binned distributions of the selected events, written as
//! `histograms.json` so that `gato report` can redraw the plots without
//! reading the events again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Pipeline, Role};
use crate::error::{Error, Result};
use crate::select::Events;
use crate::store::EventSet;

/// Layout version of `histograms.json`.
pub const HISTOGRAMS_VERSION: u32 = 1;

/// The binned events of a run, per process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Histograms {
    /// Layout version, [`HISTOGRAMS_VERSION`].
    pub version: u32,
    /// Process names, in the order of the pipeline.
    pub processes: Vec<String>,
    /// `signal` or `background`, per process.
    pub roles: Vec<String>,
    /// One histogram per discriminant, on the model's range.
    pub discriminants: Vec<Histogram>,
    /// The events on the plane of the two discriminants (two-discriminant
    /// pipelines only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plane: Option<PlaneHistogram>,
    /// The `selection.mass` column, on the sideband fit's range or the
    /// column's own range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass: Option<Histogram>,
}

/// A histogram of one column per process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Histogram {
    /// Column name.
    pub column: String,
    /// Unit of the column, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Bin edges, ascending; values outside count in the first or last bin.
    pub edges: Vec<f64>,
    /// Σw per process and bin.
    pub sumw: Vec<Vec<f64>>,
    /// Σw² per process and bin.
    pub sumw2: Vec<Vec<f64>>,
}

/// Σw of signal and background on a grid of two discriminants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaneHistogram {
    /// Horizontal and vertical columns.
    pub columns: [String; 2],
    /// Bin edges of each axis.
    pub edges: [Vec<f64>; 2],
    /// Background Σw, row-major with the horizontal bin fastest.
    pub background: Vec<f64>,
    /// Signal Σw, same layout.
    pub signal: Vec<f64>,
}

/// Index of the bin of `x` among `bins` equal bins on `[lo, hi]`, with
/// values outside in the first or last bin.
fn bin_of(x: f64, lo: f64, hi: f64, bins: usize) -> usize {
    let t = ((x - lo) / (hi - lo) * bins as f64).floor();
    if t.is_nan() || t < 0.0 { 0 } else { (t as usize).min(bins - 1) }
}

fn equal_edges(lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    (0..=bins).map(|b| lo + (hi - lo) * b as f64 / bins as f64).collect()
}

/// Creates an empty histogram of one column with one row per process.
fn empty_histogram(
    processes: usize,
    column: &str,
    unit: Option<&str>,
    (lo, hi): (f64, f64),
    bins: usize,
) -> Histogram {
    Histogram {
        column: column.to_string(),
        unit: unit.map(str::to_string),
        edges: equal_edges(lo, hi, bins),
        sumw: vec![vec![0.0; bins]; processes],
        sumw2: vec![vec![0.0; bins]; processes],
    }
}

impl Histogram {
    /// Adds `values` of a chunk of events.
    fn add(&mut self, events: &Events, values: &[f64]) {
        let bins = self.edges.len() - 1;
        let (lo, hi) = (self.edges[0], self.edges[bins]);
        for (p, range) in events.process_ranges.iter().enumerate() {
            for i in range.clone() {
                let b = bin_of(values[i], lo, hi, bins);
                let w = events.weight[i];
                self.sumw[p][b] += w;
                self.sumw2[p][b] += w * w;
            }
        }
    }
}

impl Histograms {
    /// Bins the selected events with `report.bins` bins per axis.
    pub fn new(pipeline: &Pipeline, events: &EventSet) -> Result<Histograms> {
        let bins = pipeline.report.bins;
        let processes = pipeline.processes.len();
        // The mass axis spans the sideband fit's range or the column's own.
        let mut mass_range = None;
        if events.has_mass() {
            mass_range = match &pipeline.objective.sideband {
                Some(spec) => Some(spec.range),
                None => {
                    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                    events.for_each_chunk(|chunk| {
                        for &m in chunk.mass.iter().flatten().filter(|m| m.is_finite()) {
                            lo = lo.min(m);
                            hi = hi.max(m);
                        }
                        Ok(())
                    })?;
                    (lo < hi).then_some((lo, hi))
                }
            };
        }
        let mut discriminants: Vec<Histogram> = pipeline
            .selection
            .discriminants
            .iter()
            .zip(&pipeline.model.ranges)
            .map(|(name, &range)| empty_histogram(processes, name, None, range, bins))
            .collect();
        let mut plane = (pipeline.model.ranges.len() == 2).then(|| {
            let [(x0, x1), (y0, y1)] =
                [pipeline.model.ranges[0], pipeline.model.ranges[1]];
            PlaneHistogram {
                columns: [
                    pipeline.selection.discriminants[0].clone(),
                    pipeline.selection.discriminants[1].clone(),
                ],
                edges: [equal_edges(x0, x1, bins), equal_edges(y0, y1, bins)],
                background: vec![0.0; bins * bins],
                signal: vec![0.0; bins * bins],
            }
        });
        let mut mass = mass_range.map(|range| {
            let column = pipeline.selection.mass.as_deref().unwrap_or("mass");
            empty_histogram(processes, column, Some("GeV"), range, bins)
        });
        events.for_each_chunk(|chunk| {
            for (histogram, values) in discriminants.iter_mut().zip(&chunk.discriminants) {
                histogram.add(chunk, values);
            }
            if let (Some(mass), Some(values)) = (mass.as_mut(), chunk.mass.as_ref()) {
                mass.add(chunk, values);
            }
            if let Some(plane) = plane.as_mut() {
                let [(x0, x1), (y0, y1)] =
                    [pipeline.model.ranges[0], pipeline.model.ranges[1]];
                for (p, range) in chunk.process_ranges.iter().enumerate() {
                    let target = match pipeline.processes[p].role {
                        Role::Signal => &mut plane.signal,
                        Role::Background => &mut plane.background,
                    };
                    for i in range.clone() {
                        let bx = bin_of(chunk.discriminants[0][i], x0, x1, bins);
                        let by = bin_of(chunk.discriminants[1][i], y0, y1, bins);
                        target[by * bins + bx] += chunk.weight[i];
                    }
                }
            }
            Ok(())
        })?;
        Ok(Histograms {
            version: HISTOGRAMS_VERSION,
            processes: pipeline.processes.iter().map(|p| p.name.clone()).collect(),
            roles: pipeline
                .processes
                .iter()
                .map(|p| match p.role {
                    Role::Signal => "signal".to_string(),
                    Role::Background => "background".to_string(),
                })
                .collect(),
            discriminants,
            plane,
            mass,
        })
    }

    /// Writes the histograms as JSON to `path`, through a temporary file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(self)
            .map_err(|e| Error::Internal(format!("serialising histograms: {e}")))?;
        crate::atomic::write(path, json.as_bytes())
    }

    /// Reads `histograms.json` from `path`.
    pub fn read(path: &Path) -> Result<Histograms> {
        let text = crate::report::read_output(path)?;
        let histograms: Histograms = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not a gato histogram file: {e}")))?;
        if histograms.version != HISTOGRAMS_VERSION {
            return Err(Error::input(
                path,
                format!(
                    "version {} is not {HISTOGRAMS_VERSION}; rerun the pipeline with this \
                     gato to rewrite it",
                    histograms.version
                ),
            ));
        }
        histograms.check().map_err(|e| {
            Error::input(path, format!("{e}; rerun the pipeline to rewrite it"))
        })?;
        Ok(histograms)
    }

    /// Checks that every list has the length the processes and bins call
    /// for.
    fn check(&self) -> std::result::Result<(), String> {
        let processes = self.processes.len();
        if self.roles.len() != processes {
            return Err(format!("{} roles for {processes} processes", self.roles.len()));
        }
        if let Some(role) =
            self.roles.iter().find(|r| *r != "signal" && *r != "background")
        {
            return Err(format!("unknown role `{role}`"));
        }
        let histograms = self.discriminants.iter().chain(&self.mass);
        for h in histograms {
            let bins = h.edges.len().saturating_sub(1);
            if bins == 0 || !h.edges.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("`{}` has no increasing bin edges", h.column));
            }
            for (name, lists) in [("sumw", &h.sumw), ("sumw2", &h.sumw2)] {
                if lists.len() != processes || lists.iter().any(|l| l.len() != bins) {
                    return Err(format!(
                        "`{}` {name} must have {processes} lists of {bins} bins",
                        h.column
                    ));
                }
            }
        }
        if let Some(plane) = &self.plane {
            let cells =
                plane.edges.iter().map(|e| e.len().saturating_sub(1)).product::<usize>();
            if cells == 0
                || plane.background.len() != cells
                || plane.signal.len() != cells
            {
                return Err(format!("the plane must have {cells} cells per role"));
            }
        }
        Ok(())
    }

    /// Indices of the processes with role `role`.
    pub fn indices(&self, role: &str) -> Vec<usize> {
        (0..self.roles.len()).filter(|&i| self.roles[i] == role).collect()
    }
}
