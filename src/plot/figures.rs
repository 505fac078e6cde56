//! The figures: stacked histograms, histories, category maps, significance
//! comparisons, yield against MC uncertainty and mass spectra.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{
    BOUNDARY, CAPTION_HEIGHT, DrawResult, FAMILY, Figure, LEGEND_WIDTH, MARGIN,
    X_LABEL_AREA, Y_LABEL_AREA, background_colour, category_colour, signal_colour,
};

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

const WINDOW: RGBColor = RGBColor(0x60, 0x60, 0x60);
const FIT: RGBColor = RGBColor(0x1f, 0x4e, 0xa0);

/// Superscript form of an integer, for axis labels such as 10³.
fn superscript(n: i64) -> String {
    n.to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            _ => '⁹',
        })
        .collect()
}

/// Label of a tick on a log10 axis: 10ⁿ at integers, nothing between.
fn pow10_label(v: f64) -> String {
    let n = v.round();
    if (v - n).abs() < 1e-6 {
        format!("10{}", superscript(n as i64))
    } else {
        String::new()
    }
}

/// Label of a tick on an axis of category numbers: integers only.
fn integer_label(v: f64) -> String {
    let n = v.round();
    if (v - n).abs() < 1e-6 && n >= 0.0 { format!("{}", n as i64) } else { String::new() }
}

/// Formats a factor compactly: 100, 0.5, 2.5e7.
fn scale_text(v: f64) -> String {
    if (1e-3..1e5).contains(&v.abs()) { tick_label(v) } else { format!("{v:.3e}") }
}

/// Formats a tick value with at most four decimals.
fn tick_label(v: f64) -> String {
    // Tick positions computed in floating point land near zero.
    if v.abs() < 1e-12 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Formats a tick value on an axis over `range`, with as many decimals as
/// ten ticks on that range need.
fn tick_in(v: f64, (lo, hi): (f64, f64)) -> String {
    let step = (hi - lo) / 10.0;
    // Tick positions computed in floating point land near, not on, zero.
    if v.abs() < step * 1e-9 {
        return "0".into();
    }
    let magnitude = lo.abs().max(hi.abs());
    if magnitude >= 1e6 || magnitude < 1e-3 {
        return format!("{v:.3e}");
    }
    let decimals = (-(step.log10())).ceil().clamp(0.0, 14.0) as usize + 1;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Largest magnitude of an axis end; plotters cannot place ticks on
/// ranges near the float64 limit.
const AXIS_LIMIT: f64 = 1e200;

/// Checks that an axis range can be drawn.
fn check_range(
    axis: &str,
    (lo, hi): (f64, f64),
) -> Result<(), Box<dyn std::error::Error>> {
    let drawable = lo.is_finite()
        && hi.is_finite()
        && lo.abs() < AXIS_LIMIT
        && hi.abs() < AXIS_LIMIT
        && hi - lo > 1e-12 * lo.abs().max(hi.abs());
    if drawable {
        Ok(())
    } else {
        Err(format!("the {axis} axis would span [{lo}, {hi}], which cannot be drawn")
            .into())
    }
}

/// A vertical axis, linear or log10: values are drawn at `map(v)`.
#[derive(Debug, Clone, Copy)]
struct YAxis {
    log: bool,
    lo: f64,
    hi: f64,
}

impl YAxis {
    /// Builds an axis that shows values up to `max` (and down to
    /// `min_positive`, at most five decades below `max`, on a log axis).
    fn new(log: bool, min_positive: f64, max: f64) -> YAxis {
        let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
        if log {
            let hi = max.log10() + 0.3;
            let lo = if min_positive.is_finite() && min_positive > 0.0 {
                min_positive.log10().floor().max((max.log10() - 5.0).floor())
            } else {
                hi - 4.0
            };
            YAxis { log, lo, hi }
        } else {
            YAxis { log, lo: 0.0, hi: 1.1 * max }
        }
    }

    fn map(&self, v: f64) -> f64 {
        if self.log {
            if v > 0.0 { v.log10().max(self.lo) } else { self.lo }
        } else {
            v.clamp(self.lo, self.hi)
        }
    }
}

/// Returns the range `[lo, hi]` of the finite values, padded by 5 %.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * lo.abs().max(1e-12) {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        return (lo - pad, hi + pad);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn build_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, DB>, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    check_range("horizontal", x)?;
    check_range("vertical", y)?;
    let chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    Ok(chart)
}

/// Draws the axes: labels as `x_label` and `y_label` format them.
fn draw_axes<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    x_desc: &str,
    y_desc: &str,
    x_label: &dyn Fn(&f64) -> String,
    y_label: &dyn Fn(&f64) -> String,
    x_ticks: usize,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(x_ticks)
        .y_labels(10)
        .x_label_formatter(x_label)
        .y_label_formatter(y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()?;
    Ok(())
}

fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 13))
        .draw()?;
    Ok(())
}

