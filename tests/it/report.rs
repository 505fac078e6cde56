//! Plots, report.html and `gato report`: the drawn content is checked
//! against summary.json and against histograms recomputed from the written
//! Parquet files, and the page is loaded in headless Chromium where it is
//! installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use gato::plot::{
    BOUNDARY, LEGEND_WIDTH, MARGIN, SIZE, Y_LABEL_AREA, background_colour,
    category_colour, hex,
};
use serde_json::Value;

use crate::common::{
    float_column, gato_bin, read_parquet, string_column, three_class_processes,
    toy_1d_processes,
};

fn gato(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(gato_bin()).args(args).current_dir(dir).output().unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Width and height from a PNG header.
fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height)
}

/// Returns the `points` of every SVG polyline drawn with `stroke`.
fn polylines(svg: &str, stroke: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.contains(&format!("stroke=\"{stroke}\"")))
        .map(|p| {
            let start = p.find("points=\"").unwrap() + 8;
            let end = start + p[start..].find('"').unwrap();
            p[start..end]
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// Number of SVG rectangles filled with `fill`.
fn filled_rects(svg: &str, fill: &str) -> usize {
    svg.split("<rect").skip(1).filter(|r| r.contains(&format!("fill=\"{fill}\""))).count()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn one_d_pipeline() -> String {
    format!(
        "name: report1d\nseed: 4\nsources:\n  mc:\n    files: [sample.parquet]\n    \
         process_column: process\n{}selection:\n  sql: SELECT score, weight FROM events\n  \
         discriminants: [score]\n  weight: weight\nmodel:\n  kind: sigmoid\n  \
         categories: [2, 3]\nobjective:\n  penalties:\n    low_background: {{ threshold: 5, \
         weight: 1 }}\ntraining:\n  epochs: 12\noutput: out\n",
        toy_1d_processes("mc")
    )
}

/// Writes the 1D toy as sample.parquet in `dir` and runs the 1D pipeline
/// on it for `epochs` epochs.
fn run_one_d(dir: &Path, signal: usize, background: usize, epochs: usize) {
    let (signal, background) = (signal.to_string(), background.to_string());
    let args = ["generate", "toy-1d", "--out", "sample.parquet", "--seed", "3"];
    let sizes = ["--signal", &signal, "--background", &background];
    ok(&gato(&[&args[..], &sizes[..]].concat(), dir));
    let text = one_d_pipeline().replace("epochs: 12", &format!("epochs: {epochs}"));
    std::fs::write(dir.join("pipeline.yaml"), text).unwrap();
    ok(&gato(&["-q", "run", "pipeline.yaml"], dir));
}

#[test]
fn one_d_plots_match_summary_and_recomputed_histograms() {
    let dir = tempfile::tempdir().unwrap();
    run_one_d(dir.path(), 3000, 20000, 12);
    let out = dir.path().join("out");
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["schema_version"], 2);
    assert_eq!(summary["report"]["bins"], 50);
    assert_eq!(summary["penalties"]["low_background"]["threshold"], 5.0);

    // Every plot of a 1D run, as SVG and PNG, and no 2D map.
    let mut expected = vec![out.join("plots/significance_vs_categories")];
    for run in ["sigmoid_k2", "sigmoid_k3"] {
        for stem in [
            "discriminant_score",
            "categories",
            "history",
            "soft_hard_bias",
            "boundaries_history",
            "yield_vs_uncertainty",
        ] {
            expected.push(out.join(run).join("plots").join(stem));
        }
    }
    let mut want: Vec<PathBuf> = expected
        .iter()
        .flat_map(|s| [s.with_extension("png"), s.with_extension("svg")])
        .collect();
    want.sort();
    let drawn: Vec<PathBuf> = files_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "svg"))
        .collect();
    assert_eq!(drawn, want);
    assert_eq!(png_size(&out.join("sigmoid_k3/plots/discriminant_score.png")), SIZE);
    assert_eq!(png_size(&out.join("sigmoid_k3/plots/history.png")), (1120, 1080));

    // The histogram of each process equals one recomputed from the written
    // file: 50 bins of the score on [0, 1], values outside in the end bins.
    let (mut process, mut weight, mut score) = (vec![], vec![], vec![]);
    for batch in read_parquet(&out.join("sigmoid_k2/sample.parquet")) {
        process.extend(string_column(&batch, "process"));
        weight.extend(float_column(&batch, "weight"));
        score.extend(float_column(&batch, "score"));
    }
    let histograms = read_json(&out.join("histograms.json"));
    let names: Vec<String> =
        serde_json::from_value(histograms["processes"].clone()).unwrap();
    let sumw: Vec<Vec<f64>> =
        serde_json::from_value(histograms["discriminants"][0]["sumw"].clone()).unwrap();
    for (p, name) in names.iter().enumerate() {
        let mut h = vec![0.0f64; 50];
        for i in (0..weight.len()).filter(|&i| &process[i] == name) {
            let bin = ((score[i] * 50.0).floor().max(0.0) as usize).min(49);
            h[bin] += weight[i];
        }
        for b in 0..50 {
            assert!(
                (sumw[p][b] - h[b]).abs() <= 1e-9 * h[b].abs().max(1e-9),
                "{name} bin {b}: {} vs {}",
                sumw[p][b],
                h[b]
            );
        }
    }

    for (r, run) in summary["runs"].as_array().unwrap().iter().enumerate() {
        let name = run["name"].as_str().unwrap();
        let plots = out.join(name).join("plots");

        // The boundaries drawn are the learnt ones: x pixel of each vertical
        // line against the chart's mapping of [0, 1].
        let svg = std::fs::read_to_string(plots.join("discriminant_score.svg")).unwrap();
        // The legend's sample line is horizontal; the cuts are vertical.
        let lines: Vec<Vec<(f64, f64)>> = polylines(&svg, &hex(BOUNDARY))
            .into_iter()
            .filter(|l| l[0].0 == l[l.len() - 1].0)
            .collect();
        let boundaries: Vec<f64> =
            serde_json::from_value(run["boundaries"].clone()).unwrap();
        assert_eq!(lines.len(), boundaries.len(), "{name}");
        assert_eq!(boundaries.len(), r + 1);
        let left = (MARGIN + Y_LABEL_AREA) as f64;
        let width = (SIZE.0 - LEGEND_WIDTH - 2 * MARGIN - Y_LABEL_AREA) as f64;
        for (line, b) in lines.iter().zip(&boundaries) {
            assert_eq!(line.len(), 2);
            assert_eq!(line[0].0, line[1].0, "vertical");
            let want = left + b * width;
            assert!((line[0].0 - want).abs() <= 2.0, "{name}: {} vs {want}", line[0].0);
        }

        // One bar per category and background process with a positive
        // yield, plus the legend's swatch.
        let svg = std::fs::read_to_string(plots.join("categories.svg")).unwrap();
        for (p, _) in names.iter().enumerate().skip(1) {
            let filled = run["table"]["categories"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["background_by_process"][p - 1].as_f64().unwrap() > 0.0)
                .count();
            assert!(filled > 0);
            assert_eq!(
                filled_rects(&svg, &hex(background_colour(p - 1))),
                filled + 1,
                "{name}, {}",
                names[p]
            );
        }

        // One dot per category with a positive background.
        let svg =
            std::fs::read_to_string(plots.join("yield_vs_uncertainty.svg")).unwrap();
        let k = run["categories"].as_u64().unwrap() as usize;
        for c in 0..k {
            assert_eq!(
                svg.matches(&format!("fill=\"{}\"", hex(category_colour(c)))).count(),
                1
            );
        }
    }

    // The page: every image it shows is a written file, and it carries the
    // tables.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let images: Vec<&str> =
        html.split("<img src=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert_eq!(images.len(), expected.len());
    for image in &images {
        assert!(out.join(image).is_file(), "{image}");
    }
    let z = summary["runs"][1]["table"]["z"].as_f64().unwrap();
    assert!(html.contains(&format!("<td>{z:.4}</td>")), "Z {z:.4} in the table");
    // 1D categories are half-open except the last, which includes its
    // upper edge, as in the terminal table.
    let mut cut_runs = 0;
    for run in summary["runs"].as_array().unwrap() {
        let rows = run["table"]["categories"].as_array().unwrap();
        let Some(first) = rows[0]["lower"].as_f64() else { continue };
        cut_runs += 1;
        let hi0 = rows[0]["upper"].as_f64().unwrap();
        assert!(html.contains(&format!(">[{first:.4}, {hi0:.4})</td>")), "{first} {hi0}");
        let last = &rows[rows.len() - 1];
        let (lo, hi) = (last["lower"].as_f64().unwrap(), last["upper"].as_f64().unwrap());
        assert!(html.contains(&format!(">[{lo:.4}, {hi:.4}]</td>")), "{lo} {hi}");
    }
    assert!(cut_runs > 0);
    check_in_chromium(&out.join("report.html"), images.len());

    // `gato report` draws the same files again from the saved outputs.
    let before: Vec<(PathBuf, Vec<u8>)> =
        want.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
    std::fs::remove_dir_all(out.join("plots")).unwrap();
    std::fs::remove_dir_all(out.join("sigmoid_k2/plots")).unwrap();
    std::fs::remove_file(out.join("report.html")).unwrap();
    ok(&gato(&["-q", "report", "out"], dir.path()));
    for (path, bytes) in before {
        assert!(std::fs::read(&path).unwrap() == bytes, "{} differs", path.display());
    }
    assert_eq!(std::fs::read_to_string(out.join("report.html")).unwrap(), html);
}

/// Loads `html` in headless Chromium and checks that the page loaded with
/// no console message and that all `images` images rendered. Skipped with
/// a message where Chromium is not installed, unless
/// `GATO_REQUIRE_CHROMIUM` is set.
fn check_in_chromium(html: &Path, images: usize) {
    let chromium = std::env::var_os("GATO_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.canonicalize().unwrap().display());
    let run = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output();

    let out = match run {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("GATO_REQUIRE_CHROMIUM").is_none(),
                "GATO_REQUIRE_CHROMIUM is set but {} cannot start: {e}",
                chromium.display()
            );
            eprintln!(
                "skipping the check of report.html in Chromium: {} cannot start ({e}); \
                 install the Debian package chromium or set GATO_CHROMIUM",
                chromium.display()
            );
            return;
        }
    };

    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains(&format!("data-images=\"{images}\"")),
        "the page's load check did not run or counted other images:\n{log}"
    );
    assert!(dom.contains("data-images-failed=\"0\""), "images failed to render:\n{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
}

