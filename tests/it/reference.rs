//! Forward values and gradients against gato-hep's, at the fixed parameters
//! of forward_grad_reference.json, on the full reference files.
//!
//! gato-hep computes in float32 and gato in float64. gato-hep's float32
//! values carry rounding errors of up to 3e-4 relative: for the GMM at
//! T = 0.1 it reports 1.1341538, where a float64 computation gives 1.1344480
//! and a plain numpy float32 computation 1.1341434. So each case is checked
//! three ways:
//! - the soft significance equals a plain float64 loop over the events,
//!   written out in this file, to 1e-10 relative;
//! - the gradient equals a central finite difference of the float64
//!   objective along a fixed direction, to 1e-6 of its largest component;
//! - the value equals gato-hep's to 5e-4 relative, and each gradient
//!   component to 1e-3 of the largest component of its case. The largest
//!   differences seen are 2.6e-4 and 6.0e-4, the size of gato-hep's own
//!   float32 rounding.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use gato::burn;
use gato::config::{GmmInit, Pipeline};
use gato::model::{GaussianMixture, Params, SigmoidCuts, tensor1, to_host};
use gato::objective::{EventTensors, Objective};
use gato::select::Events;
use serde_json::Value;

use crate::common::{reference, select_events, toy_1d_processes};

type B = Autodiff<NdArray<f64>>;

fn cases() -> Value {
    let text = std::fs::read_to_string(reference("forward_grad_reference.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"].clone()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number or array: {other}"),
    }
}

fn load_1d() -> (Pipeline, Events) {
    let path = reference("toy1d_seed42.parquet");
    let text = format!(
        "name: ref1d\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\n{}\
         selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n\
         model:\n  kind: sigmoid\n  categories: [5]\n\
         objective:\n  significance: asimov-gato\n",
        path.display(),
        toy_1d_processes("mc")
    );
    let pipeline = crate::common::pipeline(&text);
    let (_, events) = select_events(&pipeline);
    (pipeline, events)
}

fn load_3class() -> (Pipeline, Events) {
    let path = reference("toy3class_seed42.parquet");
    let mut processes = String::from("processes:\n");
    for s in ["signal1", "signal2"] {
        processes.push_str(&format!("  - {{ name: {s}, role: signal, source: mc }}\n"));
    }
    for b in ["bkg1", "bkg2", "bkg3", "bkg4", "bkg5"] {
        processes
            .push_str(&format!("  - {{ name: {b}, role: background, source: mc }}\n"));
    }
    let text = format!(
        "name: ref3\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\n{processes}\
         selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n\
         \x20 discriminants: [score_signal1, score_signal2]\n\
         model:\n  kind: gmm\n  categories: [5]\n  means: simplex\n\
         objective:\n  significance: asimov-gato\n",
        path.display()
    );
    let pipeline = crate::common::pipeline(&text);
    let (_, events) = select_events(&pipeline);
    (pipeline, events)
}

/// Checks `got` against `want` component by component.
fn assert_gradient(case: &str, name: &str, got: &[f64], want: &[f64], scale: f64) {
    assert_eq!(got.len(), want.len(), "{case} {name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let error = (g - w).abs() / scale;
        assert!(
            error < 1e-3,
            "{case} {name}[{i}]: gato {g:e}, gato-hep {w:e}, error {error:e}"
        );
    }
}

/// Checks ⟨∇Z, v⟩ against (Z(θ + hv) − Z(θ − hv)) / 2h for a fixed v.
fn assert_finite_difference(
    case: &str,
    values: &[Vec<f64>],
    gradient: &[Vec<f64>],
    z_at: &dyn Fn(&[Vec<f64>]) -> f64,
) {
    let h = 1e-6;
    let direction: Vec<Vec<f64>> = values
        .iter()
        .enumerate()
        .map(|(t, v)| {
            (0..v.len()).map(|i| ((7 * t + 3 * i) % 5) as f64 / 4.0 - 0.5).collect()
        })
        .collect();
    let shifted = |sign: f64| -> Vec<Vec<f64>> {
        values
            .iter()
            .zip(&direction)
            .map(|(v, d)| v.iter().zip(d).map(|(x, dx)| x + sign * h * dx).collect())
            .collect()
    };
    let numeric = (z_at(&shifted(1.0)) - z_at(&shifted(-1.0))) / (2.0 * h);
    let analytic: f64 = gradient
        .iter()
        .flatten()
        .zip(direction.iter().flatten())
        .map(|(g, d)| g * d)
        .sum();
    let scale = gradient.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
    assert!(
        (numeric - analytic).abs() < 1e-6 * scale,
        "{case}: directional derivative autodiff {analytic:e}, finite difference {numeric:e}"
    );
}

