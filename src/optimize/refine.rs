//! Exact refinement of 1D cuts: moves one boundary at a time to the
//! position between two neighbouring events that maximises the exact hard
//! significance, until no move helps.
//!
//! Gradient descent on the soft significance ends near, but rarely exactly
//! at, the best hard cuts, because the sigmoids are never infinitely steep.
//! This coordinate search on the hard objective closes that gap. Each move
//! costs O(events in the two affected categories) with prefix sums over
//! the events sorted by discriminant.

use crate::config::{Pipeline, Role, SignificanceKind};
use crate::select::Events;
use crate::significance::category_z;

/// Largest number of sweeps over all boundaries.
const MAX_SWEEPS: usize = 20;

/// Events sorted by their single discriminant, with prefix sums of signal
/// and background weights.
pub struct SortedEvents {
    x: Vec<f64>,
    signal: Vec<f64>,
    background: Vec<f64>,
    kind: SignificanceKind,
    min_background: f64,
}

impl SortedEvents {
    /// Sorts the events; `None` unless there is one discriminant and one
    /// signal process.
    pub fn new(pipeline: &Pipeline, events: &Events) -> Option<SortedEvents> {
        if events.discriminants.len() != 1 {
            return None;
        }
        let order: Vec<(f64, f64, bool)> = events
            .process_ranges
            .iter()
            .enumerate()
            .flat_map(|(p, range)| {
                let is_signal = pipeline.processes[p].role == Role::Signal;
                range.clone().map(move |i| (i, is_signal))
            })
            .map(|(i, is_signal)| {
                (events.discriminants[0][i], events.weight[i], is_signal)
            })
            .collect();
        SortedEvents::from_entries(pipeline, order)
    }

    /// Sorts entries of (value, weight, is signal); `None` unless the
    /// pipeline has one signal process.
    pub fn from_entries(
        pipeline: &Pipeline,
        mut order: Vec<(f64, f64, bool)>,
    ) -> Option<SortedEvents> {
        if pipeline.signal_indices().len() != 1 {
            return None;
        }
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = order.len();
        let mut sorted = SortedEvents {
            x: Vec::with_capacity(n),
            signal: vec![0.0; n + 1],
            background: vec![0.0; n + 1],
            kind: pipeline.objective.significance,
            min_background: pipeline.objective.low_background.map_or(0.0, |(t, _)| t),
        };
        for (i, (x, w, is_signal)) in order.into_iter().enumerate() {
            sorted.x.push(x);
            sorted.signal[i + 1] = sorted.signal[i] + if is_signal { w } else { 0.0 };
            sorted.background[i + 1] =
                sorted.background[i] + if is_signal { 0.0 } else { w };
        }
        Some(sorted)
    }

    /// Index of the first event with x ≥ cut.
    fn index_of(&self, cut: f64) -> usize {
        self.x.partition_point(|&x| x < cut)
    }

    /// Z² of the events [i, j), or `None` where the group breaks the
    /// minimum-background constraint.
    fn group_z2(&self, i: usize, j: usize) -> Option<f64> {
        let b = self.background[j] - self.background[i];
        if self.min_background > 0.0 && b < self.min_background {
            return None;
        }
        let z = category_z(self.kind, self.signal[j] - self.signal[i], b);
        Some(z * z)
    }

    /// Refines ascending `cuts` in place and returns the combined Z of the
    /// result. Every cut ends at the midpoint between two distinct event
    /// values, strictly inside `(low, high)`, unless no such midpoint keeps
    /// its split.
    pub fn refine(&self, cuts: &mut [f64], low: f64, high: f64) -> f64 {
        self.refine_within(cuts, low, high, None)
    }

    /// Refines as [`SortedEvents::refine`] does, with each cut kept within
    /// its range of `bounds` (inclusive), when given.
    pub fn refine_within(
        &self,
        cuts: &mut [f64],
        low: f64,
        high: f64,
        bounds: Option<&[(f64, f64)]>,
    ) -> f64 {
        let allowed = |j: usize, cut: f64| {
            cut > low
                && cut < high
                && bounds.is_none_or(|b| b[j].0 <= cut && cut <= b[j].1)
        };
        let n = self.x.len();
        let mut edges: Vec<usize> = std::iter::once(0)
            .chain(cuts.iter().map(|&c| self.index_of(c)))
            .chain(std::iter::once(n))
            .collect();
        for _ in 0..MAX_SWEEPS {
            let mut moved = false;
            for j in 1..edges.len() - 1 {
                let (left, right) = (edges[j - 1], edges[j + 1]);
                let current = self.pair_z2(left, edges[j], right);
                let mut best = (current.unwrap_or(f64::NEG_INFINITY), edges[j]);
                for split in left + 1..right {
                    if self.x[split] == self.x[split - 1] {
                        continue;
                    }
                    let cut = 0.5 * (self.x[split - 1] + self.x[split]);
                    // Adjacent floats can round the midpoint onto the lower value.
                    if !(cut > self.x[split - 1] && allowed(j - 1, cut)) {
                        continue;
                    }
                    if let Some(z2) = self.pair_z2(left, split, right) {
                        if z2 > best.0 * (1.0 + 1e-12) {
                            best = (z2, split);
                        }
                    }
                }
                if best.1 != edges[j] {
                    edges[j] = best.1;
                    cuts[j - 1] = 0.5 * (self.x[best.1 - 1] + self.x[best.1]);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        // A cut that never moved goes to the midpoint of its two events too,
        // so equal splits give equal cuts whatever the starting point.
        for (j, cut) in cuts.iter_mut().enumerate() {
            let split = edges[j + 1];
            if split == 0 || split == n || self.x[split] == self.x[split - 1] {
                continue;
            }
            let middle = 0.5 * (self.x[split - 1] + self.x[split]);
            if middle > self.x[split - 1] && allowed(j, middle) {
                *cut = middle;
            }
        }
        let z2: f64 =
            edges.windows(2).map(|w| self.group_z2(w[0], w[1]).unwrap_or(0.0)).sum();
        z2.sqrt()
    }

    fn pair_z2(&self, left: usize, split: usize, right: usize) -> Option<f64> {
        Some(self.group_z2(left, split)? + self.group_z2(split, right)?)
    }
}
