//! Allocation curves as a chart, SVG or PNG by the file's extension: one
//! line per policy, over every load, and below it the band where the
//! policies differ, zoomed so that their lines can be told apart.

use std::ops::Range;
use std::path::Path;

use finpool_plot::{Chart, FONT, Focus, PlotError};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::experiment::{ExperimentReport, MAX_PERCENT};

pub use finpool_plot::{EXTENSIONS, FileType};

const SIZE: (u32, u32) = (900, 860);

/// Draws every report's mean allocation curve into `path` (`.svg` or
/// `.png`; any other extension is an error and nothing is written).
pub fn allocation(path: &Path, title: &str, reports: &[ExperimentReport]) -> Result<(), PlotError> {
    let curves = reports
        .iter()
        .map(|r| {
            (1..=MAX_PERCENT)
                .map(|p| (p as f64, r.at(p)))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let chart = Allocation {
        title,
        reports,
        focus: finpool_plot::focus(&curves),
        curves,
    };
    finpool_plot::save(path, SIZE, &chart)
}

struct Allocation<'a> {
    title: &'a str,
    reports: &'a [ExperimentReport],
    curves: Vec<Vec<(f64, f64)>>,
    focus: Option<Focus>,
}

impl Allocation<'_> {
    /// One panel: the curves over `x` × `y`, the legend when `legend`,
    /// and a shaded box around `mark` (the zoomed band) when given.
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        caption: &str,
        (x, y): (Range<f64>, Range<f64>),
        legend: bool,
        mark: Option<&Focus>,
    ) -> Result<(), String> {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 16))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(x.clone(), y.clone())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("GPU requested (% of capacity)")
            .y_desc("GPU allocated (% of capacity)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| {
                // Enough decimals for the span shown.
                let span = y.end - y.start;
                match span {
                    s if s >= 20.0 => format!("{v:.0}"),
                    s if s >= 2.0 => format!("{v:.1}"),
                    _ => format!("{v:.2}"),
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(m) = mark {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(m.x.start, m.y.start), (m.x.end, m.y.end)],
                    BLACK.mix(0.08).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        for (i, (report, curve)) in self.reports.iter().zip(&self.curves).enumerate() {
            let colour = finpool_plot::colour(i);
            let inside = curve
                .iter()
                .filter(|(px, _)| *px >= x.start && *px <= x.end)
                .copied();
            let series = chart
                .draw_series(LineSeries::new(inside, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if legend {
                series
                    .label(format!(
                        "{} ({:.2}% at {MAX_PERCENT}%)",
                        report.policy,
                        report.at(MAX_PERCENT)
                    ))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
        }
        if legend {
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Chart for Allocation<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = root
            .titled(self.title, (FONT, 22))
            .map_err(|e| e.to_string())?;
        let low = self
            .curves
            .iter()
            .flatten()
            .map(|(_, y)| *y)
            .fold(100.0f64, f64::min);
        let whole = (
            1f64..MAX_PERCENT as f64,
            (low.floor() - 1.0).max(0.0)..100f64,
        );
        match &self.focus {
            None => self.panel(&root, "every load", whole, true, None),
            Some(focus) => {
                let (top, bottom) = root.split_vertically(300);
                self.panel(
                    &top,
                    "every load (shaded: the band below)",
                    whole,
                    false,
                    Some(focus),
                )?;
                self.panel(
                    &bottom,
                    "where the policies differ",
                    (focus.x.clone(), focus.y.clone()),
                    true,
                    None,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy's report whose curve follows the load up to `cap`.
    fn report(policy: &str, cap: f64) -> ExperimentReport {
        ExperimentReport {
            workload: "synthetic".into(),
            policy: policy.into(),
            seeds: vec![1],
            alloc_pct: (1..=MAX_PERCENT)
                .map(|p| (p.to_string(), (p as f64).min(cap)))
                .collect(),
            per_seed: Default::default(),
            failed_pods: 0.0,
            failed_pods_per_seed: Default::default(),
            pods_per_seed: Default::default(),
            wall_seconds: 0.0,
            decisions_per_second: 0.0,
        }
    }

    #[test]
    fn both_file_types_are_drawn_and_others_refused() {
        let reports = [
            report("finpool", 96.5),
            report("fgd", 95.0),
            report("bestfit", 93.5),
        ];
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("curve.svg");
        allocation(&svg, "synthetic", &reports).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        for (i, policy) in ["finpool", "fgd", "bestfit"].iter().enumerate() {
            assert!(text.contains(policy), "{policy} in the legend");
            assert!(
                text.contains(&finpool_plot::colour_hex(i)),
                "{policy}'s line"
            );
        }
        assert!(text.contains("where the policies differ"));

        let png = dir.path().join("curve.PNG");
        allocation(&png, "synthetic", &reports).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 10_000, "a drawn chart, not a blank one");

        let jpg = dir.path().join("curve.jpg");
        let err = allocation(&jpg, "synthetic", &reports).unwrap_err();
        assert!(err.to_string().contains(".svg or .png"), "{err}");
        assert!(!jpg.exists());
    }

    #[test]
    fn one_policy_draws_one_panel() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("one.svg");
        allocation(&svg, "one", &[report("finpool", 96.0)]).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("every load") && !text.contains("where the policies differ"));
    }
}