/// Draws a vertical line across the chart.
fn vertical<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    x: f64,
    y: (f64, f64),
    style: ShapeStyle,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(x, y.0), (x, y.1)],
        style,
    )))?;
    Ok(())
}

/// Chooses the signal scale: a power of ten that brings the total signal
/// near a tenth of the total background.
pub fn auto_signal_scale(signal: f64, background: f64) -> f64 {
    if !(signal > 0.0 && background > 0.0) {
        return 1.0;
    }
    let exponent = (background / signal / 10.0).log10().floor();
    10f64.powf(exponent.max(0.0))
}

fn scale_label(name: &str, scale: f64) -> String {
    if scale == 1.0 {
        name.to_string()
    } else {
        format!("{name} ×{}", scale_text(scale))
    }
}

/// Stacked backgrounds with signal lines on top, over bins.
pub struct Stacked {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// Bin edges.
    pub edges: Vec<f64>,
    /// Name and yield per bin of each background process, bottom first.
    pub backgrounds: Vec<(String, Vec<f64>)>,
    /// Name and yield per bin of each signal process, unscaled.
    pub signals: Vec<(String, Vec<f64>)>,
    /// Factor on the signal lines.
    pub signal_scale: f64,
    /// Category boundaries, drawn as vertical lines.
    pub boundaries: Vec<f64>,
    /// A mass window, drawn as two grey lines.
    pub window: Option<(f64, f64)>,
    pub log: bool,
    /// Whether the bins are categories (integer labels).
    pub categories: bool,
}

impl Figure for Stacked {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (plot, legend_area) = split_legend(root, LEGEND_WIDTH);
        let bins = self.edges.len() - 1;
        let mut tops = vec![0.0f64; bins];
        let mut stacks = Vec::new();
        for (_, yields) in &self.backgrounds {
            let bottom = tops.clone();
            for (t, y) in tops.iter_mut().zip(yields) {
                *t += y.max(0.0);
            }
            stacks.push((bottom, tops.clone()));
        }

        let scaled: Vec<Vec<f64>> = self
            .signals
            .iter()
            .map(|(_, y)| y.iter().map(|v| v * self.signal_scale).collect())
            .collect();

        // The log axis reaches down to the smallest single contribution, so
        // a small process at the bottom of the stack stays visible.
        let max =
            tops.iter().chain(scaled.iter().flatten()).copied().fold(0.0f64, f64::max);
        let min_positive = self
            .backgrounds
            .iter()
            .flat_map(|(_, y)| y.iter())
            .chain(scaled.iter().flatten())
            .copied()
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let y = YAxis::new(self.log, min_positive, max);
        let x = (self.edges[0], self.edges[bins]);
        let mut chart = build_chart(&plot, &self.title, x, (y.lo, y.hi))?;
        let pow10 = |v: &f64| pow10_label(*v);
        let plain = |v: &f64| tick_in(*v, x);
        let y_plain = |v: &f64| tick_in(*v, (y.lo, y.hi));
        let integer = |v: &f64| integer_label(*v);
        let x_label: &dyn Fn(&f64) -> String =
            if self.categories { &integer } else { &plain };
        let y_label: &dyn Fn(&f64) -> String = if self.log { &pow10 } else { &y_plain };
        let x_ticks = if self.categories { (bins + 1).min(21) } else { 10 };
        draw_axes(&mut chart, &self.x_desc, &self.y_desc, x_label, y_label, x_ticks)?;

