//! Exact evaluation, the DP optimum and cut refinement against brute force
//! on small samples.

use gato::config::Pipeline;
use gato::evaluate::{dp_optimum, evaluate};
use gato::model::category_of;
use gato::optimize::SortedEvents;
use gato::select::Events;
use gato::store::EventSet;

use crate::common::{pipeline, select_events, toy_1d_processes};

fn small_toy(significance: &str) -> (Pipeline, Events) {
    let text = format!(
        "name: small\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 300, background: 900 }}\n{}\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [3]\n\
         objective:\n  significance: {significance}\n",
        toy_1d_processes("toy")
    );
    let pipeline = pipeline(&text);
    let (_, events) = select_events(&pipeline);
    (pipeline, events)
}

fn z_of_cuts(pipeline: &Pipeline, events: &Events, cuts: &[f64]) -> f64 {
    let assign: Vec<u32> =
        events.discriminants[0].iter().map(|&x| category_of(cuts, x)).collect();
    evaluate(pipeline, events, &assign, cuts.len() + 1, None, None).z
}

#[test]
fn dp_matches_brute_force_partitions() {
    for significance in ["asimov", "asimov-gato"] {
        let (pipeline, events) = small_toy(significance);
        let bins = 12;
        let dp = dp_optimum(&pipeline, &events, 3, bins).unwrap();
        let mut best = 0.0f64;
        for i in 1..bins {
            for j in i + 1..bins {
                let cuts = [i as f64 / bins as f64, j as f64 / bins as f64];
                best = best.max(z_of_cuts(&pipeline, &events, &cuts));
            }
        }
        assert!(
            (dp.z - best).abs() < 1e-12,
            "{significance}: DP {} vs brute force {best}",
            dp.z
        );
        let dp_cuts = &dp.edges[1..3];
        assert!((z_of_cuts(&pipeline, &events, dp_cuts) - dp.z).abs() < 1e-12);
    }
}

#[test]
fn dp_respects_minimum_background() {
    let (mut pipeline, events) = small_toy("asimov");
    pipeline.objective.low_background = Some((2000.0, 1.0));
    let dp = dp_optimum(&pipeline, &events, 3, 50).unwrap();
    let assign: Vec<u32> = events.discriminants[0]
        .iter()
        .map(|&x| category_of(&dp.edges[1..3], x))
        .collect();
    let table = evaluate(&pipeline, &events, &assign, 3, None, None);
    for row in &table.categories {
        assert!(
            row.background >= 2000.0,
            "category {} has background {}",
            row.category,
            row.background
        );
    }
}

#[test]
fn refine_one_cut_finds_global_best() {
    let (pipeline, events) = small_toy("asimov");
    let sorted = SortedEvents::new(&pipeline, &events).unwrap();
    let mut cuts = [0.5];
    let z = sorted.refine(&mut cuts, 0.0, 1.0);
    let mut xs = events.discriminants[0].clone();
    xs.sort_by(f64::total_cmp);
    let best = xs
        .windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| z_of_cuts(&pipeline, &events, &[0.5 * (w[0] + w[1])]))
        .fold(0.0f64, f64::max);
    assert!((z - best).abs() < 1e-12, "refined {z}, brute force {best}");
    assert!((z_of_cuts(&pipeline, &events, &cuts) - z).abs() < 1e-12);
}

#[test]
fn refine_within_bounds_finds_best_inside() {
    let (pipeline, events) = small_toy("asimov");
    let sorted = SortedEvents::new(&pipeline, &events).unwrap();
    let mut free = [0.5];
    let z_free = sorted.refine(&mut free, 0.0, 1.0);
    // A range that excludes the free optimum: the cut stays inside it and
    // ends at the best midpoint there.
    let bounds = if free[0] > 0.5 { (0.2, 0.4) } else { (0.6, 0.8) };
    let mut cuts = [0.5 * (bounds.0 + bounds.1)];
    let z = sorted.refine_within(&mut cuts, 0.0, 1.0, Some(&[bounds]));
    assert!(bounds.0 <= cuts[0], "{} below {bounds:?}", cuts[0]);
    assert!(cuts[0] <= bounds.1, "{} above {bounds:?}", cuts[0]);
    let mut xs = events.discriminants[0].clone();
    xs.sort_by(f64::total_cmp);
    let best = xs
        .windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| 0.5 * (w[0] + w[1]))
        .filter(|&m| bounds.0 <= m && m <= bounds.1)
        .map(|m| z_of_cuts(&pipeline, &events, &[m]))
        .fold(0.0f64, f64::max);
    assert!((z - best).abs() < 1e-12, "refined {z}, brute force {best}");
    assert!(z < z_free, "the bounds exclude the free optimum");
    // A cut bounded to its own value does not move.
    let mut fixed = [0.55];
    sorted.refine_within(&mut fixed, 0.0, 1.0, Some(&[(0.55, 0.55)]));
    assert_eq!(fixed, [0.55]);
}

