//! Exact refinement of 1D cuts on events kept on disk, in bounded memory.
//!
//! In memory, [`SortedEvents::refine`] moves each cut between neighbouring
//! events. On disk the events are first summed into cells: equal bins of
//! the model range, where a bin that contains many events is split into
//! finer bins, a few times over, so that dense regions are resolved too.
//! The cuts are refined between the cells. Then the events in a window of
//! bins around each cut are read one by one, with the rest still in cells,
//! and the cuts are refined again, so that they end between events as in
//! memory.

use std::ops::Range;

use crate::config::{Pipeline, Role};
use crate::error::Result;
use crate::optimize::SortedEvents;
use crate::store::EventSet;

/// Equal bins of the model range that the cells start from.
const START_BINS: usize = 100_000;

/// Largest number of events kept one by one around the cuts, over all cuts.
const WINDOW_EVENTS: usize = 250_000;

/// Largest half-width, in bins, of the window around a cut.
const MAX_WINDOW_BINS: usize = 500;

/// Rounds of exact refinement in windows around the cuts.
const WINDOW_ROUNDS: usize = 6;

/// A bin at a cut, or next to one, is split before the window round when
/// it contains more than this fraction of one cut's window events, so that
/// the window reaches past it.
const CROWDED_FRACTION: usize = 4;

/// Share of all events above which a bin is split.
const DENSE_SHARE: f64 = 1e-3;

/// Number of events that a bin may always contain without being split.
const DENSE_MIN_EVENTS: usize = 1000;

/// Equal parts that a dense bin is split into.
const SPLIT_PARTS: usize = 100;

/// Rounds of splitting. With at most 1000 dense bins per round, the bins
/// stay under 500 000.
const SPLIT_ROUNDS: usize = 4;

/// Bins of one discriminant, given by their ascending edges.
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    edges: Vec<f64>,
}

impl Bins {
    /// Returns `n` equal bins of `lo..hi`.
    pub fn uniform(lo: f64, hi: f64, n: usize) -> Bins {
        let edges = (0..=n)
            .map(|i| if i == n { hi } else { lo + (hi - lo) * (i as f64 / n as f64) })
            .collect();
        Bins { edges }
    }

    /// Number of bins.
    pub fn len(&self) -> usize {
        self.edges.len() - 1
    }

    /// Returns whether there are no bins.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the bin of `x`. Values below the first edge, and NaN, go to
    /// the first bin, and values at or above the last edge to the last.
    pub fn bin(&self, x: f64) -> usize {
        let above = self.edges.partition_point(|&e| e <= x);
        above.saturating_sub(1).min(self.len() - 1)
    }

    /// Returns these bins with each bin of `dense` (ascending) split into
    /// `parts` equal bins. A bin too narrow to split in float64 stays whole.
    pub fn split(&self, dense: &[usize], parts: usize) -> Bins {
        let mut edges = Vec::with_capacity(self.edges.len() + dense.len() * parts);
        let mut dense = dense.iter().copied().peekable();
        for b in 0..self.len() {
            let (start, end) = (self.edges[b], self.edges[b + 1]);
            edges.push(start);
            if dense.next_if_eq(&b).is_some() {
                for i in 1..parts {
                    let edge = start + (end - start) * (i as f64 / parts as f64);
                    if edge > edges[edges.len() - 1] && edge < end {
                        edges.push(edge);
                    }
                }
            }
        }
        edges.push(self.edges[self.len()]);
        Bins { edges }
    }
}

