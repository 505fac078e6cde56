//! [`draw_report`]: every plot of an output directory and `report.html`.

use std::path::{Path, PathBuf};

use plotters::style::RGBColor;

use super::figures::{
    CategoryMap, Line, Lines, MassCategories, MassPanel, Panels, Stacked, YieldUncertainty,
    auto_signal_scale,
};
use super::histograms::Histograms;
use super::{category_colour, signal_colour, write_figure};
use crate::error::{Error, Result};
use crate::model::SavedModel;
use crate::optimize::EpochRecord;
use crate::report::{RunSummary, Summary};

/// Cells per axis of the category map.
const MAP_CELLS: usize = 120;

/// What [`draw_report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// The HTML page.
    pub html: PathBuf,
    /// Every plot file, SVG and PNG.
    pub plots: Vec<PathBuf>,
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

/// Collects written figures and their page entries.
struct Writer<'a> {
    root: &'a Path,
    files: Vec<PathBuf>,
}

impl Writer<'_> {
    /// Writes `figure` as `<sub>/plots/<stem>.{svg,png}` under the output
    /// directory and returns its page entry.
    fn write(
        &mut self,
        figure: &impl super::Figure,
        sub: &str,
        stem: &str,
        title: &str,
    ) -> Result<PagePlot> {
        let rel = if sub.is_empty() { "plots".to_string() } else { format!("{sub}/plots") };
        let dir = self.root.join(&rel);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::output(&dir, format!("cannot create directory: {e}")))?;
        self.files.extend(write_figure(figure, &dir, stem)?);
        Ok(PagePlot { title: title.to_string(), stem: format!("{rel}/{stem}") })
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
    let mut writer = Writer { root: dir, files: Vec::new() };
    let signal_total: f64 = total(&histograms, "signal");
    let background_total: f64 = total(&histograms, "background");
    let scale = summary
        .report
        .signal_scale
        .unwrap_or_else(|| auto_signal_scale(signal_total, background_total));

    let mut overview = Vec::new();
    if !summary.runs.is_empty() {
        overview.push(writer.write(
            &significance_figure(&summary),
            "",
            "significance_vs_categories",
            "Significance against the number of categories",
        )?);
    }
    if let Some(mass) = &histograms.mass {
        let window = summary.runs.iter().find_map(|r| r.sideband.as_ref()).map(|s| (s.window[0], s.window[1]));
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
        overview.push(writer.write(&figure, "", "mass_inclusive", "Mass spectrum of all selected events")?);
    }

    let mut runs = Vec::new();
    for run in &summary.runs {
        let plots = draw_run(&mut writer, &summary, &histograms, run, scale)?;
        runs.push(RunPlots { name: run.name.clone(), plots });
    }
    let html_path = dir.join("report.html");
    let page = super::html::page(&summary, &overview, &runs);
    crate::atomic::write(&html_path, page.as_bytes())?;
    Ok(ReportFiles { html: html_path, plots: writer.files })
}

fn total(histograms: &Histograms, role: &str) -> f64 {
    let Some(h) = histograms.discriminants.first() else { return 0.0 };
    histograms.indices(role).iter().map(|&p| h.sumw[p].iter().sum::<f64>()).sum()
}

/// Names and rows of `values` (one per process) of the processes of `role`.
fn by_role(histograms: &Histograms, role: &str, values: &[Vec<f64>]) -> Vec<(String, Vec<f64>)> {
    histograms
        .indices(role)
        .into_iter()
        .map(|p| (histograms.processes[p].clone(), values[p].clone()))
        .collect()
}

fn read_history(path: &Path) -> Result<Vec<Vec<EpochRecord>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::input(path, format!("cannot read it ({e}); `gato run` writes it with the run"))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(path, format!("not a gato training history: {e}")))
}

fn series(name: &str, colour: RGBColor, width: u32, points: Vec<(f64, f64)>) -> Line {
    Line { name: name.to_string(), colour, width, points }
}

fn over_epochs(history: &[EpochRecord], value: impl Fn(&EpochRecord) -> f64) -> Vec<(f64, f64)> {
    history.iter().map(|r| (r.epoch as f64, value(r))).collect()
}