        let mut legend = Vec::new();
        for (p, ((name, yields), (bottom, top))) in
            self.backgrounds.iter().zip(&stacks).enumerate()
        {
            let colour = background_colour(p);
            let rects = (0..bins).filter(|&b| top[b] > bottom[b]).map(|b| {
                Rectangle::new(
                    [
                        (self.edges[b], y.map(bottom[b])),
                        (self.edges[b + 1], y.map(top[b])),
                    ],
                    colour.filled(),
                )
            });
            chart.draw_series(rects)?;
            // Bins with a negative yield cannot be stacked, so the legend
            // notes that they are left out.
            let label = if yields.iter().any(|&v| v < 0.0) {
                format!("{name} (negative bins left out)")
            } else {
                name.clone()
            };
            legend.push((label, Mark::Fill(colour)));
        }

        for (s, ((name, _), values)) in self.signals.iter().zip(&scaled).enumerate() {
            let colour = signal_colour(s);
            let mut points = Vec::with_capacity(2 * bins);
            for b in 0..bins {
                points.push((self.edges[b], y.map(values[b])));
                points.push((self.edges[b + 1], y.map(values[b])));
            }
            let style = colour.stroke_width(2);
            chart.draw_series(std::iter::once(PathElement::new(points, style)))?;
            legend.push((scale_label(name, self.signal_scale), Mark::Line(style)));
        }

        for &b in &self.boundaries {
            vertical(&mut chart, b, (y.lo, y.hi), BOUNDARY.stroke_width(2))?;
        }
        if !self.boundaries.is_empty() {
            legend
                .push(("category boundary".into(), Mark::Line(BOUNDARY.stroke_width(2))));
        }
        if let Some((lo, hi)) = self.window {
            for m in [lo, hi] {
                vertical(&mut chart, m, (y.lo, y.hi), WINDOW.stroke_width(1))?;
            }
            legend.push(("mass window".into(), Mark::Line(WINDOW.stroke_width(1))));
        }
        draw_side_legend(&legend_area, &legend)
    }
}

/// Symbol of a legend entry.
enum Mark {
    Fill(RGBColor),
    Line(ShapeStyle),
}

/// Splits `root` into the chart and a legend column `width` pixels wide on
/// its right.
fn split_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    width: u32,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let total = root.dim_in_pixel().0;
    root.split_horizontally(total.saturating_sub(width))
}

/// Draws legend entries one per row in `area`, level with the chart's top.
fn draw_side_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Mark)],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let top = (MARGIN + CAPTION_HEIGHT + 10) as i32;
    let rows = ((area.dim_in_pixel().1 as i32 - top) / 22).max(1) as usize;
    let listed = if entries.len() > rows { rows - 1 } else { entries.len() };
    if listed < entries.len() {
        let y = top + 22 * listed as i32;
        let more = format!("… and {} more", entries.len() - listed);
        area.draw(&Text::new(more, (26, y - 8), (FAMILY, 14)))?;
    }
    for (i, (label, mark)) in entries.iter().take(listed).enumerate() {
        let y = top + 22 * i as i32;
        match mark {
            Mark::Fill(colour) => {
                area.draw(&Rectangle::new([(4, y - 6), (20, y + 6)], colour.filled()))?
            }
            Mark::Line(style) => {
                area.draw(&PathElement::new(vec![(4, y), (20, y)], *style))?
            }
        }
        area.draw(&Text::new(label.clone(), (26, y - 8), (FAMILY, 14)))?;
    }
    Ok(())
}

/// One line of a [`Lines`] panel.
pub struct Line {
    pub name: String,
    pub colour: RGBColor,
    pub width: u32,
    pub points: Vec<(f64, f64)>,
    /// Whether the legend lists the line; lines that share a name list it
    /// once.
    pub legend: bool,
}

/// A panel of lines against the epoch (or another x).
pub struct Lines {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub lines: Vec<Line>,
    /// A vertical marker, such as the kept epoch, and its legend label.
    pub marker: Option<(f64, String)>,
    /// A horizontal reference line.
    pub reference: Option<f64>,
    /// Draw each point as a dot too.
    pub dots: bool,
    /// Label the x axis with integers only.
    pub integer_x: bool,
    /// Width of the legend column; 0 for none.
    pub legend_width: u32,
}