/// Refines ascending `cuts` on the events on disk in place, as described in
/// the module documentation, keeping them strictly inside `(low, high)`.
/// Returns `false`, with the cuts unchanged, where [`SortedEvents`] cannot
/// refine these events.
pub fn refine(
    pipeline: &Pipeline,
    events: &EventSet,
    cuts: &mut [f64],
    low: f64,
    high: f64,
) -> Result<bool> {
    // The search needs one signal, so skip the passes over the events
    // where it cannot run.
    if pipeline.signal_indices().len() != 1 {
        return Ok(false);
    }
    let (lo, hi) = pipeline.model.ranges[0];
    let mut bins = Bins::uniform(lo, hi, START_BINS);
    let dense_limit =
        ((events.len() as f64 * DENSE_SHARE) as usize).max(DENSE_MIN_EVENTS);
    let (mut cells, mut counts) = cells_of(pipeline, events, &bins, &[])?;
    for round in 0..SPLIT_ROUNDS {
        let dense: Vec<usize> =
            (0..counts.len()).filter(|&b| counts[b] > dense_limit).collect();
        let finer = bins.split(&dense, SPLIT_PARTS);
        if finer.len() == bins.len() {
            break;
        }
        tracing::debug!(
            round,
            dense = dense.len(),
            bins = finer.len(),
            "split dense bins"
        );
        bins = finer;
        (cells, counts) = cells_of(pipeline, events, &bins, &[])?;
    }
    if !refine_entries(pipeline, cells, cuts, low, high, None) {
        return Ok(false);
    }
    let crowded_limit = WINDOW_EVENTS / cuts.len().max(1) / CROWDED_FRACTION;
    for round in 0..WINDOW_ROUNDS {
        // Where the cut's bins are too full for a window of several bins,
        // finer bins let the cut move within them first.
        let crowded = crowded_bins(&bins, cuts, &counts, crowded_limit);
        let finer = bins.split(&crowded, SPLIT_PARTS);
        if finer.len() > bins.len() {
            tracing::debug!(
                round,
                crowded = crowded.len(),
                bins = finer.len(),
                "split bins at cuts"
            );
            bins = finer;
            let cells;
            (cells, counts) = cells_of(pipeline, events, &bins, &[])?;
            if !refine_entries(pipeline, cells, cuts, low, high, None) {
                return Ok(false);
            }
        }
        let windows = cut_windows(&bins, cuts, &counts, WINDOW_EVENTS);
        let (mixed, _) = cells_of(pipeline, events, &bins, &windows)?;
        // Within its window a cut falls between events read one by one, or
        // between such an event and a whole bin, so the yields that the
        // search computes are exact. Outside, a cut between two cells would
        // split a bin's events differently from what the cells assume.
        let bounds = window_bounds(&bins, cuts, &windows);
        if !refine_entries(pipeline, mixed, cuts, low, high, Some(&bounds)) {
            return Ok(false);
        }
        let inside = cuts_inside(&bins, cuts, &windows);
        tracing::debug!(round, inside, windows = windows.len(), "refined in windows");
        if inside {
            break;
        }
    }
    Ok(true)
}

/// Refines `cuts` on `entries` of (value, weight, is signal), within
/// `bounds` when given. Returns `false` where [`SortedEvents`] cannot
/// refine them.
fn refine_entries(
    pipeline: &Pipeline,
    entries: Vec<(f64, f64, bool)>,
    cuts: &mut [f64],
    low: f64,
    high: f64,
    bounds: Option<&[(f64, f64)]>,
) -> bool {
    match SortedEvents::from_entries(pipeline, entries) {
        Some(sorted) => {
            sorted.refine_within(cuts, low, high, bounds);
            true
        }
        None => false,
    }
}

/// Returns the events whose bin lies in one of `windows` one by one, and
/// every other event summed into cells of `bins`, one for the signal and
/// one for the background of each filled bin, as (value, weight, is
/// signal), with the number of events in each bin. A cell's value is the
/// mean of its events' values.
fn cells_of(
    pipeline: &Pipeline,
    events: &EventSet,
    bins: &Bins,
    windows: &[Range<usize>],
) -> Result<(Vec<(f64, f64, bool)>, Vec<usize>)> {
    let is_signal: Vec<bool> =
        pipeline.processes.iter().map(|p| p.role == Role::Signal).collect();
    let mut counts = vec![0usize; bins.len()];
    // Per bin and class (background 0, signal 1): Σw, Σx and the count.
    let mut sumw = vec![[0.0f64; 2]; bins.len()];
    let mut sumx = vec![[0.0f64; 2]; bins.len()];
    let mut filled = vec![[0u32; 2]; bins.len()];
    let mut entries: Vec<(f64, f64, bool)> = Vec::new();
    events.for_each_chunk(|chunk| {
        let x = &chunk.discriminants[0];
        for (p, range) in chunk.process_ranges.iter().enumerate() {
            let signal = is_signal[p];
            for i in range.clone() {
                let bin = bins.bin(x[i]);
                counts[bin] += 1;
                if windows.iter().any(|w| w.contains(&bin)) {
                    entries.push((x[i], chunk.weight[i], signal));
                } else {
                    let class = usize::from(signal);
                    sumw[bin][class] += chunk.weight[i];
                    sumx[bin][class] += x[i];
                    filled[bin][class] += 1;
                }
            }
        }
        Ok(())
    })?;
    for bin in 0..bins.len() {
        for class in 0..2 {
            let n = filled[bin][class];
            if n > 0 {
                entries.push((
                    sumx[bin][class] / f64::from(n),
                    sumw[bin][class],
                    class == 1,
                ));
            }
        }
    }
    Ok((entries, counts))
}

