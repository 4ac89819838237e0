//! Plots as SVG files (plotters' SVG backend needs no fonts or native libraries).

use std::path::Path;

use plotters::prelude::*;

use crate::analysis::diff::DiffReport;
use crate::arch::Category;
use crate::error::{Error, Result};
use crate::io::{atomic, output};
use crate::progress::{Level, Sink};

/// A matrix to draw as a heatmap: rows top to bottom, columns left to right.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    pub legend: String,
}

/// Five stops of the viridis map, dark (low) to yellow (high): perceptually even and readable
/// in greyscale.
const VIRIDIS: [(u8, u8, u8); 5] = [
    (68, 1, 84),
    (59, 82, 139),
    (33, 145, 140),
    (94, 201, 98),
    (253, 231, 37),
];

fn colour(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes `h` to `path`: `.svg`, or `.png` (the SVG rasterised with resvg; text uses the
/// system's fonts, so on a machine without any the labels are missing and a note says so).
pub fn heatmap(h: &Heatmap, path: &Path, sink: &dyn Sink) -> Result<()> {
    let svg = heatmap_svg(h)?;
    write_plot(&svg, path, sink)
}

/// Writes an SVG document to `path` as SVG or PNG, chosen by the extension.
pub fn write_plot(svg: &str, path: &Path, sink: &dyn Sink) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => {
            let signed = format!("{}\n{svg}", output::SVG_SIGNATURE);
            atomic::write_file(path, signed.as_bytes())
        }
        Some("png") => atomic::write_file(path, &sign_png(rasterise(svg, path, sink)?)),
        _ => Err(Error::usage(format!(
            "plot `{}`: the file name must end in .svg or .png",
            path.display()
        ))),
    }
}

/// Adds hft's `Software` text chunk right after the PNG header chunk (IHDR, always first and
/// 25 bytes), so that `--force` can tell a plot hft wrote from someone's picture.
fn sign_png(png: Vec<u8>) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 25;
    if png.len() < AFTER_IHDR {
        return png;
    }
    let body = output::PNG_SOFTWARE; // chunk type and data
    let mut chunk = Vec::with_capacity(body.len() + 8);
    chunk.extend_from_slice(&((body.len() - 4) as u32).to_be_bytes());
    chunk.extend_from_slice(body);
    chunk.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    let mut out = png[..AFTER_IHDR].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

fn rasterise(svg: &str, path: &Path, sink: &dyn Sink) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    // plotters asks for "sans-serif"; point it at a sans face that exists here.
    let sans = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(n, _)| n.clone()))
        .find(|n| n.contains("Sans") && !n.contains("Mono"));
    if let Some(family) = sans {
        db.set_sans_serif_family(family);
    } else if db.is_empty() {
        sink.say(
            Level::Note,
            "no system fonts found; the PNG has no labels (use .svg)",
        );
    }
    let fail = |e: String| Error::io(path, std::io::Error::other(e));
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| fail(e.to_string()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| fail("empty plot".into()))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| fail(e.to_string()))
}

/// Renders `h` as an SVG document.
pub fn heatmap_svg(h: &Heatmap) -> Result<String> {
    let cell_w = 64u32;
    let cell_h = 18u32.max(320 / h.rows.len().max(1) as u32).min(28);
    let left = 90u32;
    let top = 70u32;
    let width = left + cell_w * h.cols.len().max(1) as u32 + 140;
    let height = top + cell_h * h.rows.len().max(1) as u32 + 40;
    let max = h
        .values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let mut svg = String::new();
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let font = ("sans-serif", 14).into_font();
        let small = ("sans-serif", 11).into_font();
        root.draw(&Text::new(h.title.clone(), (10, 12), font.clone()))?;
        for (j, c) in h.cols.iter().enumerate() {
            let x = (left + cell_w * j as u32 + 4) as i32;
            root.draw(&Text::new(c.clone(), (x, (top - 18) as i32), small.clone()))?;
        }
        for (i, r) in h.rows.iter().enumerate() {
            let y = (top + cell_h * i as u32) as i32;
            root.draw(&Text::new(r.clone(), (10, y + 3), small.clone()))?;
            for (j, v) in h.values[i].iter().enumerate() {
                let x = (left + cell_w * j as u32) as i32;
                let rect = [(x, y), (x + cell_w as i32 - 1, y + cell_h as i32 - 1)];
                match v {
                    Some(v) if v.is_finite() => {
                        let t = if max > 0.0 { v / max } else { 0.0 };
                        root.draw(&Rectangle::new(rect, colour(t).filled()))?;
                    }
                    _ => root.draw(&Rectangle::new(rect, RGBColor(235, 235, 235).filled()))?,
                }
            }
        }
        // Legend: a vertical colour bar from 0 to the maximum.
        let lx = (left + cell_w * h.cols.len() as u32 + 20) as i32;
        let steps = 40;
        let bar_h = (cell_h * h.rows.len().max(1) as u32).max(100) as i32;
        for s in 0..steps {
            let y0 = top as i32 + bar_h * s / steps;
            let y1 = top as i32 + bar_h * (s + 1) / steps;
            let t = 1.0 - s as f64 / (steps - 1) as f64;
            root.draw(&Rectangle::new(
                [(lx, y0), (lx + 16, y1)],
                colour(t).filled(),
            ))?;
        }
        root.draw(&Text::new(
            format!("{max:.3e}"),
            (lx + 20, top as i32),
            small.clone(),
        ))?;
        root.draw(&Text::new(
            "0",
            (lx + 20, top as i32 + bar_h - 10),
            small.clone(),
        ))?;
        root.draw(&Text::new(
            h.legend.clone(),
            (lx, top as i32 - 30),
            small.clone(),
        ))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Internal(format!("plot: {e}")))?;
    Ok(svg)
}

