//! [`draw_report`]: every plot of an output directory and `report.html`.

use std::path::{Path, PathBuf};

use plotters::style::RGBColor;

use super::figures::{
    CategoryMap, Line, Lines, MassCategories, MassPanel, Panels, Stacked,
    YieldUncertainty, auto_signal_scale,
};
use super::histograms::Histograms;
use super::{LEGEND_WIDTH, category_colour, signal_colour, write_figure};
use crate::error::{Error, Result};
use crate::model::SavedModel;
use crate::optimize::EpochRecord;
use crate::report::{RunSummary, Summary};

/// Cells per axis of the category map.
const MAP_CELLS: usize = 120;

/// Files written by [`draw_report`].
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// The HTML page.
    pub html: PathBuf,
    /// Every plot file, SVG and PNG.
    pub plots: Vec<PathBuf>,
    /// Plots and runs that could not be drawn, each with the reason.
    pub failures: Vec<String>,
}

/// A plot on the page: its title and its path without extension, relative
/// to the output directory.
pub(super) struct PagePlot {
    pub title: String,
    pub stem: String,
}

/// The plots of one run, for the page.
pub(super) struct RunPlots {
    pub name: String,
    pub plots: Vec<PagePlot>,
}

/// Collects written figures, their page entries and the figures that
/// failed.
struct Writer<'a> {
    root: &'a Path,
    files: Vec<PathBuf>,
    failures: Vec<String>,
}

impl Writer<'_> {
    /// Writes `figure` as `<sub>/plots/<stem>.{svg,png}` under the output
    /// directory and returns its page entry, or records why it failed and
    /// returns `None`.
    fn write(
        &mut self,
        figure: &impl super::Figure,
        sub: &str,
        stem: &str,
        title: &str,
    ) -> Option<PagePlot> {
        let rel =
            if sub.is_empty() { "plots".to_string() } else { format!("{sub}/plots") };
        let dir = self.root.join(&rel);
        let written = std::fs::create_dir_all(&dir)
            .map_err(|e| Error::output(&dir, format!("cannot create directory: {e}")))
            .and_then(|()| write_figure(figure, &dir, stem));
        match written {
            Ok(files) => {
                self.files.extend(files);
                Some(PagePlot { title: title.to_string(), stem: format!("{rel}/{stem}") })
            }
            Err(e) => {
                self.failures.push(format!("{rel}/{stem}: {e}"));
                None
            }
        }
    }
}

/// Redraws every plot of the output directory `dir` and its `report.html`
/// from `summary.json`, `histograms.json` and each run's `history.json` and
/// `model.json`.
///
/// Plots go to `dir/plots/` (those that compare the runs and show the
/// inputs) and `dir/<run>/plots/`, each as SVG and PNG.
pub fn draw_report(dir: &Path) -> Result<ReportFiles> {
    let summary = Summary::read(&dir.join("summary.json"))?;
    let histograms = Histograms::read(&dir.join("histograms.json"))?;
    if histograms.processes.len() != summary.processes.len() {
        return Err(Error::input(
            dir.join("histograms.json"),
            format!(
                "has {} processes but summary.json has {}; rerun the pipeline to rewrite both",
                histograms.processes.len(),
                summary.processes.len()
            ),
        ));
    }
    if let Some(scale) = summary.report.signal_scale.filter(|s| !(1e-6..=1e9).contains(s))
    {
        return Err(Error::input(
            dir.join("summary.json"),
            format!("report.signal_scale must be between 1e-6 and 1e9, got {scale}"),
        ));
    }
    let mut writer = Writer { root: dir, files: Vec::new(), failures: Vec::new() };
    let signal_total: f64 = total(&histograms, "signal");
    let background_total: f64 = total(&histograms, "background");
    let scale = summary
        .report
        .signal_scale
        .unwrap_or_else(|| auto_signal_scale(signal_total, background_total));

    let mut overview = Vec::new();
    if !summary.runs.is_empty() {
        overview.extend(writer.write(
            &significance_figure(&summary),
            "",
            "significance_vs_categories",
            "Significance against the number of categories",
        ));
    }
    if let Some(mass) = &histograms.mass {
        let window = summary
            .runs
            .iter()
            .find_map(|r| r.sideband.as_ref())
            .map(|s| (s.window[0], s.window[1]));
        let figure = Stacked {
            title: format!("{}: all selected events", summary.pipeline),
            x_desc: format!("{} [GeV]", mass.column),
            y_desc: format!("yield / {} GeV", super::figures::width_label(&mass.edges)),
            edges: mass.edges.clone(),
            backgrounds: by_role(&histograms, "background", &mass.sumw),
            signals: by_role(&histograms, "signal", &mass.sumw),
            signal_scale: scale,
            boundaries: Vec::new(),
            window,
            log: summary.report.log_y,
            categories: false,
        };
        overview.extend(writer.write(
            &figure,
            "",
            "mass_inclusive",
            "Mass spectrum of all selected events",
        ));
    }

    let mut runs = Vec::new();
    let mut drawn_runs = Vec::new();
    for run in &summary.runs {
        match check_run(run)
            .and_then(|()| draw_run(&mut writer, &summary, &histograms, run, scale))
        {
            Ok(plots) => {
                runs.push(RunPlots { name: run.name.clone(), plots });
                drawn_runs.push(run.clone());
            }
            Err(e) => writer.failures.push(format!("run `{}`: {e}", run.name)),
        }
    }
    remove_stale_plots(dir, &drawn_runs, &writer.files);
    let html_path = dir.join("report.html");
    let shown_summary = Summary { runs: drawn_runs, ..summary };
    let page = super::html::page(&shown_summary, &overview, &runs);
    crate::atomic::write(&html_path, page.as_bytes())?;
    Ok(ReportFiles { html: html_path, plots: writer.files, failures: writer.failures })
}

