//! Property tests of the significance formulas and the DP optimum.

use gato::config::{Pipeline, SignificanceKind};
use gato::evaluate::dp_optimum;
use gato::select::Events;
use gato::significance::{asimov, asimov_gato, category_z};
use proptest::prelude::*;

proptest! {
    #[test]
    fn significance_non_negative(s in 1e-6f64..1e4, b in 1e-6f64..1e6) {
        prop_assert!(asimov(s, b) >= 0.0);
        prop_assert!(asimov_gato(s, b) >= 0.0);
    }

    #[test]
    fn asimov_grows_with_signal(s in 1e-6f64..1e4, b in 1e-3f64..1e6, step in 1e-3f64..10.0) {
        prop_assert!(asimov(s * (1.0 + step), b) > asimov(s, b));
    }

    #[test]
    fn asimov_falls_with_background(s in 1e-3f64..1e4, b in 1e-3f64..1e6, step in 1e-3f64..10.0) {
        prop_assert!(asimov(s, b * (1.0 + step)) < asimov(s, b));
    }

    #[test]
    fn asimov_tends_to_s_over_sqrt_b(s in 1e-6f64..1.0, b in 1e3f64..1e7) {
        // Z = (s/√b)·(1 − r/6 + O(r²)) for r = s/b.
        let r = s / b;
        let ratio = asimov(s, b) / (s / b.sqrt());
        prop_assert!((ratio - 1.0).abs() <= r / 6.0 * 1.01 + 1e-12, "r {r}, ratio {ratio}");
    }

    #[test]
    fn formulas_agree_above_ratio_switch(b in 1e-3f64..1e6, r in 0.1f64..100.0) {
        let s = r * b;
        let (exact, gato) = (asimov(s, b), asimov_gato(s, b));
        prop_assert!((exact - gato).abs() <= 1e-9 * exact, "{exact} vs {gato}");
    }

    #[test]
    fn gato_rule_below_switch(b in 1e-3f64..1e6, r in 1e-6f64..0.0999) {
        let s = r * b;
        prop_assert_eq!(asimov_gato(s, b), s / b.sqrt());
    }

    #[test]
    fn dp_beats_every_partition(
        bins in prop::collection::vec((0.0f64..5.0, 0.0f64..50.0), 3..8),
        k in 2usize..4,
    ) {
        prop_assume!(k <= bins.len());
        let pipeline = two_process_pipeline();
        let events = one_event_per_bin(&bins);
        let n = bins.len();
        let best_brute = brute_force(&bins, k, 0, 0.0);
        match dp_optimum(&pipeline, &events, k, n) {
            Some(dp) => {
                let brute = best_brute.expect("DP found a partition, so one exists");
                prop_assert!((dp.z - brute).abs() <= 1e-9 * brute.max(1.0), "DP {} vs brute force {brute}", dp.z);
            }
            None => prop_assert!(best_brute.is_none()),
        }
    }
}

fn two_process_pipeline() -> Pipeline {
    crate::common::pipeline(
        "name: p\nsources:\n  toy:\n    generator: { kind: toy-1d }\n\
         processes:\n  - { name: signal, role: signal, source: toy }\n\
         \x20 - { name: bkg1, role: background, source: toy }\n\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [2]\n",
    )
}

/// Builds one signal and one background event at the centre of each of
/// the n bins on [0, 1], weighted with the bin's (signal, background).
fn one_event_per_bin(bins: &[(f64, f64)]) -> Events {
    let n = bins.len();
    let centre = |i: usize| (i as f64 + 0.5) / n as f64;
    let mut x: Vec<f64> = (0..n).map(centre).collect();
    x.extend((0..n).map(centre));
    let mut weight: Vec<f64> = bins.iter().map(|b| b.0).collect();
    weight.extend(bins.iter().map(|b| b.1));
    Events {
        discriminants: vec![x],
        weight,
        process: [vec![0; n], vec![1; n]].concat(),
        input: vec![0; 2 * n],
        row: (0..2 * n as u64).collect(),
        process_ranges: vec![0..n, n..2 * n],
        mass: None,
        weight2: None,
        count: None,
    }
}

/// Best Σ Z² over partitions of bins[start..] into k contiguous groups,
/// each with positive background; `None` when there is none.
fn brute_force(bins: &[(f64, f64)], k: usize, start: usize, acc: f64) -> Option<f64> {
    let n = bins.len();
    if k == 1 {
        let (s, b) = bins[start..].iter().fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        if b <= 0.0 {
            return None;
        }
        let z = category_z(SignificanceKind::Asimov, s, b);
        return Some((acc + z * z).sqrt());
    }
    let mut best: Option<f64> = None;
    for end in start + 1..=n - (k - 1) {
        let (s, b) =
            bins[start..end].iter().fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        if b <= 0.0 {
            continue;
        }
        let z = category_z(SignificanceKind::Asimov, s, b);
        if let Some(v) = brute_force(bins, k - 1, end, acc + z * z) {
            best = Some(best.map_or(v, |b: f64| b.max(v)));
        }
    }
    best
}