fn panel(title: &str, y_desc: &str, lines: Vec<Line>, marker: Option<f64>) -> Lines {
    Lines {
        title: title.to_string(),
        x_desc: "epoch".to_string(),
        y_desc: y_desc.to_string(),
        lines,
        marker,
        reference: None,
        dots: false,
    }
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
    let kept = history.get(run.best_restart).map(Vec::as_slice).unwrap_or_default();
    let name = run.name.as_str();
    let mut plots = Vec::new();
    let label = format!("{} {}", summary.pipeline, run.name);

    // The discriminants with the learnt cuts.
    for (d, h) in histograms.discriminants.iter().enumerate() {
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
        plots.push(writer.write(
            &figure,
            name,
            &format!("discriminant_{}", safe_name(&h.column)),
            &format!("{} per process with the category boundaries", h.column),
        )?);
    }

    // The categories as bins.
    let table = &run.table;
    let k = table.categories.len();
    let edges: Vec<f64> = (0..=k).map(|c| c as f64 - 0.5).collect();
    let backgrounds = table
        .background_processes
        .iter()
        .enumerate()
        .map(|(p, n)| (n.clone(), table.categories.iter().map(|r| r.background_by_process[p]).collect()))
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
        title: format!("{label}: yields per category"),
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
    plots.push(writer.write(&figure, name, "categories", "Yields per category")?);

    // Training histories of the kept start.
    let marker = Some(run.kept_epoch as f64);
    let anneal = if run.model == "gmm" { "temperature" } else { "steepness" };
    let mut panels = vec![
        panel("loss", "loss", vec![series("loss", BLACK_LINE, 2, over_epochs(kept, |r| r.loss))], marker),
        panel(
            "significance",
            "Z",
            vec![
                series("soft", signal_colour(0), 2, over_epochs(kept, |r| r.soft_z)),
                series("hard", BLACK_LINE, 2, over_epochs(kept, |r| r.hard_z)),
            ],
            marker,
        ),
        panel(
            "penalties",
            "penalty",
            vec![
                series("low background", category_colour(0), 2, over_epochs(kept, |r| r.low_background_penalty)),
                series("MC uncertainty", signal_colour(2), 2, over_epochs(kept, |r| r.mc_uncertainty_penalty)),
            ],
            marker,
        ),
        panel("learning rate", "learning rate", vec![series("learning rate", BLACK_LINE, 2, over_epochs(kept, |r| r.learning_rate))], marker),
        panel(anneal, anneal, vec![series(anneal, BLACK_LINE, 2, over_epochs(kept, |r| r.anneal))], marker),
    ];
    panels.push(bias_panel(&history, run.best_restart));
    plots.push(writer.write(
        &Panels { panels, columns: 2 },
        name,
        "history",
        &format!("Training history (start {}, kept epoch {})", run.best_restart, run.kept_epoch),
    )?);
    let mut bias = bias_panel(&history, run.best_restart);
    bias.title = format!("{label}: soft against hard significance");
    plots.push(writer.write(&bias, name, "soft_hard_bias", "Soft against hard significance")?);

    // 1D cuts over the epochs.
    if kept.iter().any(|r| r.boundaries.is_some()) {
        let cuts = kept.iter().find_map(|r| r.boundaries.as_ref()).map_or(0, Vec::len);
        let lines = (0..cuts)
            .map(|c| {
                let points = kept
                    .iter()
                    .filter_map(|r| r.boundaries.as_ref().and_then(|b| b.get(c)).map(|&v| (r.epoch as f64, v)))
                    .collect();
                series(&format!("boundary {c}"), category_colour(c), 2, points)
            })
            .collect();
        let mut figure = panel(&format!("{label}: boundaries"), &saved.discriminants[0], lines, marker);
        figure.title = format!("{label}: boundaries over the epochs");
        plots.push(writer.write(&figure, name, "boundaries_history", "Boundaries over the epochs")?);
    }

    // Background yield against MC uncertainty.
    let figure = YieldUncertainty {
        title: format!("{label}: background yield and MC uncertainty per category"),
        points: table
            .categories
            .iter()
            .map(|r| (r.category, r.background, r.relative_mc_uncertainty.unwrap_or(f64::NAN)))
            .collect(),
        low_background: summary.penalties.low_background.as_ref().map(|p| p.threshold),
        mc_uncertainty: summary.penalties.mc_uncertainty.as_ref().map(|p| p.threshold),
    };
    plots.push(writer.write(&figure, name, "yield_vs_uncertainty", "Background yield against relative MC uncertainty")?);

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
                let t = |c: usize, (lo, hi): (f64, f64)| lo + (hi - lo) * (c as f64 + 0.5) / MAP_CELLS as f64;
                xs.push(t(i, ranges[0]));
                ys.push(t(j, ranges[1]));
            }
        }
        let cells = model.assign(&saved.parameters, &[xs, ys]);
        let density = histograms.plane.as_ref().filter(|p| p.columns == [saved.discriminants[0].clone(), saved.discriminants[1].clone()]).map(|p| {
            (p.background.clone(), p.signal.clone(), p.edges[0].len() - 1)
        });
        let figure = CategoryMap {
            title: format!("{label}: categories on the plane"),
            columns: [saved.discriminants[0].clone(), saved.discriminants[1].clone()],
            ranges,
            cells,
            n: MAP_CELLS,
            density,
        };
        plots.push(writer.write(&figure, name, "category_map", "Hard categories and event density on the plane")?);
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
                            let (a, b) = ((m - width / 2.0).max(range.0), (m + width / 2.0).min(range.1));
                            (m, crate::sideband::fitted_yield(&fit, a, b, range) * width / (b - a))
                        })
                        .collect()
                }),
                factor: c.factor,
            })
            .collect();
        let signal: f64 = sideband.categories.iter().flat_map(|c| &c.signal).sum();
        let background: f64 = sideband.categories.iter().flat_map(|c| &c.background).sum();
        let mass_column = histograms.mass.as_ref().map_or("mass".to_string(), |m| m.column.clone());
        let figure = MassCategories {
            title: format!("{label}: background mass spectrum per category with its fit"),
            column: mass_column,
            edges: sideband.edges.clone(),
            window: (sideband.window[0], sideband.window[1]),
            categories,
            signal_scale: summary.report.signal_scale.unwrap_or_else(|| auto_signal_scale(signal, background)),
        };
        plots.push(writer.write(&figure, name, "mass_categories", "Mass spectrum per category with the sideband fit")?);
    }

    // Background factors over the epochs.
    if kept.iter().any(|r| r.background_factors.is_some()) {
        let lines = (0..k)
            .map(|c| {
                let points = kept
                    .iter()
                    .filter_map(|r| r.background_factors.as_ref().and_then(|f| f.get(c)).map(|&v| (r.epoch as f64, v)))
                    .collect();
                series(&format!("category {c}"), category_colour(c), 2, points)
            })
            .collect();
        let mut figure = panel(&format!("{label}: background factors over the epochs"), "background factor", lines, marker);
        figure.dots = false;
        plots.push(writer.write(&figure, name, "background_factors", "Background reweighting factors over the epochs")?);
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
            let (colour, width) = if s == best { (BLACK_LINE, 2) } else { (category_colour(s), 1) };
            series(&format!("start {s}"), colour, width, points)
        })
        .collect();
    let mut p = panel("soft − hard bias", "(soft Z − hard Z) / hard Z", lines, None);
    p.reference = Some(0.0);
    p
}

/// Learnt, equidistant, argmax and DP significance against K.
fn significance_figure(summary: &Summary) -> Lines {
    let ks = |value: &dyn Fn(&RunSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = summary
            .runs
            .iter()
            .filter_map(|r| value(r).filter(|v| v.is_finite()).map(|v| (r.categories as f64, v)))
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
        lines.push(series("DP optimum", BLACK_LINE, 2, dp));
    }
    Lines {
        title: format!("{}: significance against the number of categories", summary.pipeline),
        x_desc: "categories K".into(),
        y_desc: "Z".into(),
        lines,
        marker: None,
        reference: None,
        dots: true,
    }
}

/// A column name made safe for a file name.
fn safe_name(column: &str) -> String {
    column
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect()
}