/// Checks that a run's name and lists are consistent, so that drawing it
/// neither writes outside the output directory nor indexes past a list.
fn check_run(run: &RunSummary) -> Result<()> {
    let fail = |message: String| Err(Error::input("summary.json", message));
    let name = run.name.as_str();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return fail(format!("run name `{name}` is not a plain directory name"));
    }
    let t = &run.table;
    if t.categories.len() != run.categories {
        return fail(format!(
            "{} table rows for {} categories",
            t.categories.len(),
            run.categories
        ));
    }
    for row in &t.categories {
        if row.signal.len() != t.signal_processes.len()
            || row.z.len() != t.signal_processes.len()
            || row.background_by_process.len() != t.background_processes.len()
        {
            return fail(format!(
                "category {} does not list one yield per process of the table",
                row.category
            ));
        }
    }
    if let Some(sideband) = &run.sideband {
        let bins = sideband.edges.len().saturating_sub(1);
        let increasing = sideband.edges.windows(2).all(|w| w[0] < w[1]);
        let complete = sideband.categories.len() == run.categories
            && sideband.categories.iter().all(|c| {
                c.background.len() == bins
                    && c.background_sumw2.len() == bins
                    && c.signal.len() == bins
            });
        if bins == 0 || !increasing || !complete {
            return fail("the sideband spectra do not match their bin edges".into());
        }
    }
    Ok(())
}

