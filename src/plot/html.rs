//! `report.html`: one page with the pipeline, the tables and the plots.
//!
//! The page needs no network: styles and its one script are inline, and
//! the plots are the PNG files beside it, each linked to its SVG.

use std::fmt::Write as _;

use super::outputs::{PagePlot, RunPlots};
use crate::report::{RunSummary, Summary};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Formats a number for a table cell, with "–" for NaN.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), num)
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;margin:2em auto;max-width:1500px;\
padding:0 1em;color:#1a1a1a}table{border-collapse:collapse;margin:0.6em 0 1.4em}\
th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}th{background:#eef1f6}\
td.l,th.l{text-align:left}figure{display:inline-block;margin:0.5em;vertical-align:top}\
figure img{max-width:720px;border:1px solid #ddd}figcaption{font-size:0.9em}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto}#image-status{color:#b00000}";

/// Sets `data-images` and `data-images-failed` on the body once the page
/// has loaded, and shows a message on the page when plots did not load.
const SCRIPT: &str = "window.addEventListener('load',function(){\
var images=document.querySelectorAll('img');var failed=0;\
images.forEach(function(img){if(!(img.complete&&img.naturalWidth>0)){failed+=1;}});\
document.body.setAttribute('data-images',String(images.length));\
document.body.setAttribute('data-images-failed',String(failed));\
if(failed>0){document.getElementById('image-status').textContent=failed+' of '+\
images.length+' plots did not load: keep report.html beside the plots directories, \
or run gato report on this directory.';}});";

fn figures(out: &mut String, plots: &[PagePlot]) {
    for p in plots {
        let _ = write!(
            out,
            "<figure><a href=\"{stem}.svg\"><img src=\"{stem}.png\" alt=\"{title}\"></a>\
             <figcaption>{title} (<a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>\n",
            stem = esc(&p.stem),
            title = esc(&p.title)
        );
    }
}

fn comparison(out: &mut String, summary: &Summary) {
    let signals = summary
        .runs
        .first()
        .map(|r| r.table.signal_processes.clone())
        .unwrap_or_default();
    out.push_str("<table><tr><th class=\"l\">run</th><th>K</th><th>Z learnt</th>");
    for s in &signals {
        let _ = write!(out, "<th>Z {}</th>", esc(s));
    }
    out.push_str(
        "<th>Z equal bins</th><th>Z argmax</th><th>Z best binned (DP)</th><th>Z trained</th>\
         <th>refined</th><th>soft − hard bias</th><th>constraints met</th></tr>\n",
    );
    for r in &summary.runs {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td>",
            esc(&r.name),
            r.categories,
            num(r.table.z)
        );
        for z in &r.table.z_per_signal {
            let _ = write!(out, "<td>{}</td>", num(*z));
        }
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            num(r.equidistant.z),
            opt(r.argmax.as_ref().map(|a| a.z)),
            opt(r.dp_optimum.as_ref().map(|d| d.optimum.z)),
            num(r.trained_z),
            if r.refined { "yes" } else { "no" },
            num(r.soft_hard_bias),
            if r.meets_constraints { "yes" } else { "no" }
        );
    }
    out.push_str("</table>\n");
}