impl Lines {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (area, legend_area) = split_legend(root, self.legend_width);
        let points = || self.lines.iter().flat_map(|l| l.points.iter());
        let x = padded_range(points().map(|p| p.0));
        let y = padded_range(points().map(|p| p.1).chain(self.reference));
        let mut chart = build_chart(&area, &self.title, x, y)?;
        let plain = |v: &f64| tick_in(*v, x);
        let y_plain = |v: &f64| tick_in(*v, y);
        let integer = |v: &f64| integer_label(*v);
        let x_label: &dyn Fn(&f64) -> String =
            if self.integer_x { &integer } else { &plain };
        draw_axes(&mut chart, &self.x_desc, &self.y_desc, x_label, &y_plain, 8)?;

        let mut legend = Vec::new();
        if let Some(r) = self.reference {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x.0, r), (x.1, r)],
                WINDOW.stroke_width(1),
            )))?;
        }
        if let Some((m, label)) =
            self.marker.as_ref().filter(|(m, _)| (x.0..=x.1).contains(m))
        {
            let style = WINDOW.mix(0.6).stroke_width(1);
            vertical(&mut chart, *m, y, style)?;
            legend.push((label.clone(), Mark::Line(style)));
        }

        for line in &self.lines {
            let finite: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            let style = line.colour.stroke_width(line.width);
            chart
                .draw_series(std::iter::once(PathElement::new(finite.clone(), style)))?;
            if line.legend {
                legend.push((line.name.clone(), Mark::Line(style)));
            }
            if self.dots {
                chart.draw_series(
                    finite.iter().map(|&p| Circle::new(p, 4, line.colour.filled())),
                )?;
            }
        }
        if self.legend_width > 0 {
            draw_side_legend(&legend_area, &legend)?;
        }
        Ok(())
    }
}

impl Figure for Lines {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        self.draw_on(root)
    }
}

/// Several [`Lines`] panels on a grid.
pub struct Panels {
    pub panels: Vec<Lines>,
    pub columns: usize,
}

impl Figure for Panels {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns) as u32;
        (560 * self.columns as u32, 360 * rows)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let rows = self.panels.len().div_ceil(self.columns);
        let areas = root.split_evenly((rows, self.columns));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw_on(area)?;
        }
        Ok(())
    }
}

/// Background yield against relative MC uncertainty, one dot per category.
pub struct YieldUncertainty {
    pub title: String,
    /// (category, background yield, relative MC uncertainty).
    pub points: Vec<(usize, f64, f64)>,
    /// Low-background threshold, drawn as a vertical line.
    pub low_background: Option<f64>,
    /// Largest relative MC uncertainty, drawn as a horizontal line.
    pub mc_uncertainty: Option<f64>,
}

impl Figure for YieldUncertainty {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let xs = || {
            self.points
                .iter()
                .map(|p| p.1)
                .chain(self.low_background.filter(|&t| t > 0.0))
                .filter(|&b| b > 0.0)
                .map(f64::log10)
        };
        let (lo, hi) = padded_range(xs());
        let x = (lo.floor().min(lo - 0.2), hi.ceil().max(hi + 0.2));
        let ys = self.points.iter().map(|p| p.2).chain(self.mc_uncertainty);
        let top = ys.fold(0.0f64, f64::max);
        let y = (0.0, if top > 0.0 { top * 1.25 } else { 1.0 });

        let hidden =
            self.points.iter().filter(|p| !(p.1 > 0.0 && p.2.is_finite())).count();
        let title = if hidden > 0 {
            format!("{} ({hidden} with no positive background not shown)", self.title)
        } else {
            self.title.clone()
        };
        let mut chart = build_chart(root, &title, x, y)?;
        let pow10 = |v: &f64| pow10_label(*v);
        let plain = |v: &f64| tick_in(*v, y);
        draw_axes(
            &mut chart,
            "background yield",
            "relative MC uncertainty √Σw² / B",
            &pow10,
            &plain,
            10,
        )?;
        if let Some(t) = self.low_background.filter(|&t| t > 0.0) {
            vertical(&mut chart, t.log10(), y, WINDOW.stroke_width(1))?;
        }
        if let Some(t) = self.mc_uncertainty {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x.0, t), (x.1, t)],
                WINDOW.stroke_width(1),
            )))?;
        }
        let drawable: Vec<(usize, f64, f64)> = self
            .points
            .iter()
            .copied()
            .filter(|p| p.1 > 0.0 && p.2.is_finite())
            .collect();
        chart.draw_series(drawable.iter().map(|&(k, b, u)| {
            EmptyElement::at((b.log10(), u))
                + Circle::new((0, 0), 5, category_colour(k).filled())
                + Circle::new((0, 0), 5, BLACK.stroke_width(1))
                + Text::new(format!("{k}"), (7, -14), (FAMILY, 13))
        }))?;
        Ok(())
    }
}

