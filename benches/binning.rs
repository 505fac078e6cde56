//! Time taken to build binned statistics (`training.statistics: binned`) on
//! the host, per event, for one, two and three discriminants with the
//! default number of bins. The events are random, in memory, and sorted by
//! process as the selection returns them, so only the filling is timed.
//!
//! ```text
//! cargo bench --bench binning -- [--events 10000000] [--repeats 3]
//! ```
//!
//! Prints one row per number of discriminants: bins per discriminant,
//! cells, the fastest of the repeats in seconds, nanoseconds and events
//! per second. It also checks that Σw over the cells equals Σw over the
//! events, summed in float64.

use std::hint::black_box;
use std::time::Instant;

use gato::select::Events;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Processes of the 1D toy: one signal and five backgrounds.
const PROCESSES: usize = 6;

fn parse_args() -> (usize, usize) {
    let (mut events, mut repeats) = (10_000_000, 3);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs an integer"))
        };
        match flag.as_str() {
            "--events" => events = value(),
            "--repeats" => repeats = value().max(1),
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    (events, repeats)
}

/// `n` events with `dims` discriminants in [0, 1], split evenly over the
/// processes, with weights between 0.5 and 1.5.
fn random_events(n: usize, dims: usize) -> Events {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut events = Events {
        discriminants: (0..dims)
            .map(|_| (0..n).map(|_| rng.random::<f64>()).collect())
            .collect(),
        weight: (0..n).map(|_| 0.5 + rng.random::<f64>()).collect(),
        ..Events::default()
    };
    let per = n.div_ceil(PROCESSES);
    for p in 0..PROCESSES {
        let range = (p * per).min(n)..((p + 1) * per).min(n);
        events.process.extend(range.clone().map(|_| p as u32));
        events.process_ranges.push(range);
    }
    events.input = vec![0; n];
    events.row = (0..n as u64).collect();
    events
}

fn main() {
    let (n, repeats) = parse_args();
    println!("binned statistics on the host, {n} events, fastest of {repeats}");
    println!("| discriminants | bins | cells | fill [s] | per event [ns] | events/s |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    // The defaults of `training.statistics_bins`.
    for (dims, bins) in [(1, 4000), (2, 300), (3, 60)] {
        let events = random_events(n, dims);
        let ranges = vec![(0.0, 1.0); dims];
        let mut best = f64::INFINITY;
        let mut binned = Events::default();
        for _ in 0..repeats {
            let started = Instant::now();
            binned = black_box(events.binned(&ranges, bins));
            best = best.min(started.elapsed().as_secs_f64());
        }
        let total: f64 = events.weight.iter().sum();
        let in_cells: f64 = binned.weight.iter().sum();
        assert!(
            (total - in_cells).abs() <= 1e-9 * total,
            "Σw of the cells {in_cells} differs from Σw of the events {total}"
        );
        println!(
            "| {dims} | {bins} | {} | {best:.3} | {:.1} | {:.3e} |",
            bins.pow(dims as u32),
            best * 1e9 / n as f64,
            n as f64 / best
        );
    }
}
