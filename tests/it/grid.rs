//! Sigmoid grids on two discriminants, end to end through the binary: the
//! written categories, the table and the equal-bin baseline are recomputed
//! in float64 from the written files, and `gato apply` reproduces the run.

use std::path::Path;
use std::process::Command;

use gato::datafusion::arrow::array::{Array, Int32Array};
use serde_json::Value;

use crate::common::{float_column, gato_bin, read_parquet, string_column};

const PROCESSES: [&str; 7] =
    ["signal1", "signal2", "bkg1", "bkg2", "bkg3", "bkg4", "bkg5"];

fn gato(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(gato_bin()).args(args).current_dir(dir).output().unwrap()
}

fn grid_pipeline(categories: &str, objective_extra: &str) -> String {
    let mut text = String::from(
        "name: grid\nseed: 3\nsources:\n  mc:\n    files: [sample.parquet]\n    process_column: process\nprocesses:\n",
    );
    for (i, p) in PROCESSES.iter().enumerate() {
        let role = if i < 2 { "signal" } else { "background" };
        text.push_str(&format!("  - {{ name: {p}, role: {role}, source: mc }}\n"));
    }
    text.push_str(&format!(
        "selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n  \
         discriminants: [score_signal1, score_signal2]\n\
         model:\n  kind: sigmoid\n  categories: {categories}\n  range: [[0, 1], [0, 1]]\n  \
         steepness:\n    - {{ schedule: cosine, initial: 20, final: 500 }}\n    - {{ initial: 30 }}\n\
         objective:\n  significance: asimov\n{objective_extra}\
         optimizer:\n  learning_rate: {{ schedule: cosine, initial: 0.05, final: 0.005 }}\n\
         training:\n  epochs: 15\n\
         output: out\n"
    ));
    text
}

struct Sample {
    process: Vec<String>,
    x: [Vec<f64>; 2],
    weight: Vec<f64>,
    category: Vec<i32>,
}

fn read_sample(path: &Path) -> Sample {
    let mut s =
        Sample { process: vec![], x: [vec![], vec![]], weight: vec![], category: vec![] };
    for batch in read_parquet(path) {
        s.process.extend(string_column(&batch, "process"));
        s.x[0].extend(float_column(&batch, "score_signal1"));
        s.x[1].extend(float_column(&batch, "score_signal2"));
        s.weight.extend(float_column(&batch, "weight"));
        if let Some(c) = batch.column_by_name("category") {
            let c = c.as_any().downcast_ref::<Int32Array>().unwrap();
            assert_eq!(c.null_count(), 0, "every row is selected");
            s.category.extend(c.values().iter().copied());
        }
    }
    s
}

/// Category of (x₀, x₁) for cuts per discriminant, counted by hand: bin j
/// is the number of cuts at or below x; cell = bin₀·K₁ + bin₁.
fn cell_by_hand(cuts: &[Vec<f64>], x: [f64; 2]) -> i32 {
    let bin = |c: &[f64], v: f64| c.iter().filter(|&&b| b <= v).count() as i32;
    bin(&cuts[0], x[0]) * (cuts[1].len() as i32 + 1) + bin(&cuts[1], x[1])
}

/// Per-category (signal1, signal2, background, Σw² of background).
fn yields(s: &Sample, categories: &[i32], k: usize) -> Vec<[f64; 4]> {
    let mut out = vec![[0.0; 4]; k];
    for i in 0..s.weight.len() {
        let c = categories[i] as usize;
        let w = s.weight[i];
        match s.process[i].as_str() {
            "signal1" => out[c][0] += w,
            "signal2" => out[c][1] += w,
            _ => {
                out[c][2] += w;
                out[c][3] += w * w;
            }
        }
    }
    out
}

fn asimov(s: f64, b: f64) -> f64 {
    if s <= 0.0 || b <= 0.0 {
        0.0
    } else {
        (2.0 * ((s + b) * (s / b).ln_1p() - s)).sqrt()
    }
}

/// √(Z₁·Z₂) with Z_i = √Σ_k Z_ik², each signal counting the other as
/// background.
fn geometric_z(y: &[[f64; 4]]) -> f64 {
    let z1: f64 = y.iter().map(|r| asimov(r[0], r[2] + r[1]).powi(2)).sum::<f64>().sqrt();
    let z2: f64 = y.iter().map(|r| asimov(r[1], r[2] + r[0]).powi(2)).sum::<f64>().sqrt();
    (z1 * z2).sqrt()
}