/// The hard categories on the plane of two discriminants, beside the
/// density of background and signal events.
pub struct CategoryMap {
    pub title: String,
    pub columns: [String; 2],
    /// `[low, high]` of each axis.
    pub ranges: [(f64, f64); 2],
    /// Category of each cell of an n × n grid, row-major from the bottom
    /// row, the horizontal index fastest.
    pub cells: Vec<u32>,
    pub n: usize,
    /// Whether the discriminants are softmax scores, so that points with
    /// x + y > 1 cannot occur; those cells are drawn grey.
    pub simplex: bool,
    /// Background and signal Σw on a m × m grid, same layout, with m.
    pub density: Option<(Vec<f64>, Vec<f64>, usize)>,
}

/// Fill of map cells that no event can reach.
const UNREACHABLE: RGBColor = RGBColor(0xee, 0xee, 0xee);

impl CategoryMap {
    /// Category of cell (i, j) of the map, or `None` where no event can be.
    fn cell(&self, i: usize, j: usize) -> Option<u32> {
        let n = self.n;
        if self.simplex {
            let [a, b] = self.cell_rect(n, i, j);
            if (a.0 + b.0) / 2.0 + (a.1 + b.1) / 2.0 > 1.0 {
                return None;
            }
        }
        Some(self.cells[j * n + i])
    }
    fn cell_rect(&self, n: usize, i: usize, j: usize) -> [(f64, f64); 2] {
        let [(x0, x1), (y0, y1)] = self.ranges;
        let (dx, dy) = ((x1 - x0) / n as f64, (y1 - y0) / n as f64);
        [
            (x0 + dx * i as f64, y0 + dy * j as f64),
            (x0 + dx * (i + 1) as f64, y0 + dy * (j + 1) as f64),
        ]
    }

    /// Lines between neighbouring reachable cells of different categories.
    fn borders(&self) -> Vec<PathElement<(f64, f64)>> {
        let n = self.n;
        let mut out = Vec::new();
        for j in 0..n {
            for i in 0..n {
                let Some(c) = self.cell(i, j) else { continue };
                let [(left, bottom), (right, top)] = self.cell_rect(n, i, j);
                if i + 1 < n && self.cell(i + 1, j).is_some_and(|d| d != c) {
                    out.push(PathElement::new(
                        vec![(right, bottom), (right, top)],
                        BLACK.stroke_width(1),
                    ));
                }
                if j + 1 < n && self.cell(i, j + 1).is_some_and(|d| d != c) {
                    out.push(PathElement::new(
                        vec![(left, top), (right, top)],
                        BLACK.stroke_width(1),
                    ));
                }
            }
        }
        out
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        title: &str,
        fill: &dyn Fn(&mut Chart<'_, DB>) -> DrawResult,
    ) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let [x, y] = self.ranges;
        let mut chart = build_chart(area, title, x, y)?;
        fill(&mut chart)?;
        let plain = |v: &f64| tick_in(*v, x);
        let y_plain = |v: &f64| tick_in(*v, y);
        draw_axes(&mut chart, &self.columns[0], &self.columns[1], &plain, &y_plain, 6)?;
        chart.draw_series(self.borders())?;
        Ok(())
    }
}

/// Fills `root` white, writes `title` across its top and returns the area
/// below the title.
fn titled_body<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<DrawingArea<DB, Shift>, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(CAPTION_HEIGHT);
    top.titled(title, (FAMILY, 18))?;
    Ok(body)
}