/// Bin ranges around each cut, merged where they overlap, for `counts`
/// events in `bins`. Each grows by one bin on either side of its cut at a
/// time, up to [`MAX_WINDOW_BINS`] steps that add events, fewer where the
/// windows would contain more than `max_events` events together. A cut
/// whose own bin contains more than its share gets no window.
fn cut_windows(
    bins: &Bins,
    cuts: &[f64],
    counts: &[usize],
    max_events: usize,
) -> Vec<Range<usize>> {
    let n = counts.len();
    let share = max_events / cuts.len().max(1);
    let mut windows: Vec<Range<usize>> = cuts
        .iter()
        .map(|&cut| bins.bin(cut))
        .filter(|&center| counts[center] <= share)
        .map(|center| {
            let (mut start, mut end) = (center, center + 1);
            let mut window_events = counts[center];
            // Empty bins do not count, so a cut in a gap between events
            // reaches the events on both sides of the gap.
            let mut steps = 0;
            while steps < MAX_WINDOW_BINS && !(start == 0 && end == n) {
                let left = if start > 0 { counts[start - 1] } else { 0 };
                let right = if end < n { counts[end] } else { 0 };
                if window_events + left + right > share {
                    break;
                }
                window_events += left + right;
                start = start.saturating_sub(1);
                end = (end + 1).min(n);
                if left + right > 0 {
                    steps += 1;
                }
            }
            start..end
        })
        .collect();
    windows.sort_by_key(|w| w.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for w in windows {
        match merged.last_mut() {
            Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
            _ => merged.push(w),
        }
    }
    merged
}

/// Returns the bins, ascending, that contain a cut or neighbour a cut's bin
/// and contain more than `limit` events.
fn crowded_bins(bins: &Bins, cuts: &[f64], counts: &[usize], limit: usize) -> Vec<usize> {
    let mut crowded: Vec<usize> = cuts
        .iter()
        .flat_map(|&cut| {
            let bin = bins.bin(cut);
            [bin.checked_sub(1), Some(bin), Some(bin + 1)]
        })
        .flatten()
        .filter(|&b| b < bins.len() && counts[b] > limit)
        .collect();
    crowded.sort_unstable();
    crowded.dedup();
    crowded
}

/// Returns the range of values each cut may take in a window round: its
/// window's, or only its own value where no window contains it.
fn window_bounds(bins: &Bins, cuts: &[f64], windows: &[Range<usize>]) -> Vec<(f64, f64)> {
    cuts.iter()
        .map(|&cut| {
            let bin = bins.bin(cut);
            match windows.iter().find(|w| w.contains(&bin)) {
                Some(w) => (bins.edges[w.start], bins.edges[w.end]),
                None => (cut, cut),
            }
        })
        .collect()
}

/// Returns whether every cut lies inside a window and off the window's two
/// end bins, so that the search around it saw events on both sides. The
/// first and last bin of `bins` count as inside.
fn cuts_inside(bins: &Bins, cuts: &[f64], windows: &[Range<usize>]) -> bool {
    let n = bins.len();
    cuts.iter().all(|&cut| {
        let bin = bins.bin(cut);
        windows.iter().any(|w| {
            let first_ok = w.start == 0 || bin > w.start;
            let last_ok = w.end == n || bin + 1 < w.end;
            w.contains(&bin) && first_ok && last_ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_place_values_by_edges() {
        let bins = Bins::uniform(0.0, 1.0, 4);
        assert_eq!(bins.len(), 4);
        assert_eq!(bins.bin(0.0), 0);
        assert_eq!(bins.bin(0.25), 1);
        assert_eq!(bins.bin(0.9999), 3);
        assert_eq!(bins.bin(1.0), 3, "the upper edge goes to the last bin");
        assert_eq!(bins.bin(-5.0), 0);
        assert_eq!(bins.bin(f64::NAN), 0);
        assert_eq!(bins.bin(f64::INFINITY), 3);
    }

    #[test]
    fn split_refines_dense_bins_only() {
        let bins = Bins::uniform(0.0, 1.0, 4).split(&[1, 3], 4);
        let expected =
            [0.0, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.75, 0.8125, 0.875, 0.9375, 1.0];
        assert_eq!(bins.edges, expected);
        assert_eq!(bins.bin(0.33), 2);
        assert_eq!(bins.bin(0.6), 5);
        // A bin one float wide cannot be split.
        let lo = 0.5f64;
        let narrow = Bins { edges: vec![lo, lo.next_up()] };
        assert_eq!(narrow.split(&[0], 10), narrow);
    }

    #[test]
    fn windows_span_half_width_when_sparse() {
        // One event per bin: each window reaches MAX_WINDOW_BINS = 500 bins
        // on either side of its cut's bin (2500 and 7500).
        let bins = Bins::uniform(0.0, 1.0, 10_000);
        let counts = vec![1; 10_000];
        let windows = cut_windows(&bins, &[0.25005, 0.75005], &counts, 250_000);
        assert_eq!(windows, vec![2000..3001, 7000..8001]);
    }

    #[test]
    fn windows_share_events_when_dense() {
        // 100 events per bin and 10 000 events for two cuts: 5000 each. The
        // cut's bin contains 100 and each step adds 200, so 24 steps (4900).
        let bins = Bins::uniform(0.0, 1.0, 10_000);
        let counts = vec![100; 10_000];
        let windows = cut_windows(&bins, &[0.25005, 0.75005], &counts, 10_000);
        assert_eq!(windows, vec![2476..2525, 7476..7525]);
        // A bin with more than the share of one cut gets no window.
        let mut crowded = counts.clone();
        crowded[2500] = 6000;
        let windows = cut_windows(&bins, &[0.25005, 0.75005], &crowded, 10_000);
        assert_eq!(windows, vec![7476..7525]);
    }

    #[test]
    fn windows_merge_and_stop_at_range_edge() {
        let bins = Bins::uniform(0.0, 1.0, 10_000);
        let counts = vec![1; 10_000];
        // Cuts in bins 2500 and 2505: 2000..3001 and 2005..3006 overlap.
        let merged = cut_windows(&bins, &[0.25005, 0.25055], &counts, 250_000);
        assert_eq!(merged, vec![2000..3006]);
        // A cut in bin 1 cannot grow to the left of bin 0.
        let edge = cut_windows(&bins, &[0.00015], &counts, 250_000);
        assert_eq!(edge, vec![0..502]);
    }

    #[test]
    fn windows_cross_empty_bins() {
        // One event in each of bins 0..10 and 90..100: the window of a cut
        // in bin 50 crosses the empty bins until it contains 5 events, as
        // the next step would pass the 6 allowed (bins 8, 9 and 90..93).
        let bins = Bins::uniform(0.0, 1.0, 100);
        let counts: Vec<usize> =
            (0..100).map(|b| if b < 10 || b >= 90 { 1 } else { 0 }).collect();
        let windows = cut_windows(&bins, &[0.505], &counts, 6);
        assert_eq!(windows, vec![8..93]);
    }

    #[test]
    fn crowded_bins_are_those_at_cuts() {
        let bins = Bins::uniform(0.0, 1.0, 10);
        let counts = [50, 50, 5, 50, 50, 50, 50, 50, 50, 50];
        // Cuts in bins 1 and 9: bins 0, 1 and 8, 9 have more than 10 events,
        // bin 2 does not.
        assert_eq!(crowded_bins(&bins, &[0.15, 0.95], &counts, 10), vec![0, 1, 8, 9]);
        // Two cuts in one bin name it once.
        assert_eq!(crowded_bins(&bins, &[0.51, 0.52], &counts, 10), vec![4, 5, 6]);
        assert!(crowded_bins(&bins, &[0.51], &counts, 50).is_empty());
    }

    #[test]
    fn cuts_inside_needs_both_neighbours() {
        let bins = Bins::uniform(0.0, 1.0, 10_000);
        let windows = [2000..3001];
        let inside = |cut: f64| cuts_inside(&bins, &[cut], &windows);
        assert!(inside(0.25005), "bin 2500, in the middle");
        assert!(!inside(0.20005), "bin 2000, the first bin of the window");
        assert!(!inside(0.30005), "bin 3000, the last bin of the window");
        assert!(!inside(0.30015), "bin 3001, outside the window");
        // The first bin of the whole range has nothing on its left to see.
        assert!(cuts_inside(&bins, &[0.00005], &[0..502]));
    }
}