#[test]
fn sigmoid_grid_run_matches_float64_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "three-class",
            "--out",
            "sample.parquet",
            "--seed",
            "4",
            "--signal",
            "2000",
            "--background",
            "8000",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        grid_pipeline("[[2, 3], [3, 3]]", ""),
    )
    .unwrap();
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();

    for (index, (name, bins)) in
        [("sigmoid_2x3", [2usize, 3]), ("sigmoid_3x3", [3, 3])].iter().enumerate()
    {
        let run = &summary["runs"][index];
        assert_eq!(run["name"], *name);
        let k = bins[0] * bins[1];
        assert_eq!(run["categories"], k);
        assert_eq!(run["bins"], serde_json::json!(bins));
        let cuts: Vec<Vec<f64>> =
            serde_json::from_value(run["grid_boundaries"].clone()).unwrap();
        assert_eq!(cuts[0].len(), bins[0] - 1);
        assert_eq!(cuts[1].len(), bins[1] - 1);

        // Written categories are the grid cells of the learnt cuts.
        let s = read_sample(&dir.path().join(format!("out/{name}/sample.parquet")));
        for i in 0..s.weight.len() {
            assert_eq!(
                s.category[i],
                cell_by_hand(&cuts, [s.x[0][i], s.x[1][i]]),
                "row {i}"
            );
        }

        // The table equals a float64 recomputation from the written file.
        let y = yields(&s, &s.category, k);
        let table = &run["table"];
        for c in 0..k {
            let row = &table["categories"][c];
            let close = |a: &Value, b: f64| {
                (a.as_f64().unwrap() - b).abs() <= 1e-9 * b.abs().max(1.0)
            };
            assert!(close(&row["signal"][0], y[c][0]), "category {c}");
            assert!(close(&row["signal"][1], y[c][1]), "category {c}");
            assert!(close(&row["background"], y[c][2]), "category {c}");
            assert!(close(&row["background_sumw2"], y[c][3]), "category {c}");
            // The cell edges are the cuts, extended to the range.
            let edges = |j: usize| {
                let mut e = vec![0.0];
                e.extend(&cuts[j]);
                e.push(1.0);
                e
            };
            let (b0, b1) = (c / bins[1], c % bins[1]);
            let cell: Vec<[f64; 2]> =
                serde_json::from_value(row["cell"].clone()).unwrap();
            assert_eq!(
                cell,
                vec![[edges(0)[b0], edges(0)[b0 + 1]], [edges(1)[b1], edges(1)[b1 + 1]]]
            );
        }
        let z = geometric_z(&y);
        assert!(
            (table["z"].as_f64().unwrap() - z).abs() < 1e-9 * z,
            "{} vs {z}",
            table["z"]
        );

        // Categories listed by significance: a permutation, in falling order
        // of the largest share of one signal's Σ Z² held by the category.
        let order: Vec<usize> =
            serde_json::from_value(table["by_significance"].clone()).unwrap();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..k).collect::<Vec<_>>());
        let z1: Vec<f64> = y.iter().map(|r| asimov(r[0], r[2] + r[1])).collect();
        let z2: Vec<f64> = y.iter().map(|r| asimov(r[1], r[2] + r[0])).collect();
        let t1: f64 = z1.iter().map(|z| z * z).sum();
        let t2: f64 = z2.iter().map(|z| z * z).sum();
        let share = |c: usize| (z1[c] * z1[c] / t1).max(z2[c] * z2[c] / t2);
        assert!(
            order.windows(2).all(|w| share(w[0]) >= share(w[1]) - 1e-12),
            "{order:?}"
        );

        // The equal-bin baseline of the same grid.
        let equal_cuts: Vec<Vec<f64>> =
            bins.iter().map(|&b| (1..b).map(|i| i as f64 / b as f64).collect()).collect();
        let equal: Vec<i32> = (0..s.weight.len())
            .map(|i| cell_by_hand(&equal_cuts, [s.x[0][i], s.x[1][i]]))
            .collect();
        let z_equal = geometric_z(&yields(&s, &equal, k));
        let got = run["equidistant"]["z"].as_f64().unwrap();
        assert!((got - z_equal).abs() < 1e-9 * z_equal, "{got} vs {z_equal}");

        // The history keeps the steepness of each discriminant.
        let history: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("out/{name}/history.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(history[0][0]["steepness"], serde_json::json!([20.0, 30.0]));
        assert_eq!(history[0][14]["steepness"], serde_json::json!([500.0, 30.0]));

        // The saved model reproduces the categories.
        let model = format!("out/{name}/model.json");
        let applied_dir = format!("applied_{name}");
        let out = gato(
            &["apply", "--model", &model, "--out", &applied_dir, "sample.parquet"],
            dir.path(),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let applied =
            read_sample(&dir.path().join(format!("{applied_dir}/sample.parquet")));
        assert_eq!(applied.category, s.category);
    }
}

#[test]
fn background_reweighting_scales_yields_and_sumw2() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(
        &[
            "generate",
            "three-class",
            "--out",
            "sample.parquet",
            "--seed",
            "6",
            "--signal",
            "1500",
            "--background",
            "6000",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let factors = [0.5, 2.0, 1.25, 0.8];
    let reweight = format!(
        "  background_reweight:\n    processes: [bkg1, bkg3]\n    factors: [{}]\n",
        factors.map(|f| f.to_string()).join(", ")
    );
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        grid_pipeline("[[2, 2]]", &reweight),
    )
    .unwrap();
    let out = gato(&["-q", "run", "pipeline.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    let run = &summary["runs"][0];
    assert_eq!(run["background_factors"], serde_json::json!(factors));

    let s = read_sample(&dir.path().join("out/sigmoid_2x2/sample.parquet"));
    let mut y = vec![[0.0f64; 4]; 4];
    for i in 0..s.weight.len() {
        let c = s.category[i] as usize;
        let w = s.weight[i];
        let f = if s.process[i] == "bkg1" || s.process[i] == "bkg3" {
            factors[c]
        } else {
            1.0
        };
        match s.process[i].as_str() {
            "signal1" => y[c][0] += w,
            "signal2" => y[c][1] += w,
            _ => {
                y[c][2] += f * w;
                y[c][3] += f * f * w * w;
            }
        }
    }
    for c in 0..4 {
        let row = &run["table"]["categories"][c];
        assert_eq!(row["background_factor"], factors[c]);
        let background = row["background"].as_f64().unwrap();
        assert!(
            (background - y[c][2]).abs() <= 1e-9 * y[c][2],
            "category {c}: {background} vs {}",
            y[c][2]
        );
        let sumw2 = row["background_sumw2"].as_f64().unwrap();
        assert!(
            (sumw2 - y[c][3]).abs() <= 1e-9 * y[c][3],
            "category {c}: {sumw2} vs {}",
            y[c][3]
        );
    }
    let z = geometric_z(&y);
    let got = run["table"]["z"].as_f64().unwrap();
    assert!((got - z).abs() < 1e-9 * z, "{got} vs {z}");
}