/// Removes plot files under `plots/` and the shown runs' `plots/` that this
/// drawing did not write, such as the plots of a model an earlier run had.
fn remove_stale_plots(dir: &Path, runs: &[RunSummary], written: &[PathBuf]) {
    let dirs = std::iter::once(dir.join("plots"))
        .chain(runs.iter().map(|r| dir.join(&r.name).join("plots")));
    for plots in dirs {
        let Ok(entries) = std::fs::read_dir(&plots) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let plot = path.extension().is_some_and(|e| e == "png" || e == "svg");
            if plot && !written.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn total(histograms: &Histograms, role: &str) -> f64 {
    let Some(h) = histograms.discriminants.first() else { return 0.0 };
    histograms.indices(role).iter().map(|&p| h.sumw[p].iter().sum::<f64>()).sum()
}

/// Names and rows of `values` (one per process) of the processes of `role`.
fn by_role(
    histograms: &Histograms,
    role: &str,
    values: &[Vec<f64>],
) -> Vec<(String, Vec<f64>)> {
    histograms
        .indices(role)
        .into_iter()
        .map(|p| (histograms.processes[p].clone(), values[p].clone()))
        .collect()
}

fn read_history(path: &Path) -> Result<Vec<Vec<EpochRecord>>> {
    let text = crate::report::read_output(path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(path, format!("not a gato training history: {e}")))
}

fn series(name: &str, colour: RGBColor, width: u32, points: Vec<(f64, f64)>) -> Line {
    Line { name: name.to_string(), colour, width, points, legend: true }
}

/// Most points drawn per line; longer histories are thinned evenly.
const MAX_POINTS: usize = 2000;

fn over_epochs(
    history: &[EpochRecord],
    value: impl Fn(&EpochRecord) -> f64,
) -> Vec<(f64, f64)> {
    let stride = history.len().div_ceil(MAX_POINTS).max(1);
    history.iter().step_by(stride).map(|r| (r.epoch as f64, value(r))).collect()
}

/// Builds a panel of lines over the epochs with the kept epoch marked, and
/// a legend column `legend_width` wide where several lines are drawn.
fn panel(
    title: &str,
    y_desc: &str,
    lines: Vec<Line>,
    kept_epoch: Option<f64>,
    legend_width: u32,
) -> Lines {
    let named = lines.iter().filter(|l| l.legend).count();
    Lines {
        title: title.to_string(),
        x_desc: "epoch".to_string(),
        y_desc: y_desc.to_string(),
        lines,
        marker: kept_epoch.map(|e| (e, "kept epoch".to_string())),
        reference: None,
        dots: false,
        integer_x: true,
        legend_width: if named > 1 { legend_width } else { 0 },
    }
}

/// Builds one line over the epochs per entry of a per-epoch list (cuts or
/// factors), named `<name> <index>`.
fn entry_lines(
    history: &[EpochRecord],
    entries: usize,
    name: &str,
    list: impl Fn(&EpochRecord) -> Option<&Vec<f64>>,
) -> Vec<Line> {
    let stride = history.len().div_ceil(MAX_POINTS).max(1);
    (0..entries)
        .map(|c| {
            let points = history
                .iter()
                .step_by(stride)
                .filter_map(|r| {
                    list(r).and_then(|v| v.get(c)).map(|&v| (r.epoch as f64, v))
                })
                .collect();
            series(&format!("{name} {c}"), category_colour(c), 2, points)
        })
        .collect()
}

/// Width of the legend column of the panels of the history figure.
const PANEL_LEGEND: u32 = 140;

/// Horizontal segments from `from` to `to` at each of `values`, listed once
/// in the legend as `name`: final values drawn beside a history.
fn final_values(name: &str, values: &[f64], from: f64, to: f64) -> Vec<Line> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| Line {
            name: name.to_string(),
            colour: super::BOUNDARY,
            width: 3,
            points: vec![(from, v), (to, v)],
            legend: i == 0,
        })
        .collect()
}