#[test]
fn refine_two_cuts_is_locally_optimal() {
    let (pipeline, events) = small_toy("asimov-gato");
    let sorted = SortedEvents::new(&pipeline, &events).unwrap();
    let start = [0.3, 0.6];
    let mut cuts = start;
    let z = sorted.refine(&mut cuts, 0.0, 1.0);
    assert!(z >= z_of_cuts(&pipeline, &events, &start));
    assert!(cuts[0] < cuts[1]);
    let mut xs = events.discriminants[0].clone();
    xs.sort_by(f64::total_cmp);
    for moving in 0..2 {
        for w in xs.windows(2).filter(|w| w[0] < w[1]) {
            let mut trial = cuts;
            trial[moving] = 0.5 * (w[0] + w[1]);
            if trial[0] < trial[1] {
                let other = z_of_cuts(&pipeline, &events, &trial);
                assert!(
                    other <= z + 1e-12,
                    "moving cut {moving} to {} gives {other} > {z}",
                    trial[moving]
                );
            }
        }
    }
}

fn objective_with(
    rule: gato::config::CombineRule,
    weights: Vec<f64>,
) -> gato::config::ObjectiveSpec {
    gato::config::ObjectiveSpec {
        significance: gato::config::SignificanceKind::Asimov,
        low_background: None,
        mc_uncertainty: None,
        combine: rule,
        signal_weights: weights,
        reweight: None,
        sideband: None,
    }
}

#[test]
fn combine_rules_hand_values() {
    use gato::config::CombineRule::*;
    use gato::evaluate::combine_signals;
    let z = [4.0, 1.0];
    assert_eq!(combine_signals(&objective_with(Geometric, vec![1.0, 1.0]), &z), 2.0);
    assert_eq!(combine_signals(&objective_with(Arithmetic, vec![1.0, 1.0]), &z), 2.5);
    assert_eq!(combine_signals(&objective_with(Minimum, vec![1.0, 1.0]), &z), 1.0);
    assert_eq!(
        combine_signals(&objective_with(Quadrature, vec![1.0, 4.0]), &z),
        20f64.sqrt()
    );
    assert_eq!(combine_signals(&objective_with(Geometric, vec![1.0]), &[3.0]), 3.0);
}