#[test]
fn two_d_map_shows_every_populated_category() {
    let dir = tempfile::tempdir().unwrap();
    let processes = three_class_processes("toy");
    let text = format!(
        "name: map\nseed: 5\nsources:\n  toy:\n    generator:\n      kind: three-class\n      \
                signal: 2000\n      background: 12000\n{processes}\
                selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n  \
                discriminants: [score_signal1, score_signal2]\n  weight: weight\n\
                model:\n  kind: gmm\n  categories: [4]\n  means: simplex\n  init: random\n\
                objective:\n  combine: geometric\ntraining:\n  epochs: 6\n\
                evaluation:\n  argmax_low: 0.33\noutput: out\n"
    );
    std::fs::write(dir.path().join("pipeline.yaml"), &text).unwrap();
    ok(&gato(&["-q", "run", "pipeline.yaml"], dir.path()));
    let out = dir.path().join("out");
    let summary = read_json(&out.join("summary.json"));
    let plots = out.join("gmm_k4/plots");
    assert_eq!(png_size(&plots.join("category_map.png")), (1560, 540));
    for stem in ["discriminant_score_signal1", "discriminant_score_signal2", "history"] {
        assert!(plots.join(stem).with_extension("svg").is_file(), "{stem}");
    }
    assert!(
        !plots.join("boundaries_history.svg").exists(),
        "GMMs have no cuts to follow"
    );
    assert!(!plots.join("mass_categories.svg").exists());

    // A category holding at least 5 % of the events covers part of the
    // plane, so its colour is on the map.
    let svg = std::fs::read_to_string(plots.join("category_map.svg")).unwrap();
    let rows = summary["runs"][0]["table"]["categories"].as_array().unwrap();
    let total: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    let mut checked = 0;
    for (c, row) in rows.iter().enumerate() {
        if row["events"].as_u64().unwrap() * 20 >= total {
            assert!(filled_rects(&svg, &hex(category_colour(c))) > 0, "category {c}");
            checked += 1;
        }
    }
    assert!(checked >= 2);
    // The density panels: background and signal cells, no more than the
    // 50 × 50 histogram has.
    let histograms = read_json(&out.join("histograms.json"));
    let background: Vec<f64> =
        serde_json::from_value(histograms["plane"]["background"].clone()).unwrap();
    assert_eq!(background.len(), 2500);
    let significance =
        std::fs::read_to_string(out.join("plots/significance_vs_categories.svg"))
            .unwrap();
    assert!(significance.contains("argmax baseline"));
}

