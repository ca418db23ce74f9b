//! Allocation curves as an SVG chart: one line per policy.

use plotters::prelude::*;

use crate::experiment::{ExperimentReport, MAX_PERCENT};

/// Draws every report's mean allocation curve into `path`.
pub fn allocation_svg(
    path: &std::path::Path,
    title: &str,
    reports: &[ExperimentReport],
) -> Result<(), String> {
    finpool_plot::ensure_font();
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let low = reports
        .iter()
        .flat_map(|r| r.alloc_pct.values())
        .fold(100.0f64, |a, b| a.min(*b));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(
            1f64..MAX_PERCENT as f64,
            (low.floor() - 1.0).max(0.0)..100f64,
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("GPU requested (% of capacity)")
        .y_desc("GPU allocated (% of capacity)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, report) in reports.iter().enumerate() {
        let color = finpool_plot::colour(i);
        let points: Vec<(f64, f64)> = (1..=MAX_PERCENT)
            .map(|p| (p as f64, report.at(p)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!(
                "{} ({:.2}% at {MAX_PERCENT}%)",
                report.policy,
                report.at(MAX_PERCENT)
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