#[test]
fn combine_rules_on_tensors_agree() {
    use burn::backend::{Autodiff, NdArray};
    use gato::burn;
    use gato::config::CombineRule::*;
    use gato::model::{GaussianMixture, Params, tensor1, to_host};
    use gato::objective::{EventTensors, Objective};
    type B = Autodiff<NdArray<f64>>;

    let mut processes = String::from("processes:\n");
    for s in ["signal1", "signal2"] {
        processes.push_str(&format!("  - {{ name: {s}, role: signal, source: toy }}\n"));
    }
    for b in ["bkg1", "bkg2", "bkg3", "bkg4", "bkg5"] {
        processes
            .push_str(&format!("  - {{ name: {b}, role: background, source: toy }}\n"));
    }
    let text = format!(
        "name: c\nsources:\n  toy:\n    generator: {{ kind: three-class, signal: 500, background: 2000 }}\n\
         {processes}selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n\
         \x20 discriminants: [score_signal1, score_signal2]\n\
         model:\n  kind: gmm\n  categories: [3]\n  means: simplex\n"
    );
    let pipeline = pipeline(&text);
    let (_, events) = select_events(&pipeline);
    let device = Default::default();
    let tensors = EventTensors::<B>::new(&events, &pipeline, &device);
    let model = GaussianMixture::new(
        3,
        vec![(0.0, 1.0); 2],
        true,
        None,
        gato::config::GmmInit::Random,
    );
    let params = Params {
        names: vec!["logits".into(), "means".into(), "scale".into()],
        shapes: vec![vec![3], vec![3, 2], vec![3, 2, 2]],
        values: vec![
            vec![0.1, 0.0, -0.1],
            vec![2.0, -1.0, -1.0, 2.0, 0.0, 0.0],
            vec![0.0; 12],
        ],
    };
    let soft = |rule, weights: Vec<f64>| -> f64 {
        let ts: Vec<_> = params.values.iter().map(|v| tensor1::<B>(v, &device)).collect();
        let m = model.membership(&tensors.columns, &ts, tensor1::<B>(&[0.5], &device));
        to_host(
            Objective::new(objective_with(rule, weights))
                .compute(m, &tensors, None)
                .significance,
        )[0]
    };
    let (geometric, arithmetic) =
        (soft(Geometric, vec![1.0, 1.0]), soft(Arithmetic, vec![1.0, 1.0]));
    // Z1 and Z2 are the roots of t² − (Z1 + Z2)t + Z1·Z2.
    let (sum, product) = (2.0 * arithmetic, geometric * geometric);
    let root = (sum * sum / 4.0 - product).max(0.0).sqrt();
    let (high, low) = (sum / 2.0 + root, sum / 2.0 - root);
    assert!((soft(Minimum, vec![1.0, 1.0]) - low).abs() < 1e-9 * high);
    let quadrature = soft(Quadrature, vec![2.0, 3.0]);
    let candidates = [
        (2.0 * high * high + 3.0 * low * low).sqrt(),
        (2.0 * low * low + 3.0 * high * high).sqrt(),
    ];
    assert!(
        candidates.iter().any(|c| (quadrature - c).abs() < 1e-9 * c),
        "{quadrature} vs {candidates:?}"
    );
}