#[test]
fn report_errors_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = gato(&["report", "."], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("summary.json"), "{stderr}");
    assert!(stderr.contains("gato run"), "{stderr}");

    std::fs::write(dir.path().join("summary.json"), "{\"schema_version\": 1}").unwrap();
    let out = gato(&["report", "."], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("schema_version is 1, this gato reads 2"), "{stderr}");
    assert!(!dir.path().join("report.html").exists());
}

/// Runs the small 1D pipeline in a new directory and returns it.
fn small_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_one_d(dir.path(), 2000, 8000, 4);
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value = read_json(path);
    edit(&mut value);
    std::fs::write(path, serde_json::to_string(&value).unwrap()).unwrap();
}

#[test]
fn damaged_outputs_fail_without_panic() {
    let dir = small_run();
    let out = dir.path().join("out");
    let report = |dir: &Path| {
        let out = gato(&["report", "out"], dir);
        assert_ne!(
            out.status.code(),
            Some(101),
            "panic: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };

    // A run name that leaves the output directory is not drawn.
    edit_json(&out.join("summary.json"), |s| s["runs"][1]["name"] = "../escaped".into());
    let (success, stderr) = report(dir.path());
    assert!(!success);
    assert!(
        stderr.contains("run name `../escaped` is not a plain directory name"),
        "{stderr}"
    );
    assert!(!dir.path().join("escaped").exists());
    assert!(out.join("sigmoid_k2/plots/history.png").is_file(), "the other run is drawn");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("escaped"));
    edit_json(&out.join("summary.json"), |s| s["runs"][1]["name"] = "sigmoid_k3".into());

    // An infinite loss makes the history unplottable; the rest is drawn.
    edit_json(&out.join("sigmoid_k3/history.json"), |h| h[0][1]["loss"] = 1e308.into());
    edit_json(&out.join("sigmoid_k3/history.json"), |h| {
        h[0][2]["loss"] = (-1e308).into()
    });
    std::fs::remove_file(out.join("sigmoid_k3/plots/history.png")).unwrap();
    let (success, stderr) = report(dir.path());
    assert!(!success);
    assert!(stderr.contains("sigmoid_k3/plots/history"), "{stderr}");
    assert!(stderr.contains("cannot be drawn"), "{stderr}");
    assert!(!out.join("sigmoid_k3/plots/history.png").exists());
    assert!(out.join("sigmoid_k3/plots/categories.png").is_file());

    // Histograms with missing bins are rejected before anything is drawn.
    edit_json(&out.join("histograms.json"), |h| {
        h["discriminants"][0]["sumw"][1] = serde_json::json!([1.0, 2.0]);
    });
    let (success, stderr) = report(dir.path());
    assert!(!success);
    assert!(stderr.contains("histograms.json"), "{stderr}");
    assert!(stderr.contains("sumw must have 6 lists of 50 bins"), "{stderr}");
}