fn draw_run(
    writer: &mut Writer<'_>,
    summary: &Summary,
    histograms: &Histograms,
    run: &RunSummary,
    scale: f64,
) -> Result<Vec<PagePlot>> {
    let run_dir = writer.root.join(&run.name);
    let history = read_history(&run_dir.join("history.json"))?;
    let saved = SavedModel::load(&run_dir.join("model.json"))?;
    let Some(best_history) = history.get(run.best_restart).map(Vec::as_slice) else {
        return Err(Error::input(
            run_dir.join("history.json"),
            format!(
                "has {} starts but summary.json keeps start {}; rerun the pipeline",
                history.len(),
                run.best_restart
            ),
        ));
    };
    if saved.categories != run.categories {
        return Err(Error::input(
            run_dir.join("model.json"),
            format!(
                "has {} categories but the run has {}; rerun the pipeline",
                saved.categories, run.categories
            ),
        ));
    }
    let name = run.name.as_str();
    let mut plots = Vec::new();
    let label = format!("{} {}", summary.pipeline, run.name);

    // The discriminants with the learnt cuts, one file each even where two
    // column names map to the same file name.
    let mut stems: Vec<String> = Vec::new();
    for (d, h) in histograms.discriminants.iter().enumerate() {
        let mut stem = format!("discriminant_{}", safe_name(&h.column));
        if stems.contains(&stem) {
            stem = format!("{stem}_{d}");
        }
        stems.push(stem.clone());
        let boundaries = match (&run.boundaries, &run.grid_boundaries) {
            (_, Some(grid)) => grid.get(d).cloned().unwrap_or_default(),
            (Some(b), None) if histograms.discriminants.len() == 1 => b.clone(),
            _ => Vec::new(),
        };
        let figure = Stacked {
            title: format!("{label}: {}", h.column),
            x_desc: h.column.clone(),
            y_desc: format!("yield / {}", super::figures::width_label(&h.edges)),
            edges: h.edges.clone(),
            backgrounds: by_role(histograms, "background", &h.sumw),
            signals: by_role(histograms, "signal", &h.sumw),
            signal_scale: scale,
            boundaries,
            window: None,
            log: summary.report.log_y,
            categories: false,
        };
        plots.extend(writer.write(
            &figure,
            name,
            &stem,
            &if figure.boundaries.is_empty() {
                format!("{} per process", h.column)
            } else {
                format!("{} per process with the category boundaries", h.column)
            },
        ));
    }

    // The categories as bins.
    let table = &run.table;
    let k = table.categories.len();
    let edges: Vec<f64> = (0..=k).map(|c| c as f64 - 0.5).collect();
    let backgrounds = table
        .background_processes
        .iter()
        .enumerate()
        .map(|(p, n)| {
            (
                n.clone(),
                table.categories.iter().map(|r| r.background_by_process[p]).collect(),
            )
        })
        .collect();
    let signals: Vec<(String, Vec<f64>)> = table
        .signal_processes
        .iter()
        .enumerate()
        .map(|(s, n)| (n.clone(), table.categories.iter().map(|r| r.signal[s]).collect()))
        .collect();
    let category_scale = summary.report.signal_scale.unwrap_or_else(|| {
        auto_signal_scale(
            signals.iter().flat_map(|s| &s.1).sum(),
            table.categories.iter().map(|r| r.background).sum(),
        )
    });
    let figure = Stacked {
        title: if run.sideband.is_some() {
            format!("{label}: yields per category, signal in the mass window")
        } else {
            format!("{label}: yields per category")
        },
        x_desc: "category".into(),
        y_desc: "yield".into(),
        edges,
        backgrounds,
        signals,
        signal_scale: category_scale,
        boundaries: Vec::new(),
        window: None,
        log: summary.report.log_y,
        categories: true,
    };
    plots.extend(writer.write(&figure, name, "categories", "Yields per category"));

    // Training histories of the kept start.
    let marker = Some(run.kept_epoch as f64);
    let anneal = if run.model == "gmm" { "temperature" } else { "steepness" };
    let mut panels = vec![
        panel(
            "loss",
            "loss",
            vec![series("loss", BLACK_LINE, 2, over_epochs(best_history, |r| r.loss))],
            marker,
            PANEL_LEGEND,
        ),
        panel(
            "significance",
            "Z",
            vec![
                series(
                    "soft",
                    signal_colour(0),
                    2,
                    over_epochs(best_history, |r| r.soft_z),
                ),
                series("hard", BLACK_LINE, 2, over_epochs(best_history, |r| r.hard_z)),
            ],
            marker,
            PANEL_LEGEND,
        ),
    ];
    // Only the penalties the objective has.
    let mut penalties = Vec::new();
    if summary.penalties.low_background.is_some() {
        let points = over_epochs(best_history, |r| r.low_background_penalty);
        penalties.push(series("low background", category_colour(0), 2, points));
    }
    if summary.penalties.mc_uncertainty.is_some() {
        let points = over_epochs(best_history, |r| r.mc_uncertainty_penalty);
        penalties.push(series("MC uncertainty", signal_colour(2), 2, points));
    }
    if !penalties.is_empty() {
        panels.push(panel("penalties", "penalty", penalties, marker, PANEL_LEGEND));
    }
    panels.push(panel(
        "learning rate",
        "learning rate",
        vec![series(
            "learning rate",
            BLACK_LINE,
            2,
            over_epochs(best_history, |r| r.learning_rate),
        )],
        marker,
        PANEL_LEGEND,
    ));
    panels.push(panel(
        anneal,
        anneal,
        vec![series(anneal, BLACK_LINE, 2, over_epochs(best_history, |r| r.anneal))],
        marker,
        PANEL_LEGEND,
    ));
    panels.push(bias_panel(&history, run.best_restart));
    plots.extend(writer.write(
        &Panels { panels, columns: 2 },
        name,
        "history",
        &format!(
            "Training history (start {}, kept epoch {})",
            run.best_restart, run.kept_epoch
        ),
    ));
    let mut bias = bias_panel(&history, run.best_restart);
    bias.title = format!("{label}: soft against hard significance");
    bias.legend_width = if history.len() > 1 { LEGEND_WIDTH } else { 0 };
    plots.extend(writer.write(
        &bias,
        name,
        "soft_hard_bias",
        "Soft against hard significance",
    ));

    // 1D cuts over the epochs.
    if best_history.iter().any(|r| r.boundaries.is_some()) {
        let cuts =
            best_history.iter().find_map(|r| r.boundaries.as_ref()).map_or(0, Vec::len);
        let mut lines =
            entry_lines(best_history, cuts, "boundary", |r| r.boundaries.as_ref());
        if let (true, Some(last), Some(cuts)) =
            (run.refined, best_history.last(), &run.boundaries)
        {
            let from = run.kept_epoch as f64;
            lines.extend(final_values("after refinement", cuts, from, last.epoch as f64));
        }
        let mut figure = panel(
            &format!("{label}: boundaries"),
            &saved.discriminants[0],
            lines,
            marker,
            LEGEND_WIDTH,
        );
        figure.title = format!("{label}: boundaries over the epochs");
        plots.extend(writer.write(
            &figure,
            name,
            "boundaries_history",
            "Boundaries over the epochs",
        ));
    }

    // Background yield against MC uncertainty.
    let figure = YieldUncertainty {
        title: format!("{label}: background yield and MC uncertainty per category"),
        points: table
            .categories
            .iter()
            .map(|r| {
                (r.category, r.background, r.relative_mc_uncertainty.unwrap_or(f64::NAN))
            })
            .collect(),
        low_background: summary.penalties.low_background.as_ref().map(|p| p.threshold),
        mc_uncertainty: summary.penalties.mc_uncertainty.as_ref().map(|p| p.threshold),
    };
    plots.extend(writer.write(
        &figure,
        name,
        "yield_vs_uncertainty",
        "Background yield against relative MC uncertainty",
    ));

    // The plane of two discriminants.
    if saved.discriminants.len() == 2 {
        let model = saved.model();
        let ranges = [
            (saved.ranges[0][0], saved.ranges[0][1]),
            (saved.ranges[1][0], saved.ranges[1][1]),
        ];
        let mut xs = Vec::with_capacity(MAP_CELLS * MAP_CELLS);
        let mut ys = Vec::with_capacity(MAP_CELLS * MAP_CELLS);
        for j in 0..MAP_CELLS {
            for i in 0..MAP_CELLS {
                let t = |c: usize, (lo, hi): (f64, f64)| {
                    lo + (hi - lo) * (c as f64 + 0.5) / MAP_CELLS as f64
                };
                xs.push(t(i, ranges[0]));
                ys.push(t(j, ranges[1]));
            }
        }
        let cells = model.assign(&saved.parameters, &[xs, ys]);
        let density = histograms
            .plane
            .as_ref()
            .filter(|p| {
                p.columns
                    == [saved.discriminants[0].clone(), saved.discriminants[1].clone()]
            })
            .map(|p| (p.background.clone(), p.signal.clone(), p.edges[0].len() - 1));
        let figure = CategoryMap {
            title: format!("{label}: categories on the plane"),
            columns: [saved.discriminants[0].clone(), saved.discriminants[1].clone()],
            ranges,
            cells,
            n: MAP_CELLS,
            simplex: saved.simplex,
            density,
        };
        plots.extend(writer.write(
            &figure,
            name,
            "category_map",
            "Hard categories and event density on the plane",
        ));
    }

    // The sideband fits.
    if let Some(sideband) = &run.sideband {
        let range = (sideband.range[0], sideband.range[1]);
        let bins = sideband.edges.len() - 1;
        let width = (range.1 - range.0) / bins as f64;
        let categories: Vec<MassPanel> = sideband
            .categories
            .iter()
            .map(|c| MassPanel {
                background: c.background.clone(),
                sumw2: c.background_sumw2.clone(),
                signal: c.signal.clone(),
                fit: c.fit.map(|fit| {
                    (0..=200)
                        .map(|i| {
                            let m = range.0 + (range.1 - range.0) * i as f64 / 200.0;
                            let (a, b) = (
                                (m - width / 2.0).max(range.0),
                                (m + width / 2.0).min(range.1),
                            );
                            (
                                m,
                                crate::sideband::fitted_yield(&fit, a, b, range) * width
                                    / (b - a),
                            )
                        })
                        .collect()
                }),
                factor: c.factor,
            })
            .collect();
        let signal: f64 = sideband.categories.iter().flat_map(|c| &c.signal).sum();
        let background: f64 =
            sideband.categories.iter().flat_map(|c| &c.background).sum();
        let mass_column =
            histograms.mass.as_ref().map_or("mass".to_string(), |m| m.column.clone());
        let figure = MassCategories {
            title: format!("{label}: background mass spectrum per category with its fit"),
            column: mass_column,
            edges: sideband.edges.clone(),
            window: (sideband.window[0], sideband.window[1]),
            categories,
            signal_scale: summary
                .report
                .signal_scale
                .unwrap_or_else(|| auto_signal_scale(signal, background)),
        };
        plots.extend(writer.write(
            &figure,
            name,
            "mass_categories",
            "Mass spectrum per category with the sideband fit",
        ));
    }

    // Background factors over the epochs.
    if best_history.iter().any(|r| r.background_factors.is_some()) {
        let mut lines =
            entry_lines(best_history, k, "category", |r| r.background_factors.as_ref());
        if let (Some(last), Some(factors)) =
            (best_history.last(), &run.background_factors)
        {
            let from = run.kept_epoch as f64;
            lines.extend(final_values(
                "used in the table",
                factors,
                from,
                last.epoch as f64,
            ));
        }
        let figure = panel(
            &format!("{label}: background factors over the epochs"),
            "background factor",
            lines,
            marker,
            LEGEND_WIDTH,
        );
        plots.extend(writer.write(
            &figure,
            name,
            "background_factors",
            "Background reweighting factors over the epochs",
        ));
    }
    Ok(plots)
}

