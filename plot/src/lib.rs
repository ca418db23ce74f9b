//! What every finpool chart shares, in one place:
//!
//! - [`PALETTE`]: one colour-blind-safe palette (Okabe–Ito first), for the
//!   simulator's curves and the regulator report's charts alike;
//! - [`ensure_font`]: the embedded font (a subset of DejaVu Sans) that
//!   plotters lays text out with, and draws it with on bitmaps, so a chart
//!   looks the same on every machine and needs no system font;
//! - [`FileType`] and [`save`]: the file type follows the file's extension,
//!   `.svg` or `.png`; any other is refused, never silently written as SVG;
//! - [`focus`]: the axis ranges over which series differ, so that lines
//!   that run close together can still be told apart.

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Colour-blind-safe: the Okabe–Ito colours (less black), then Tableau's.
/// Series take them in order, repeating past 16.
pub const PALETTE: [(u8, u8, u8); 16] = [
    (0xe6, 0x9f, 0x00),
    (0x56, 0xb4, 0xe9),
    (0x00, 0x9e, 0x73),
    (0xf0, 0xe4, 0x42),
    (0x00, 0x72, 0xb2),
    (0xd5, 0x5e, 0x00),
    (0xcc, 0x79, 0xa7),
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0x59, 0xa1, 0x4f),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
];

/// The `i`th series' colour.
pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// The `i`th series' colour as plotters writes it into an SVG (`#RRGGBB`).
pub fn colour_hex(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02X}{g:02X}{b:02X}")
}

/// The family every chart names; [`ensure_font`] registers it.
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// Registers the embedded font as [`FONT`] (once per process). Every chart
/// calls it before drawing: plotters measures text with it for every
/// backend, and draws glyphs with it on bitmaps.
pub fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("the embedded font is not a valid font");
        }
    });
}

/// A chart's file type, from its file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Svg,
    Png,
}

/// The extensions [`FileType::from_path`] accepts.
pub const EXTENSIONS: [&str; 2] = ["svg", "png"];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{0}: the file type follows the extension, which must be .svg or .png")]
    Extension(String),
    #[error("drawing {path}: {reason}")]
    Draw { path: String, reason: String },
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl FileType {
    /// `.svg` or `.png`, in any case; anything else is an error.
    pub fn from_path(path: &Path) -> Result<Self, PlotError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Self::Svg),
            Some("png") => Ok(Self::Png),
            _ => Err(PlotError::Extension(path.display().to_string())),
        }
    }
}

/// A chart that can draw itself on any plotters backend.
pub trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `chart` on a white `size` canvas into `path`, as SVG or PNG by
/// the extension.
pub fn save(path: &Path, size: (u32, u32), chart: &impl Chart) -> Result<(), PlotError> {
    let kind = FileType::from_path(path)?;
    ensure_font();
    let shown = path.display().to_string();
    let draw_err = |reason: String| PlotError::Draw {
        path: shown.clone(),
        reason,
    };
    let io_err = |source: std::io::Error| PlotError::Io {
        path: shown.clone(),
        source,
    };
    match kind {
        FileType::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
                chart.draw(&root).map_err(draw_err)?;
                root.present().map_err(|e| draw_err(e.to_string()))?;
            }
            std::fs::write(path, svg).map_err(io_err)
        }
        FileType::Png => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
                chart.draw(&root).map_err(draw_err)?;
                root.present().map_err(|e| draw_err(e.to_string()))?;
            }
            let file = std::fs::File::create(path).map_err(io_err)?;
            let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let png_err = |e: png::EncodingError| PlotError::Io {
                path: shown.clone(),
                source: std::io::Error::other(e),
            };
            let mut writer = encoder.write_header().map_err(png_err)?;
            writer.write_image_data(&rgb).map_err(png_err)?;
            writer.finish().map_err(png_err)
        }
    }
}

/// Where series differ: the x range over which they differ, and a y range
/// that holds every series there, with a margin.
#[derive(Debug, Clone, PartialEq)]
pub struct Focus {
    pub x: Range<f64>,
    pub y: Range<f64>,
}

/// At an x, series "differ" when their spread (highest less lowest value)
/// is at least this share of their largest spread anywhere.
pub const DIFFER_SHARE: f64 = 0.1;

/// The y range reaches this share of the values' span beyond them, each side.
pub const MARGIN_SHARE: f64 = 0.1;

