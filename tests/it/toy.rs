//! The toy generators: yields, event counts, and agreement of the score
//! distributions with gato-hep's reference samples.
//!
//! The score distributions are compared per process with the two-sample
//! Kolmogorov–Smirnov statistic D. The test requires D below the critical
//! value at α = 0.001, c·√((n + m)/(n·m)) with c = 1.949, so a correct
//! generator fails it about once in a thousand seeds.

use std::collections::BTreeMap;

use gato::config::GeneratorKind;
use gato::datafusion::arrow::array::{Array, Float64Array, StringArray};
use gato::datafusion::arrow::record_batch::RecordBatch;
use gato::toy::{ToySpec, generate};

use crate::common::{read_parquet, reference};

/// Score columns per process.
fn scores_by_process(
    batches: &[RecordBatch],
    column: &str,
) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for batch in batches {
        let process = batch.column_by_name("process").unwrap();
        let process = process.as_any().downcast_ref::<StringArray>().unwrap();
        let score = batch.column_by_name(column).unwrap();
        let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..batch.num_rows() {
            out.entry(process.value(i).to_string()).or_default().push(score.value(i));
        }
    }
    out
}

fn yields(batches: &[RecordBatch]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for batch in batches {
        let process = batch.column_by_name("process").unwrap();
        let process = process.as_any().downcast_ref::<StringArray>().unwrap();
        let weight = batch.column_by_name("weight").unwrap();
        let weight = weight.as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..batch.num_rows() {
            *out.entry(process.value(i).to_string()).or_default() += weight.value(i);
        }
    }
    out
}

/// Two-sample Kolmogorov–Smirnov statistic.
fn ks_statistic(mut a: Vec<f64>, mut b: Vec<f64>) -> f64 {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

fn ks_critical(n: usize, m: usize) -> f64 {
    1.949 * ((n + m) as f64 / (n as f64 * m as f64)).sqrt()
}

#[test]
fn ks_statistic_hand_example() {
    // ECDFs of [1, 2, 3] and [2.5, 3.5] differ most at x = 2: 2/3 − 0.
    let d = ks_statistic(vec![1.0, 2.0, 3.0], vec![2.5, 3.5]);
    assert!((d - 2.0 / 3.0).abs() < 1e-15);
}

#[test]
fn toy_1d_yields_and_counts() {
    let spec = ToySpec {
        kind: GeneratorKind::Toy1d,
        seed: 7,
        signal: 2000,
        background: 6000,
        mass_resolution: 1.5,
    };
    let batches = generate(&spec);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 8000);
    let y = yields(&batches);
    assert!((y["signal"] - 50.0).abs() < 1e-9, "signal yield {}", y["signal"]);
    let background: f64 =
        y.iter().filter(|(p, _)| p.starts_with("bkg")).map(|(_, v)| v).sum();
    assert!((background - 26_000.0).abs() < 1e-6, "background yield {background}");
    assert!((y["bkg1"] - 10_000.0).abs() < 1e-6);
    assert!((y["bkg5"] - 1_000.0).abs() < 1e-6);
}

#[test]
fn toy_three_class_yields() {
    let spec = ToySpec {
        kind: GeneratorKind::ThreeClass,
        seed: 7,
        signal: 1000,
        background: 5000,
        mass_resolution: 1.5,
    };
    let y = yields(&generate(&spec));
    assert!((y["signal1"] - 50.0).abs() < 1e-9);
    assert!((y["signal2"] - 10.0).abs() < 1e-9);
    let background: f64 =
        y.iter().filter(|(p, _)| p.starts_with("bkg")).map(|(_, v)| v).sum();
    assert!((background - 26_000.0).abs() < 1e-6);
}

#[test]
fn toy_same_seed_same_events() {
    let spec = ToySpec {
        kind: GeneratorKind::Toy1d,
        seed: 3,
        signal: 100,
        background: 300,
        mass_resolution: 1.5,
    };
    assert_eq!(generate(&spec), generate(&spec));
    let other = ToySpec { seed: 4, ..spec.clone() };
    assert_ne!(generate(&spec), generate(&other));
}

#[test]
fn toy_1d_scores_match_reference_distribution() {
    let reference =
        scores_by_process(&read_parquet(&reference("toy1d_seed42.parquet")), "score");
    let ours =
        scores_by_process(&generate(&ToySpec::new(GeneratorKind::Toy1d, 1)), "score");
    assert_eq!(ours.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
    for (process, theirs) in &reference {
        let mine = ours[process].clone();
        assert_eq!(mine.len(), theirs.len(), "{process}: event count");
        let critical = ks_critical(mine.len(), theirs.len());
        let d = ks_statistic(mine, theirs.clone());
        assert!(d < critical, "{process}: KS D = {d:.5} above {critical:.5}");
    }
}

#[test]
fn toy_three_class_scores_match_reference_distribution() {
    let ref_batches = read_parquet(&reference("toy3class_seed42.parquet"));
    let our_batches = generate(&ToySpec::new(GeneratorKind::ThreeClass, 1));
    for column in ["score_signal1", "score_signal2", "score_bkg"] {
        let reference = scores_by_process(&ref_batches, column);
        let ours = scores_by_process(&our_batches, column);
        for (process, theirs) in &reference {
            let mine = ours[process].clone();
            let critical = ks_critical(mine.len(), theirs.len());
            let d = ks_statistic(mine, theirs.clone());
            assert!(
                d < critical,
                "{process} {column}: KS D = {d:.5} above {critical:.5}"
            );
        }
    }
}

/// The resonance toy's mass: signals peak at 125 GeV with σ_m, backgrounds
/// fall with their own slope, everything inside [100, 180] GeV.
#[test]
fn resonance_mass_spectra() {
    let spec = ToySpec {
        kind: GeneratorKind::Resonance,
        seed: 5,
        signal: 20_000,
        background: 200_000,
        mass_resolution: 2.0,
    };
    let mut masses: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for batch in generate(&spec) {
        let process = crate::common::string_column(&batch, "process");
        let mass = crate::common::float_column(&batch, "mass");
        for (p, m) in process.into_iter().zip(mass) {
            masses.entry(p).or_default().push(m);
        }
    }
    for (name, m) in &masses {
        assert!(m.iter().all(|&x| (100.0..=180.0).contains(&x)), "{name}");
        let n = m.len() as f64;
        let mean = m.iter().sum::<f64>() / n;
        if name.starts_with("signal") {
            let sd = (m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!((mean - 125.0).abs() < 0.05, "{name}: mean {mean}");
            assert!((sd - 2.0).abs() < 0.05, "{name}: σ {sd}");
        } else {
            // Mean of e^(−λ(m − 100)) on [0, 80]: 1/λ − 80/(e^(80λ) − 1).
            let lambda = gato::toy::BACKGROUND_MASS_SLOPES
                [name[3..].parse::<usize>().unwrap() - 1];
            let want = 100.0 + 1.0 / lambda - 80.0 / ((80.0 * lambda).exp() - 1.0);
            let sd_mean = 80.0 / (12.0 * n).sqrt();
            assert!((mean - want).abs() < 5.0 * sd_mean, "{name}: mean {mean} vs {want}");
        }
    }
}
