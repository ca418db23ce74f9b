//! The HTML report in a real browser: headless Chromium loads the page,
//! and the DOM it renders has every chart, with a non-empty shape for
//! every tenant. A screenshot is kept under the target's test artifacts.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it and sets
//! FINPOOL_REQUIRE_BROWSER=1, so that CI fails rather than skips).

mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

use finpool_report::charts::tenant_colour_hex;
use finpool_report::render;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

fn headless(browser: &Path, args: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The elements named `tag` inside the figure `chart` of the rendered DOM.
fn elements<'a>(dom: &'a str, chart: &str, tag: &str) -> Vec<&'a str> {
    let start = dom
        .find(&format!("data-chart=\"{chart}\""))
        .unwrap_or_else(|| panic!("chart {chart} is not in the rendered page"));
    let end = start + dom[start..].find("</figure>").unwrap();
    let figure = &dom[start..end];
    assert!(figure.contains("<svg"), "chart {chart} has no SVG");
    figure
        .match_indices(&format!("<{tag} "))
        .map(|(i, _)| {
            let rest = &figure[i..];
            &rest[..rest.find('>').unwrap_or(rest.len())]
        })
        .collect()
}

fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = element.find(&key)? + key.len();
    Some(&element[i..i + element[i..].find('"')?])
}

#[test]
fn chromium_renders_every_chart_with_every_tenant() {
    let Some(browser) = chromium() else {
        if std::env::var_os("FINPOOL_REQUIRE_BROWSER").is_some() {
            panic!(
                "FINPOOL_REQUIRE_BROWSER is set but no chromium is on PATH (apt-get install chromium)"
            );
        }
        eprintln!("skipped: the browser test needs chromium on PATH (apt-get install chromium)");
        return;
    };
    let report = fixture::report();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, render::html(&report).unwrap()).unwrap();
    let url = format!("file://{}", page.display());
    let dom = headless(&browser, &["--dump-dom", &url]);
    assert!(dom.contains("GPU pool usage"), "{dom}");

    for (i, tenant) in report.tenant_ids().iter().enumerate() {
        let colour = tenant_colour_hex(i);
        let areas = elements(&dom, "usage", "polygon");
        let area = areas
            .iter()
            .find(|e| attr(e, "fill") == Some(colour.as_str()))
            .unwrap_or_else(|| panic!("usage: no area for {tenant} ({colour})"));
        let points = attr(area, "points").unwrap_or_default();
        assert!(
            points.split_whitespace().count() >= 3,
            "usage: {tenant}'s area is empty: {area}"
        );
        let bars = elements(&dom, "compliance", "rect");
        let bar = bars
            .iter()
            .find(|e| attr(e, "fill") == Some(colour.as_str()))
            .unwrap_or_else(|| panic!("compliance: no bar for {tenant} ({colour})"));
        for dim in ["width", "height"] {
            let v: f64 = attr(bar, dim).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            assert!(v > 0.0, "compliance: {tenant}'s bar has no {dim}: {bar}");
        }
    }
    let lines = elements(&dom, "utilization", "polyline");
    for (series, colour) in [
        ("used", "#0072B2"),
        ("held idle", "#D55E00"),
        ("idle", "#999999"),
    ] {
        assert!(
            lines.iter().any(|l| attr(l, "stroke") == Some(colour)
                && attr(l, "points").is_some_and(|p| p.split_whitespace().count() >= 6)),
            "utilization: no line for {series}"
        );
    }

    // Kept for a person to look at.
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("report.png");
    headless(
        &browser,
        &[
            "--window-size=1000,3200",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    eprintln!("screenshot: {}", shot.display());
}