/// The ranges that tell `series` apart: the x span where their spread
/// reaches [`DIFFER_SHARE`] of its largest (widened by one sample each
/// side), and the y span of every series' values over it, widened by
/// [`MARGIN_SHARE`]. The series share their x values, sample by sample
/// (samples past the shortest series are ignored). None when there is
/// nothing to tell apart: fewer than two series, or no spread anywhere.
pub fn focus(series: &[Vec<(f64, f64)>]) -> Option<Focus> {
    let n = series.iter().map(Vec::len).min()?;
    if series.len() < 2 || n == 0 {
        return None;
    }
    let at = |i: usize| series.iter().map(move |s| s[i].1).filter(|y| y.is_finite());
    let spread = |i: usize| {
        let (lo, hi) = at(i).fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if hi >= lo { hi - lo } else { 0.0 }
    };
    let spreads: Vec<f64> = (0..n).map(spread).collect();
    let widest = spreads.iter().copied().fold(0.0, f64::max);
    if widest <= 0.0 {
        return None;
    }
    let differ = |s: &f64| *s >= widest * DIFFER_SHARE;
    let first = spreads.iter().position(differ)?.saturating_sub(1);
    let last = (spreads.iter().rposition(differ)? + 1).min(n - 1);
    let xs = &series[0];
    let mut x = xs[first].0..xs[last].0;
    if x.end <= x.start {
        x = x.start - 0.5..x.start + 0.5;
    }
    let (lo, hi) = (first..=last)
        .flat_map(at)
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let margin = (hi - lo) * MARGIN_SHARE;
    Some(Focus {
        x,
        y: lo - margin..hi + margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Curves like the simulator's: equal to the load until they saturate,
    /// each at its own level (93, 95, 97).
    fn saturating() -> Vec<Vec<(f64, f64)>> {
        [93.0, 95.0, 97.0]
            .iter()
            .map(|&cap: &f64| (1..=130).map(|x| (x as f64, (x as f64).min(cap))).collect())
            .collect()
    }

    #[test]
    fn the_focus_is_the_band_where_curves_differ() {
        let f = focus(&saturating()).unwrap();
        // They part at 94 (spread 1 of 4, above a tenth), one sample before.
        assert_eq!(f.x, 93.0..130.0);
        // Over it the values run 93..97: 0.4 of margin each side.
        assert!((f.y.start - 92.6).abs() < 1e-9, "{:?}", f.y);
        assert!((f.y.end - 97.4).abs() < 1e-9, "{:?}", f.y);
        // Each curve's end is a tenth or more of the height apart.
        let height = f.y.end - f.y.start;
        assert!(2.0 / height > 0.35);
    }

    #[test]
    fn the_focus_follows_the_data_not_a_scale() {
        // The same shape a thousand times smaller and shifted: the same
        // x span, the y range scaled along.
        let small: Vec<Vec<(f64, f64)>> = saturating()
            .into_iter()
            .map(|s| s.into_iter().map(|(x, y)| (x, 5.0 + y / 1000.0)).collect())
            .collect();
        let f = focus(&small).unwrap();
        assert_eq!(f.x, 93.0..130.0);
        assert!((f.y.start - (5.0 + 0.0926)).abs() < 1e-9);
        assert!((f.y.end - (5.0 + 0.0974)).abs() < 1e-9);
    }

    #[test]
    fn a_difference_in_the_middle_is_bracketed() {
        let a: Vec<(f64, f64)> = (0..50).map(|x| (x as f64, 10.0)).collect();
        let mut b = a.clone();
        for p in &mut b[20..=24] {
            p.1 = 12.0;
        }
        let f = focus(&[a, b]).unwrap();
        assert_eq!(f.x, 19.0..25.0);
        assert!((f.y.start - 9.8).abs() < 1e-9 && (f.y.end - 12.2).abs() < 1e-9);
    }

    #[test]
    fn nothing_to_tell_apart_means_no_focus() {
        let a: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, x as f64)).collect();
        assert_eq!(focus(&[a.clone(), a.clone()]), None);
        assert_eq!(focus(std::slice::from_ref(&a)), None);
        assert_eq!(focus(&[]), None);
        assert_eq!(focus(&[a, vec![]]), None);
    }

    #[test]
    fn the_file_type_follows_the_extension() {
        assert_eq!(
            FileType::from_path(Path::new("a/b.svg")).unwrap(),
            FileType::Svg
        );
        assert_eq!(
            FileType::from_path(Path::new("b.PNG")).unwrap(),
            FileType::Png
        );
        for bad in ["b.jpg", "b", "b.svg.txt", "svg"] {
            let err = FileType::from_path(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(".svg or .png") && err.contains(bad), "{err}");
        }
    }

    struct Lines;
    impl Chart for Lines {
        fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
            let mut chart = ChartBuilder::on(root)
                .caption("two lines", (FONT, 20))
                .x_label_area_size(30)
                .y_label_area_size(30)
                .build_cartesian_2d(0f64..10.0, 0f64..10.0)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().draw().map_err(|e| e.to_string())?;
            for i in 0..2 {
                chart
                    .draw_series(LineSeries::new(
                        (0..10).map(|x| (x as f64, (x + i) as f64)),
                        colour(i).stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }

    #[test]
    fn both_file_types_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("a.png");
        save(&png, (320, 200), &Lines).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let svg = dir.path().join("a.svg");
        save(&svg, (320, 200), &Lines).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("two lines"));
        assert!(text.contains(&colour_hex(1)));
        let err = save(&dir.path().join("a.jpg"), (320, 200), &Lines).unwrap_err();
        assert!(matches!(err, PlotError::Extension(_)));
        assert!(!dir.path().join("a.jpg").exists());
    }
}