/// Maps a density to a colour between white and `ink`, on a log scale.
fn density_colour(value: f64, lo: f64, hi: f64, ink: RGBColor) -> RGBColor {
    if value <= 0.0 {
        return WHITE;
    }
    let t =
        if hi > lo { ((value.log10() - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 1.0 };
    let t = 0.15 + 0.85 * t;
    let mix = |c: u8| (255.0 - t * (255.0 - c as f64)).round() as u8;
    RGBColor(mix(ink.0), mix(ink.1), mix(ink.2))
}

impl Figure for CategoryMap {
    fn size(&self) -> (u32, u32) {
        let panels = if self.density.is_some() { 3 } else { 1 };
        (520 * panels, 540)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let body = titled_body(root, &self.title)?;
        let panels = if self.density.is_some() { 3 } else { 1 };
        let areas = body.split_evenly((1, panels));
        let n = self.n;
        let k = self.cells.iter().copied().max().unwrap_or(0) as usize + 1;

        // Runs of equal cells along each row become one rectangle.
        let categories = |chart: &mut Chart<'_, DB>| -> DrawResult {
            let mut rects = Vec::new();
            for j in 0..n {
                let mut i = 0;
                while i < n {
                    let c = self.cell(i, j);
                    let start = i;
                    while i < n && self.cell(i, j) == c {
                        i += 1;
                    }
                    let [a, _] = self.cell_rect(n, start, j);
                    let [_, b] = self.cell_rect(n, i - 1, j);
                    let fill = c.map_or(UNREACHABLE, |c| category_colour(c as usize));
                    rects.push(Rectangle::new([a, b], fill.filled()));
                }
            }
            chart.draw_series(rects)?;

            // Each category's number at the mean position of its cells.
            let mut sums = vec![(0.0, 0.0, 0usize); k];
            for j in 0..n {
                for i in 0..n {
                    let Some(c) = self.cell(i, j) else { continue };
                    let [a, b] = self.cell_rect(n, i, j);
                    let s = &mut sums[c as usize];
                    s.0 += (a.0 + b.0) / 2.0;
                    s.1 += (a.1 + b.1) / 2.0;
                    s.2 += 1;
                }
            }
            chart.draw_series(sums.iter().enumerate().filter(|(_, s)| s.2 > 0).map(
                |(c, s)| {
                    Text::new(
                        format!("{c}"),
                        (s.0 / s.2 as f64, s.1 / s.2 as f64),
                        (FAMILY, 16).into_font().color(&BLACK),
                    )
                },
            ))?;
            Ok(())
        };
        self.panel(&areas[0], "hard categories", &categories)?;

        if let Some((background, signal, m)) = &self.density {
            let m = *m;
            for (area, (values, ink, name)) in areas[1..].iter().zip([
                (background, RGBColor(0x1f, 0x4e, 0xa0), "background Σw (log scale)"),
                (
                    signal,
                    RGBColor(0xb0, 0x10, 0x10),
                    "signal Σw, all signals (log scale)",
                ),
            ]) {
                let positive = values.iter().copied().filter(|&v| v > 0.0);
                let lo = positive.clone().fold(f64::INFINITY, f64::min).log10();
                let hi = positive.fold(0.0f64, f64::max).log10();
                let heat = |chart: &mut Chart<'_, DB>| -> DrawResult {
                    let rects = (0..m * m).filter(|&c| values[c] > 0.0).map(|c| {
                        let (i, j) = (c % m, c / m);
                        Rectangle::new(
                            self.cell_rect(m, i, j),
                            density_colour(values[c], lo, hi, ink).filled(),
                        )
                    });
                    chart.draw_series(rects)?;
                    Ok(())
                };
                self.panel(area, name, &heat)?;
            }
        }
        Ok(())
    }
}

/// The mass spectrum of each category's background with its fit.
pub struct MassCategories {
    pub title: String,
    pub column: String,
    pub edges: Vec<f64>,
    pub window: (f64, f64),
    /// Per category: background yield and Σw² per bin, signal yield per
    /// bin, the fitted curve as (mass, yield per bin width), and the factor.
    pub categories: Vec<MassPanel>,
    pub signal_scale: f64,
}