fn assert_value(case: &str, got: f64, want: f64) {
    let error = (got - want).abs() / want.abs();
    assert!(
        error < 5e-4,
        "{case}: soft Z gato {got}, gato-hep {want}, relative error {error:e}"
    );
}

/// gato-hep's per-category Z rule in plain float64.
fn z_gato(s: f64, b: f64) -> f64 {
    let b = b.max(1e-9);
    let r = s / b;
    if r < 0.1 { s / b.sqrt() } else { (2.0 * ((s + b) * (1.0 + r).ln() - s)).sqrt() }
}

/// Soft significance by plain loops: `membership(i)` gives event i's K
/// memberships. Signals each count the others as background; several
/// signals combine by the geometric mean.
fn direct_soft_z(
    pipeline: &Pipeline,
    events: &Events,
    k: usize,
    membership: &dyn Fn(usize) -> Vec<f64>,
) -> f64 {
    let signals = pipeline.signal_indices();
    let mut yields = vec![vec![0.0f64; k]; pipeline.processes.len()];
    for (p, range) in events.process_ranges.iter().enumerate() {
        for i in range.clone() {
            for (c, m) in membership(i).iter().enumerate() {
                yields[p][c] += events.weight[i] * m;
            }
        }
    }
    let mut product = 1.0;
    for &sig in &signals {
        let mut z2 = 0.0;
        for c in 0..k {
            let total: f64 = (0..yields.len()).map(|p| yields[p][c]).sum();
            let z = z_gato(yields[sig][c], total - yields[sig][c]);
            z2 += z * z;
        }
        product *= z2.sqrt();
    }
    product.powf(1.0 / signals.len() as f64)
}

fn assert_direct(case: &str, got: f64, direct: f64) {
    assert!(
        (got - direct).abs() < 1e-10 * direct,
        "{case}: soft Z on tensors {got}, by plain float64 loops {direct}"
    );
}