/// The `hft diff --plot` heatmap: layers down, categories across, colour = relative change.
pub fn diff_heatmap(r: &DiffReport) -> Heatmap {
    let cats: Vec<Category> = Category::ALL
        .into_iter()
        .filter(|c| {
            r.cells
                .iter()
                .any(|x| x.layer.is_some() && x.category == *c)
        })
        .collect();
    let values = r
        .layers
        .iter()
        .map(|l| {
            cats.iter()
                .map(|c| {
                    r.cells
                        .iter()
                        .find(|x| x.layer == Some(l.layer) && x.category == *c)
                        .and_then(|x| x.figures.rel_delta)
                })
                .collect()
        })
        .collect();
    Heatmap {
        title: format!("relative change |B-A|/|A|: {} -> {}", r.a, r.b),
        rows: r
            .layers
            .iter()
            .map(|l| format!("layer {}", l.layer))
            .collect(),
        cols: cats.iter().map(|c| c.to_string()).collect(),
        values,
        legend: "rel_delta".into(),
    }
}

/// Curves of points with error bars: one series per name, in a shared x-y frame.
#[derive(Default)]
pub struct Curves {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Dashed vertical lines (the levels a comparison is read at).
    pub vlines: Vec<f64>,
}

pub struct Series {
    pub name: String,
    /// In the order the line joins them.
    pub points: Vec<CurvePoint>,
}

pub struct CurvePoint {
    pub x: f64,
    pub y: f64,
    /// Half-widths of the error bars (none: no bar).
    pub x_err: Option<f64>,
    pub y_err: Option<f64>,
    /// Written next to the point.
    pub label: String,
}

/// Ten categorical colours (Tableau's), distinct in hue and lightness.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Renders `c` as an SVG document.
pub fn curves_svg(c: &Curves) -> Result<String> {
    let pts = || {
        c.series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.x.is_finite() && p.y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts() {
        let err = |e: Option<f64>| e.filter(|e| e.is_finite()).unwrap_or(0.0);
        let (ex, ey) = (err(p.x_err), err(p.y_err));
        x0 = x0.min(p.x - ex);
        x1 = x1.max(p.x + ex);
        y0 = y0.min(p.y - ey);
        y1 = y1.max(p.y + ey);
    }
    // Vertical lines widen the x range only where there are no points to set it; a line
    // outside the points' range is not drawn (see below). Empty ranges fall back to [0, 1]:
    // plotters never ends on an inverted or infinite axis.
    if x0 > x1 {
        for &v in c.vlines.iter().filter(|v| v.is_finite()) {
            x0 = x0.min(v);
            x1 = x1.max(v);
        }
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = (b - a).max(0.02) * 0.08;
        (a - d, b + d)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let mut svg = String::new();
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (760, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 16))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(c.x_label.as_str())
            .y_desc(c.y_label.as_str())
            .label_style(("sans-serif", 12))
            .light_line_style(WHITE)
            .draw()?;
        let grey = RGBColor(150, 150, 150);
        for &v in c.vlines.iter().filter(|&&v| v >= x0 && v <= x1) {
            let steps = 30;
            for k in (0..steps).step_by(2) {
                let a = y0 + (y1 - y0) * k as f64 / steps as f64;
                let b = y0 + (y1 - y0) * (k + 1) as f64 / steps as f64;
                chart.draw_series(LineSeries::new([(v, a), (v, b)], grey))?;
            }
        }
        for (i, s) in c.series.iter().enumerate() {
            let (r, g, b) = PALETTE[i % PALETTE.len()];
            let col = RGBColor(r, g, b);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (p.x, p.y)),
                    col.stroke_width(2),
                ))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], col.stroke_width(2)));
            for p in &s.points {
                if let Some(e) = p.y_err.filter(|e| *e > 0.0) {
                    chart.draw_series(LineSeries::new([(p.x, p.y - e), (p.x, p.y + e)], col))?;
                }
                if let Some(e) = p.x_err.filter(|e| *e > 0.0) {
                    chart.draw_series(LineSeries::new([(p.x - e, p.y), (p.x + e, p.y)], col))?;
                }
            }
            // Markers for sweep points; a long curve (a loss curve) is clearer without them.
            if s.points.len() <= 40 {
                chart.draw_series(
                    s.points
                        .iter()
                        .map(|p| Circle::new((p.x, p.y), 4, col.filled())),
                )?;
            }
            chart.draw_series(s.points.iter().filter(|p| !p.label.is_empty()).map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Text::new(
                        p.label.clone(),
                        (7, -15),
                        ("sans-serif", 11).into_font().color(&col),
                    )
            }))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Internal(format!("plot: {e}")))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_ranges_still_render() {
        // No points, lines at absurd places: must finish (plotters loops on inverted axes).
        let c = Curves {
            vlines: vec![f64::NAN, 1e39, -5.0],
            ..Curves::default()
        };
        assert!(curves_svg(&c).unwrap().contains("<svg"));
    }
}