/// The soft objective with reweighting factors equals a float64 loop, and
/// the factor-update stage of training changes the factors the objective uses.
#[test]
fn soft_objective_with_reweighting_and_updates() {
    use burn::backend::{Autodiff, NdArray};
    use gato::burn;
    use gato::model::{CategoryModel, SigmoidCuts, tensor1, to_host};
    use gato::objective::{EventTensors, Objective};
    use gato::optimize::Trainer;
    type B = Autodiff<NdArray<f64>>;

    let text = format!(
        "name: r\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 300, background: 900 }}\n{}\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [3]\n  steepness: {{ initial: 30 }}\n\
         objective:\n  significance: asimov\n  background_reweight:\n    processes: [bkg2, bkg5]\n\
         training:\n  epochs: 6\n",
        toy_1d_processes("toy")
    );
    let pipeline = pipeline(&text);
    let (_, events) = select_events(&pipeline);
    let device = Default::default();
    let tensors = EventTensors::<B>::new(&events, &pipeline, &device);
    let model = SigmoidCuts::new(3, 0.0, 1.0);
    let raw = [0.2, -0.4];
    let cuts = model.boundaries(&gato::model::Params {
        names: vec!["raw".into()],
        shapes: vec![vec![2]],
        values: vec![raw.to_vec()],
    });
    let factors = [0.7, 1.9, 0.4];

    // float64 by hand: soft memberships, yields with f on bkg2 and bkg5.
    let logistic = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (mut s, mut b) = ([0.0f64; 3], [0.0f64; 3]);
    for (p, range) in events.process_ranges.iter().enumerate() {
        let name = &pipeline.processes[p].name;
        for i in range.clone() {
            let x = events.discriminants[0][i];
            let (a0, a1) =
                (logistic(30.0 * (x - cuts[0])), logistic(30.0 * (x - cuts[1])));
            let m = [1.0 - a0, a0 - a1, a1];
            for c in 0..3 {
                let w = events.weight[i] * m[c];
                match name.as_str() {
                    "signal" => s[c] += w,
                    "bkg2" | "bkg5" => b[c] += factors[c] * w,
                    _ => b[c] += w,
                }
            }
        }
    }
    let z_hand = (0..3)
        .map(|c| 2.0 * ((s[c] + b[c]) * (s[c] / b[c]).ln_1p() - s[c]))
        .sum::<f64>()
        .sqrt();
    let column = tensors.columns[0].clone();
    let m = model.membership(
        &column,
        &tensor1::<B>(&raw, &device),
        tensor1::<B>(&[30.0], &device),
    );
    let objective = Objective::new(pipeline.objective.clone());
    let z =
        to_host(objective.compute(m.clone(), &tensors, Some(&factors)).significance)[0];
    assert!((z - z_hand).abs() < 1e-10 * z_hand, "{z} vs {z_hand}");
    let plain = to_host(objective.compute(m, &tensors, None).significance)[0];
    assert!((plain - z).abs() > 1e-3, "the factors change Z: {plain} vs {z}");

    // The update stage gets the hard categories, and its factors are used
    // from that epoch on.
    let set = EventSet::Memory(events.clone());
    let trainer =
        Trainer { pipeline: &pipeline, events: &set, tensors: Some(&tensors), device };
    let model = CategoryModel::Sigmoid(model);
    let init = model.init(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1),
        0,
        &[],
    );
    let mut seen = Vec::new();
    let outcome = trainer
        .train_with(
            &model,
            init,
            &mut |epoch, assign| {
                seen.push((epoch, assign.len()));
                (epoch == 2).then(|| factors.to_vec())
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(seen, (0..6).map(|e| (e, events.len())).collect::<Vec<_>>());
    for record in &outcome.history {
        let want = if record.epoch < 2 { vec![1.0; 3] } else { factors.to_vec() };
        assert_eq!(
            record.background_factors.as_deref(),
            Some(&want[..]),
            "epoch {}",
            record.epoch
        );
    }
}

/// Background only in the lower half: four bins cannot form three groups with
/// positive background, so the DP finds none unless zero-background groups
/// are allowed. Allowed groups score 0.
#[test]
fn dp_zero_background_groups_need_permission() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    crate::config_errors::write_parquet(
        &path,
        &["signal", "signal", "signal", "signal", "bkg1", "bkg1"],
        &[0.1, 0.3, 0.6, 0.9, 0.1, 0.3],
        &[1.0, 1.0, 1.0, 1.0, 4.0, 4.0],
    );
    let text = format!(
        "name: z\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\n\
         processes:\n  - {{ name: signal, role: signal, source: mc }}\n  - {{ name: bkg1, role: background, source: mc }}\n\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [3]\n\
         evaluation:\n  dp_bins: 4\n",
        path.display()
    );
    let mut pipeline = pipeline(&text);
    let (_, events) = select_events(&pipeline);
    assert!(dp_optimum(&pipeline, &events, 3, 4).is_none());

    pipeline.evaluation.dp_allow_zero_background = true;
    let dp = dp_optimum(&pipeline, &events, 3, 4).unwrap();
    let z2 = |s: f64, b: f64| 2.0 * ((s + b) * (1.0 + s / b).ln() - s);
    // Best: {bin 0}, {bins 1-2}, {bin 3}: Z²(1, 4) + Z²(2, 4) + 0.
    let best = (z2(1.0, 4.0) + z2(2.0, 4.0)).sqrt();
    assert!((dp.z - best).abs() < 1e-12, "{} vs {best}", dp.z);
    assert_eq!(dp.edges, vec![0.0, 0.25, 0.75, 1.0]);
}

/// Runs a small toy with the `objective` lines and returns the standard
/// error output. Its 8 categories leave few background MC events in the top ones.
fn sparse_run(objective: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name: sparse\nseed: 5\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 600, \
         background: 300 }}\n{}selection:\n  sql: SELECT score, weight FROM events\n  \
         discriminants: [score]\nmodel:\n  kind: sigmoid\n  categories: [8]\n\
         {objective}training:\n  epochs: 2\n  refine: false\n\
         output: out\n",
        toy_1d_processes("toy")
    );
    crate::common::run_pipeline(&text, dir.path(), &[]).1
}

#[test]
fn sparse_category_advice_follows_penalties() {
    let cases = [
        ("", "add a `low_background` or `mc_uncertainty` penalty"),
        (
            "objective:\n  penalties:\n    low_background: { threshold: 0.001, weight: 0.001 }\n",
            "raise `low_background.threshold` or its weight, or add an `mc_uncertainty` penalty",
        ),
        (
            "objective:\n  penalties:\n    mc_uncertainty: { max_relative: 50, weight: 0.001 }\n",
            "lower `mc_uncertainty.max_relative` or raise its weight",
        ),
    ];
    for (objective, advice) in cases {
        let stderr = sparse_run(objective);
        let warning = stderr
            .lines()
            .find(|l| l.contains("background MC events"))
            .unwrap_or_else(|| panic!("no warning about sparse categories:\n{stderr}"));
        assert!(
            warning.contains(&format!("unreliable; {advice}")),
            "{objective}: {warning}"
        );
    }
}