fn category_table(out: &mut String, run: &RunSummary) {
    let t = &run.table;
    out.push_str("<table><tr><th>category</th><th class=\"l\">region</th>");
    for s in &t.signal_processes {
        let _ = write!(out, "<th>{}</th>", esc(s));
    }
    out.push_str("<th>background</th><th>√Σw² / B</th><th>MC events</th>");
    if run.background_factors.is_some() {
        out.push_str("<th>background factor</th>");
    }
    for s in &t.signal_processes {
        let _ = write!(out, "<th>Z {}</th>", esc(s));
    }
    out.push_str("</tr>\n");
    let last = t.categories.len().saturating_sub(1);
    for row in &t.categories {
        let region = match (&row.cell, row.lower, row.upper) {
            // The last 1D category includes its upper edge, as in the terminal table.
            (None, Some(a), Some(b)) if row.category == last => {
                format!("[{}, {}]", num(a), num(b))
            }
            (Some(cell), _, _) => cell
                .iter()
                .map(|[a, b]| format!("[{}, {})", num(*a), num(*b)))
                .collect::<Vec<_>>()
                .join(" × "),
            (None, Some(a), Some(b)) => format!("[{}, {})", num(a), num(b)),
            _ => "–".into(),
        };
        let _ =
            write!(out, "<tr><td>{}</td><td class=\"l\">{}</td>", row.category, region);
        for s in &row.signal {
            let _ = write!(out, "<td>{}</td>", num(*s));
        }
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td>",
            num(row.background),
            opt(row.relative_mc_uncertainty),
            row.background_events
        );
        if run.background_factors.is_some() {
            let _ = write!(out, "<td>{}</td>", opt(row.background_factor));
        }
        for z in &row.z {
            let _ = write!(out, "<td>{}</td>", num(*z));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Builds the whole page.
pub(super) fn page(
    summary: &Summary,
    overview: &[PagePlot],
    runs: &[RunPlots],
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>gato report: {name}</title><style>{STYLE}</style></head><body>\n\
         <h1>{name}</h1>\n<p>gato {gato} (burn {burn}, DataFusion {df}); device {device}; \
         seed {seed}; pipeline file <code>{origin}</code>; select {select:.1} s, train \
         {train:.1} s, evaluate {evaluate:.1} s, apply {apply:.1} s, total {total:.1} s.</p>\n\
         <p id=\"image-status\"></p>\n",
        name = esc(&summary.pipeline),
        gato = esc(&summary.versions.gato),
        burn = esc(&summary.versions.burn),
        df = esc(&summary.versions.datafusion),
        device = esc(&summary.device),
        seed = summary.seed,
        origin = esc(&summary.pipeline_origin),
        select = summary.timings_s.select,
        train = summary.timings_s.train,
        evaluate = summary.timings_s.evaluate,
        apply = summary.timings_s.apply,
        total = summary.timings_s.total,
    );
    if !summary.warnings.is_empty() {
        out.push_str("<h2>Warnings</h2>\n<ul>\n");
        for warning in &summary.warnings {
            let _ = writeln!(out, "<li>{}</li>", esc(warning));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Processes</h2>\n<table><tr><th class=\"l\">process</th><th class=\"l\">role</th><th>events</th><th>yield</th></tr>\n");
    for p in &summary.processes {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.role),
            p.events,
            num(p.event_yield)
        );
    }
    out.push_str("</table>\n<h2>Significance</h2>\n");
    if let Some(r) = summary.runs.first() {
        let combined = if r.table.signal_processes.len() > 1 {
            format!("; the signals' Z are combined by the {}", esc(&r.combine))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<p>Asimov significance ({}){combined}. Every Z is of hard categories, \
             evaluated exactly on the events. Best binned: the best K contiguous groups \
             of a fine histogram, found by dynamic programming.</p>",
            esc(&r.significance_formula),
        );
    }
    comparison(&mut out, summary);
    figures(&mut out, overview);
    for (run, plots) in summary.runs.iter().zip(runs) {
        let _ = writeln!(
            out,
            "<h2 id=\"{id}\">{id}</h2>\n<p>{model}, {k} categories; start {start} of {starts} kept, \
             epoch {epoch}; model file <code>{file}</code>.</p>",
            id = esc(&plots.name),
            model = esc(&run.model),
            k = run.categories,
            start = run.best_restart,
            starts = run.restarts.len(),
            epoch = run.kept_epoch,
            file = esc(&run.model_file),
        );
        category_table(&mut out, run);
        figures(&mut out, &plots.plots);
    }
    let _ = write!(
        out,
        "<h2>Pipeline</h2>\n<pre>{}</pre>\n<script>{SCRIPT}</script>\n</body></html>\n",
        esc(&summary.pipeline_text)
    );
    out
}