const BLACK_LINE: RGBColor = RGBColor(0x10, 0x10, 0x10);

/// (soft Z − hard Z) / hard Z over the epochs of every start.
fn bias_panel(history: &[Vec<EpochRecord>], best: usize) -> Lines {
    let lines = history
        .iter()
        .enumerate()
        .map(|(s, records)| {
            let points = over_epochs(records, |r| {
                if r.hard_z > 0.0 { (r.soft_z - r.hard_z) / r.hard_z } else { f64::NAN }
            });
            let (colour, width) =
                if s == best { (BLACK_LINE, 2) } else { (category_colour(s), 1) };
            series(&format!("start {s}"), colour, width, points)
        })
        .collect();
    let mut p = panel(
        "soft − hard bias",
        "(soft Z − hard Z) / hard Z",
        lines,
        None,
        PANEL_LEGEND,
    );
    p.reference = Some(0.0);
    p
}

/// Learnt, equidistant, argmax and DP significance against K.
fn significance_figure(summary: &Summary) -> Lines {
    let ks = |value: &dyn Fn(&RunSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = summary
            .runs
            .iter()
            .filter_map(|r| {
                value(r).filter(|v| v.is_finite()).map(|v| (r.categories as f64, v))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let mut lines = vec![series("learnt", signal_colour(0), 2, ks(&|r| Some(r.table.z)))];
    let equidistant = ks(&|r| Some(r.equidistant.z));
    if !equidistant.is_empty() {
        lines.push(series("equal bins", category_colour(0), 2, equidistant));
    }
    let argmax = ks(&|r| r.argmax.as_ref().map(|a| a.z));
    if !argmax.is_empty() {
        lines.push(series("argmax baseline", signal_colour(2), 2, argmax));
    }
    let dp = ks(&|r| r.dp_optimum.as_ref().map(|d| d.optimum.z));
    if !dp.is_empty() {
        lines.push(series("best binned (DP)", BLACK_LINE, 2, dp));
    }
    Lines {
        title: format!(
            "{}: significance against the number of categories",
            summary.pipeline
        ),
        x_desc: "categories K".into(),
        y_desc: "Z".into(),
        lines,
        marker: None,
        reference: None,
        dots: true,
        integer_x: true,
        legend_width: LEGEND_WIDTH,
    }
}

/// Replaces the characters of a column name that are unsafe in file names.
fn safe_name(column: &str) -> String {
    column
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect()
}
