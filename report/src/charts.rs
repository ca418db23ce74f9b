//! The report's three charts as inline SVG, drawn with plotters: usage
//! over time stacked by tenant, pool utilization, and quota compliance.
//! Each tenant has one colour, by its place in the report, in every chart
//! and in the tables' swatches.

use plotters::prelude::*;

use crate::model::{Report, gpu_hours};

#[derive(Debug, thiserror::Error)]
#[error("drawing the {chart} chart: {reason}")]
pub struct ChartError {
    pub chart: &'static str,
    pub reason: String,
}

fn err(chart: &'static str) -> impl Fn(String) -> ChartError {
    move |reason| ChartError { chart, reason }
}

/// The `i`th tenant's colour, from the palette every finpool chart shares.
pub fn tenant_colour(i: usize) -> RGBColor {
    finpool_plot::colour(i)
}

/// As plotters writes it into the SVG (`#RRGGBB`).
pub fn tenant_colour_hex(i: usize) -> String {
    finpool_plot::colour_hex(i)
}

const SIZE: (u32, u32) = (900, 420);

/// An interval's start as a short axis label (`11-01 06:00`); nothing
/// between intervals.
fn interval_label(report: &Report, x: f64) -> String {
    if x.fract() != 0.0 {
        return String::new();
    }
    report
        .intervals
        .get(x as usize)
        .map(|i| i.start.get(5..16).unwrap_or(&i.start).replace('T', " "))
        .unwrap_or_default()
}

/// GPU-hours used per interval, one stacked area per tenant.
pub fn usage_over_time(report: &Report) -> Result<String, ChartError> {
    let e = err("usage");
    let tenants = report.tenant_ids();
    let n = report.intervals.len().max(1);
    // Cumulative tops per tenant, in report order.
    let mut tops: Vec<Vec<f64>> = vec![vec![0.0; n]; tenants.len()];
    for (x, interval) in report.intervals.iter().enumerate() {
        let mut sum = 0.0;
        for (i, t) in tenants.iter().enumerate() {
            let used = interval
                .tenants
                .iter()
                .find(|(id, _, _)| id == t)
                .map_or(0, |(_, u, _)| *u);
            sum += gpu_hours(used);
            tops[i][x] = sum;
        }
    }
    let ymax = tops
        .last()
        .map_or(0.0, |t| t.iter().copied().fold(0.0, f64::max))
        .max(1e-3)
        * 1.1;
    let mut svg = String::new();
    {
        finpool_plot::ensure_font();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..(n as f64 - 1.0).max(1.0), 0f64..ymax)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|x| interval_label(report, *x))
            .x_desc("interval start (UTC)")
            .y_desc("GPU-hours used")
            .draw()
            .map_err(|x| e(x.to_string()))?;
        // The highest top first, so each lower tenant is drawn over it.
        for i in (0..tenants.len()).rev() {
            let colour = tenant_colour(i);
            let points: Vec<(f64, f64)> = tops[i]
                .iter()
                .enumerate()
                .map(|(x, y)| (x as f64, *y))
                .collect();
            chart
                .draw_series(AreaSeries::new(points, 0.0, colour.filled()).border_style(colour))
                .map_err(|x| e(x.to_string()))?
                .label(tenants[i])
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// A named line: its name, colour and points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Used, held idle and idle as percentages of capacity, per interval.
pub fn pool_utilization(report: &Report) -> Result<String, ChartError> {
    let e = err("utilization");
    let n = report.intervals.len().max(1);
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    };
    let series: [Series; 3] = {
        let mut used = Vec::new();
        let mut held = Vec::new();
        let mut idle = Vec::new();
        for (x, i) in report.intervals.iter().enumerate() {
            let u: u64 = i.tenants.iter().map(|(_, u, _)| u).sum();
            let h: u64 = i.tenants.iter().map(|(_, _, h)| h).sum();
            let rest = i.capacity.saturating_sub(u + h);
            used.push((x as f64, pct(u, i.capacity)));
            held.push((x as f64, pct(h, i.capacity)));
            idle.push((x as f64, pct(rest, i.capacity)));
        }
        [
            ("used", finpool_plot::colour(4), used),
            ("held idle", finpool_plot::colour(5), held),
            ("idle", RGBColor(0x99, 0x99, 0x99), idle),
        ]
    };
    let mut svg = String::new();
    {
        finpool_plot::ensure_font();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..(n as f64 - 1.0).max(1.0), 0f64..100f64)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|x| interval_label(report, *x))
            .x_desc("interval start (UTC)")
            .y_desc("% of the pool's GPU capacity")
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (name, colour, points) in series {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// Per tenant, the worst time (s) a job within its guarantee waited for a
/// reclaim, one bar each; a breached guarantee is outlined in red.
pub fn quota_compliance(report: &Report) -> Result<String, ChartError> {
    let e = err("compliance");
    let tenants = report.tenant_ids();
    let worst: Vec<(f64, bool)> = tenants
        .iter()
        .map(|t| {
            let lines = report.compliance.iter().filter(|c| c.tenant == *t);
            let (ms, honoured) = lines.fold((0u64, true), |(m, h), c| {
                (m.max(c.worst_time_to_reclaim_ms), h && c.honoured)
            });
            (ms as f64 / 1000.0, honoured)
        })
        .collect();
    let ymax = worst.iter().map(|(s, _)| *s).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut svg = String::new();
    {
        finpool_plot::ensure_font();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            // Bars centred on the integers, where the tenants' labels are.
            .build_cartesian_2d(-0.5f64..tenants.len().max(1) as f64 - 0.5, 0f64..ymax)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(tenants.len().max(1))
            .x_label_formatter(&|x| {
                if x.fract() != 0.0 || *x < 0.0 {
                    return String::new();
                }
                tenants
                    .get(*x as usize)
                    .map_or_else(String::new, |t| t.to_string())
            })
            .y_desc("worst time to reclaim (s)")
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, (seconds, honoured)) in worst.iter().enumerate() {
            let colour = tenant_colour(i);
            // A thin stub keeps a tenant with no reclaim visible.
            let top = seconds.max(ymax * 0.01);
            let (left, right) = (i as f64 - 0.35, i as f64 + 0.35);
            let bar = Rectangle::new([(left, 0.0), (right, top)], colour.filled());
            chart
                .draw_series(std::iter::once(bar))
                .map_err(|x| e(x.to_string()))?;
            if !honoured {
                let outline = Rectangle::new([(left, 0.0), (right, top)], RED.stroke_width(3));
                chart
                    .draw_series(std::iter::once(outline))
                    .map_err(|x| e(x.to_string()))?;
            }
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}