/// One category of [`MassCategories`].
pub struct MassPanel {
    pub background: Vec<f64>,
    pub sumw2: Vec<f64>,
    pub signal: Vec<f64>,
    pub fit: Option<Vec<(f64, f64)>>,
    pub factor: f64,
}

impl Figure for MassCategories {
    fn size(&self) -> (u32, u32) {
        let columns = self.categories.len().clamp(1, 3) as u32;
        let rows = self.categories.len().div_ceil(3).max(1) as u32;
        (480 * columns, 340 * rows + CAPTION_HEIGHT)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let body = titled_body(root, &self.title)?;
        let columns = self.categories.len().clamp(1, 3);
        let rows = self.categories.len().div_ceil(3).max(1);
        let areas = body.split_evenly((rows, columns));
        let bins = self.edges.len() - 1;
        for (k, (panel, area)) in self.categories.iter().zip(&areas).enumerate() {
            let errors: Vec<f64> =
                panel.sumw2.iter().map(|v| v.max(0.0).sqrt()).collect();
            let signal: Vec<f64> =
                panel.signal.iter().map(|v| v * self.signal_scale).collect();
            let max = (0..bins)
                .map(|b| panel.background[b] + errors[b])
                .chain(signal.iter().copied())
                .chain(panel.fit.iter().flatten().map(|p| p.1))
                .fold(0.0f64, f64::max);
            let x = (self.edges[0], self.edges[bins]);
            let y = (0.0, if max > 0.0 { 1.3 * max } else { 1.0 });
            let title = format!("category {k}: window share {:.4}", panel.factor);
            let mut chart = build_chart(area, &title, x, y)?;
            let plain = |v: &f64| tick_in(*v, x);
            let y_plain = |v: &f64| tick_in(*v, y);
            draw_axes(
                &mut chart,
                &format!("{} [GeV]", self.column),
                &format!("yield / {} GeV", width_label(&self.edges)),
                &plain,
                &y_plain,
                6,
            )?;
            let window = WINDOW.stroke_width(1);
            chart
                .draw_series(
                    [self.window.0, self.window.1]
                        .map(|m| PathElement::new(vec![(m, y.0), (m, y.1)], window)),
                )?
                .label("mass window")
                .legend(move |(px, py)| {
                    PathElement::new(vec![(px, py), (px + 14, py)], window)
                });
            let centres: Vec<f64> =
                (0..bins).map(|b| (self.edges[b] + self.edges[b + 1]) / 2.0).collect();
            chart.draw_series((0..bins).map(|b| {
                PathElement::new(
                    vec![
                        (centres[b], panel.background[b] - errors[b]),
                        (centres[b], panel.background[b] + errors[b]),
                    ],
                    BLACK.stroke_width(1),
                )
            }))?;
            chart
                .draw_series((0..bins).map(|b| {
                    Circle::new((centres[b], panel.background[b]), 3, BLACK.filled())
                }))?
                .label("background")
                .legend(|(px, py)| Circle::new((px + 7, py), 3, BLACK.filled()));
            if let Some(curve) = &panel.fit {
                let style = FIT.stroke_width(2);
                chart
                    .draw_series(std::iter::once(PathElement::new(curve.clone(), style)))?
                    .label("fit A·e^(B·m)")
                    .legend(move |(px, py)| {
                        PathElement::new(vec![(px, py), (px + 14, py)], style)
                    });
            }
            let mut steps = Vec::with_capacity(2 * bins);
            for b in 0..bins {
                steps.push((self.edges[b], signal[b]));
                steps.push((self.edges[b + 1], signal[b]));
            }
            let style = signal_colour(0).stroke_width(2);
            chart
                .draw_series(std::iter::once(PathElement::new(steps, style)))?
                .label(scale_label("signal", self.signal_scale))
                .legend(move |(px, py)| {
                    PathElement::new(vec![(px, py), (px + 14, py)], style)
                });
            draw_legend(&mut chart)?;
        }
        Ok(())
    }
}

/// Formats the bin width of `edges` for an axis label.
pub fn width_label(edges: &[f64]) -> String {
    match edges {
        [a, b, ..] => tick_label(b - a),
        _ => String::new(),
    }
}
