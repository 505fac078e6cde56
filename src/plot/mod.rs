//! Plots and the HTML report of a run.
//!
//! Every figure is drawn twice from the same code, into an SVG string and
//! into an RGB buffer that is encoded as PNG, and both are written
//! atomically. Text uses DejaVu Sans, bundled with the crate, so no system
//! font library is needed.
//!
//! [`draw_report`] redraws every plot and `report.html` of an output
//! directory from `summary.json`, `histograms.json` and each run's
//! `history.json` and `model.json`. `gato run` calls it once the run is
//! published, and `gato report` calls it on its own.

mod figures;
mod histograms;
mod html;
mod outputs;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub use histograms::{HISTOGRAMS_VERSION, Histogram, Histograms, PlaneHistogram};
pub use outputs::{ReportFiles, draw_report};

/// DejaVu Sans, the font of every plot.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Font family name under which [`FONT`] is registered.
pub const FAMILY: &str = "sans-serif";

/// Width and height of every figure, in pixels.
pub const SIZE: (u32, u32) = (900, 600);

/// Margin around each chart, in pixels.
pub const MARGIN: u32 = 15;
/// Height of the horizontal axis labels, in pixels.
pub const X_LABEL_AREA: u32 = 55;
/// Width of the vertical axis labels, in pixels.
pub const Y_LABEL_AREA: u32 = 80;
/// Height of the caption above each chart, in pixels.
pub const CAPTION_HEIGHT: u32 = 30;
/// Width of the legend column right of a stacked chart, in pixels.
pub const LEGEND_WIDTH: u32 = 170;

/// Colour of category boundaries.
pub const BOUNDARY: RGBColor = RGBColor(0x22, 0x22, 0x22);

/// Fill colours of background processes, in order.
const BACKGROUND_COLOURS: [RGBColor; 8] = [
    RGBColor(0x4f, 0x7c, 0xc4),
    RGBColor(0xf2, 0xa3, 0x3a),
    RGBColor(0x5d, 0xb3, 0x6a),
    RGBColor(0x9b, 0x6f, 0xc1),
    RGBColor(0x8c, 0x63, 0x4f),
    RGBColor(0x5f, 0xc4, 0xc8),
    RGBColor(0xd9, 0x86, 0xb8),
    RGBColor(0xa8, 0xa8, 0x3c),
];

/// Line colours of signal processes, in order.
const SIGNAL_COLOURS: [RGBColor; 4] = [
    RGBColor(0xd0, 0x1c, 0x1c),
    RGBColor(0x7a, 0x00, 0x9a),
    RGBColor(0xe0, 0x5c, 0x00),
    RGBColor(0x00, 0x80, 0x80),
];

/// Fill colours of categories on maps, in order.
const CATEGORY_COLOURS: [RGBColor; 10] = [
    RGBColor(0x8d, 0xb6, 0xe0),
    RGBColor(0xf7, 0xc2, 0x83),
    RGBColor(0x9f, 0xd8, 0x9a),
    RGBColor(0xe6, 0x9a, 0x9a),
    RGBColor(0xc3, 0xad, 0xdc),
    RGBColor(0xc9, 0xa8, 0x98),
    RGBColor(0xf0, 0xb6, 0xda),
    RGBColor(0xc8, 0xc8, 0xc8),
    RGBColor(0xdb, 0xdb, 0x8d),
    RGBColor(0x9e, 0xdd, 0xe6),
];

/// Fill colour of the `i`-th background process.
pub fn background_colour(i: usize) -> RGBColor {
    BACKGROUND_COLOURS[i % BACKGROUND_COLOURS.len()]
}

/// Line colour of the `i`-th signal process.
pub fn signal_colour(i: usize) -> RGBColor {
    SIGNAL_COLOURS[i % SIGNAL_COLOURS.len()]
}

/// Fill colour of category `k` on maps.
pub fn category_colour(k: usize) -> RGBColor {
    CATEGORY_COLOURS[k % CATEGORY_COLOURS.len()]
}

/// `#RRGGBB` of a colour, as the SVG files write it.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

// NOTE: plotters 0.3.7 draws each glyph of PNG text from the left edge of
// its outline and drops the glyph's left bearing, so narrow glyphs such as
// "1" and "i" sit a pixel or two left of their place. SVG text is laid out
// by the viewer and is not affected.
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // Registration fails only on bytes that are not a font. The test
        // `bundled_font_registers` registers this same file.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A figure that can be drawn on any plotters backend.
trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    /// Draws the figure on `root`, which covers the whole figure.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Writes `figure` as `<stem>.svg` and `<stem>.png` in `dir` and returns
/// both paths.
fn write_figure(figure: &impl Figure, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    register_font();
    let (w, h) = figure.size();
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    let failed = |path: &Path, e: Box<dyn std::error::Error>| {
        Error::output(path, format!("cannot draw the plot: {e}"))
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        figure.draw(&root).map_err(|e| failed(&svg_path, e))?;
        root.present().map_err(|e| failed(&svg_path, e.into()))?;
    }
    crate::atomic::write(&svg_path, svg.as_bytes())?;

    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        figure.draw(&root).map_err(|e| failed(&png_path, e))?;
        root.present().map_err(|e| failed(&png_path, e.into()))?;
    }
    let png = encode_png(&pixels, w, h).map_err(|e| failed(&png_path, e.into()))?;
    crate::atomic::write(&png_path, &png)?;
    Ok(vec![svg_path, png_path])
}

/// Encodes an RGB buffer as PNG.
fn encode_png(
    pixels: &[u8],
    w: u32,
    h: u32,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_font_registers() {
        assert!(plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    }

    #[test]
    fn png_header_has_figure_size() {
        let png = encode_png(&vec![255; 4 * 3 * 3], 4, 3).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (4, 3));
    }
}