/// Plain float64 GMM membership of one event: softmax((ln π + ln N) / T).
fn direct_gmm_membership(
    model: &GaussianMixture,
    params: &Params,
    x: &[f64],
    t: f64,
) -> Vec<f64> {
    let (means, tril) = model.effective(params);
    let logits = params.get("logits");
    let log_total = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
    let d = x.len();
    let scores: Vec<f64> = (0..model.components)
        .map(|c| {
            let mut y = vec![0.0; d];
            let mut quad = 0.0;
            let mut log_det = 0.0;
            for i in 0..d {
                let mut r = x[i] - means[c][i];
                for j in 0..i {
                    r -= tril[c][i][j] * y[j];
                }
                y[i] = r / tril[c][i][i];
                quad += y[i] * y[i];
                log_det += tril[c][i][i].ln();
            }
            let log_n = -0.5 * quad
                - log_det
                - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
            (log_n + logits[c] - log_total) / t
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    scores.iter().map(|s| (s - max).exp() / total).collect()
}

#[test]
fn reference_sigmoid_forward_and_gradient() {
    let (pipeline, events) = load_1d();
    let device = Default::default();
    let tensors = EventTensors::<B>::new(&events, &pipeline, &device);
    let objective = Objective::new(pipeline.objective.clone());
    let cases = cases();
    for case in ["1d_sigmoid_n5_k50", "1d_sigmoid_n5_k500"] {
        let c = &cases[case];
        let raw = floats(&c["params"]["raw"]);
        let k = c["params"]["k"].as_f64().unwrap();
        let model = SigmoidCuts::new(5, 0.0, 1.0);

        let params = Params {
            names: vec!["raw".into()],
            shapes: vec![vec![4]],
            values: vec![raw.clone()],
        };
        let want_cuts = floats(&c["boundaries"]);
        for (g, w) in model.boundaries(&params).iter().zip(&want_cuts) {
            assert!((g - w).abs() < 1e-6, "{case}: boundary {g} vs {w}");
        }

        let raw_t = tensor1::<B>(&raw, &device).require_grad();
        let k_t = tensor1::<B>(&[k], &device).require_grad();
        let m = model.membership(&tensors.columns[0], &raw_t, k_t.clone());
        let z = objective.compute(m, &tensors, None).significance;
        let grads = z.backward();
        let soft_z = to_host(z)[0];
        assert_value(case, soft_z, c["soft_Z"].as_f64().unwrap());
        let cuts = model.boundaries(&params);
        let logistic = |v: f64| 1.0 / (1.0 + (-v.clamp(-75.0, 75.0)).exp());
        let direct = direct_soft_z(&pipeline, &events, 5, &|i| {
            let x = events.discriminants[0][i];
            let above: Vec<f64> = cuts.iter().map(|b| logistic(k * (x - b))).collect();
            (0..5)
                .map(|c| {
                    let left = if c == 0 { 1.0 } else { above[c - 1] };
                    let right = if c == 4 { 0.0 } else { above[c] };
                    left - right
                })
                .collect()
        });
        assert_direct(case, soft_z, direct);

        let g_raw = to_host(raw_t.grad(&grads).unwrap());
        let want_raw = floats(&c["grad_soft_Z"]["raw_0:0"]);
        let scale = want_raw.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        assert_gradient(case, "raw", &g_raw, &want_raw, scale);
        let z_at = |v: &[Vec<f64>]| -> f64 {
            let m = model.membership(
                &tensors.columns[0],
                &tensor1::<B>(&v[0], &device),
                tensor1::<B>(&[k], &device),
            );
            to_host(objective.compute(m, &tensors, None).significance)[0]
        };
        assert_finite_difference(case, &[raw.clone()], &[g_raw.clone()], &z_at);
        let g_k = to_host(k_t.grad(&grads).unwrap())[0];
        let want_k = c["grad_soft_Z"]["k_0:0"].as_f64().unwrap();
        assert!(
            (g_k - want_k).abs() / want_k.abs() < 1e-3,
            "{case}: steepness gradient gato {g_k:e}, gato-hep {want_k:e}"
        );
    }
}

fn gmm_params(c: &Value, k: usize, d: usize) -> Params {
    Params {
        names: vec!["logits".into(), "means".into(), "scale".into()],
        shapes: vec![vec![k], vec![k, d], vec![k, d, d]],
        values: vec![
            floats(&c["params"]["mixture_logits"]),
            floats(&c["params"]["means_raw"]),
            floats(&c["params"]["unconstrained_L"]),
        ],
    }
}

fn check_gmm_case(
    case: &str,
    c: &Value,
    model: &GaussianMixture,
    pipeline: &Pipeline,
    events: &Events,
    value_key: &str,
    grad_key: &str,
) {
    let device = Default::default();
    let tensors = EventTensors::<B>::new(events, pipeline, &device);
    let objective = Objective::new(pipeline.objective.clone());
    let params = gmm_params(c, model.components, model.dim);

    let (means, tril) = model.effective(&params);
    let want_means = floats(&c["effective_means"]);
    for (g, w) in means.iter().flatten().zip(&want_means) {
        assert!((g - w).abs() < 1e-6, "{case}: effective mean {g} vs {w}");
    }
    let want_tril = floats(&c["scale_tril"]);
    for (g, w) in tril.iter().flatten().flatten().zip(&want_tril) {
        assert!((g - w).abs() < 1e-6, "{case}: scale factor {g} vs {w}");
    }

    let ts: Vec<Tensor<B, 1>> =
        params.values.iter().map(|v| tensor1::<B>(v, &device).require_grad()).collect();
    let temperature = c["params"]["temperature"].as_f64().unwrap();
    let m =
        model.membership(&tensors.columns, &ts, tensor1::<B>(&[temperature], &device));
    let z = objective.compute(m, &tensors, None).significance;
    let grads = z.backward();
    let soft_z = to_host(z)[0];
    assert_value(case, soft_z, c[value_key].as_f64().unwrap());
    let direct = direct_soft_z(pipeline, events, model.components, &|i| {
        let x: Vec<f64> = events.discriminants.iter().map(|d| d[i]).collect();
        direct_gmm_membership(model, &params, &x, temperature)
    });
    assert_direct(case, soft_z, direct);

    let names = ["mixture_logits:0", "means:0", "unconstrained_L:0"];
    let got: Vec<Vec<f64>> =
        ts.iter().map(|t| to_host(t.grad(&grads).unwrap())).collect();
    let z_at = |v: &[Vec<f64>]| -> f64 {
        let ts: Vec<Tensor<B, 1>> = v.iter().map(|x| tensor1::<B>(x, &device)).collect();
        let m = model.membership(
            &tensors.columns,
            &ts,
            tensor1::<B>(&[temperature], &device),
        );
        to_host(objective.compute(m, &tensors, None).significance)[0]
    };
    assert_finite_difference(case, &params.values, &got, &z_at);
    let want: Vec<Vec<f64>> = names.iter().map(|n| floats(&c[grad_key][*n])).collect();
    let scale = want.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
    for ((name, g), w) in names.iter().zip(&got).zip(&want) {
        assert_gradient(case, name, g, w, scale);
    }
}

#[test]
fn reference_gmm_1d_forward_and_gradient() {
    let (mut pipeline, events) = load_1d();
    pipeline.model.kind = gato::config::ModelKind::Gmm;
    let cases = cases();
    for case in ["1d_gmm_n5_T1.0", "1d_gmm_n5_T0.1"] {
        let c = &cases[case];
        let sigma = c["params"]["sigma_base"].as_f64().unwrap();
        let model = GaussianMixture::new(
            5,
            vec![(0.0, 1.0)],
            false,
            Some(sigma),
            GmmInit::Random,
        );
        check_gmm_case(case, c, &model, &pipeline, &events, "soft_Z", "grad_soft_Z");
    }
}

#[test]
fn reference_gmm_3class_forward_and_gradient() {
    let (pipeline, events) = load_3class();
    let cases = cases();
    for case in ["3class_gmm_n5_T1.0", "3class_gmm_n5_T0.3"] {
        let c = &cases[case];
        let sigma = c["params"]["sigma_base"].as_f64().unwrap();
        let model = GaussianMixture::new(
            5,
            vec![(0.0, 1.0); 2],
            true,
            Some(sigma),
            GmmInit::Random,
        );
        check_gmm_case(
            case,
            c,
            &model,
            &pipeline,
            &events,
            "soft_sqrtZ1Z2",
            "grad_soft_sqrtZ1Z2",
        );
    }
}

#[test]
fn reference_argmax_baseline_matches_gato_hep() {
    // gato-hep 0.2.1's argmax baseline on the three-class reference file,
    // Z1/Z2 to three decimals, for 2, 5 and 10 bins on [0.33, 1].
    let (pipeline, events) = load_3class();
    for (k, z1, z2) in [(2, 0.882, 0.164), (5, 1.107, 0.195), (10, 1.258, 0.214)] {
        let baseline = gato::evaluate::argmax_baseline(&pipeline, &events, k, 0.33);
        let got = &baseline.z_per_signal;
        assert!((got[0] - z1).abs() < 6e-4, "K = {k}: Z1 {} vs gato-hep {z1}", got[0]);
        assert!((got[1] - z2).abs() < 6e-4, "K = {k}: Z2 {} vs gato-hep {z2}", got[1]);
        assert!((baseline.z - (got[0] * got[1]).sqrt()).abs() < 1e-12);
    }
}
