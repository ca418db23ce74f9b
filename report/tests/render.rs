//! The renderers: consistent figures, byte-identical output for the same
//! report, and every chart with a shape per tenant.

mod fixture;

use finpool_report::charts::tenant_colour_hex;
use finpool_report::model::Inconsistent;
use finpool_report::render;

#[test]
fn the_fixture_conserves_capacity_and_a_broken_one_is_named() {
    let report = fixture::report();
    report.check().unwrap();
    let mut broken = report.clone();
    broken.pool[0].idle += 1;
    assert!(matches!(
        broken.check(),
        Err(Inconsistent::Conservation { .. })
    ));
    let mut broken = report.clone();
    broken.tenants[0].classes[0].used += 1;
    assert!(matches!(
        broken.check(),
        Err(Inconsistent::TenantsVsPool { field: "used", .. })
    ));
}

#[test]
fn the_same_report_renders_to_the_same_bytes() {
    let report = fixture::report();
    assert_eq!(render::json(&report), render::json(&report.clone()));
    assert_eq!(render::csv(&report), render::csv(&report.clone()));
    assert_eq!(
        render::html(&report).unwrap(),
        render::html(&report.clone()).unwrap()
    );
    let back: finpool_report::Report = serde_json::from_str(&render::json(&report)).unwrap();
    assert_eq!(back, report);
}

#[test]
fn csv_is_one_table_with_every_figure() {
    let csv = render::csv(&fixture::report());
    let mut lines = csv.split("\r\n");
    assert_eq!(lines.next(), Some("section,tenant,class,metric,value"));
    assert!(csv.contains("usage,alpha,H100,used_milli_gpu_ms,54000000000\r\n"));
    assert!(csv.contains("usage,gamma,,charges_fen,37035\r\n"));
    assert!(csv.contains("denied,,,cross_tenant,2\r\n"));
    assert!(csv.contains("location,,,gpu-1,dc-1 (8 GPUs)\r\n"));
    assert!(csv.lines().all(|l| l.split(',').count() == 5));
}

#[test]
fn money_is_exact() {
    assert_eq!(render::money(0), "0.00");
    assert_eq!(render::money(5), "0.05");
    assert_eq!(render::money(123_456), "1234.56");
    assert_eq!(render::money(-101), "-1.01");
    assert_eq!(render::money(i64::MIN), "-92233720368547758.08");
}

#[test]
fn every_chart_has_a_shape_in_each_tenants_colour() {
    let report = fixture::report();
    let html = render::html(&report).unwrap();
    for chart in ["usage", "compliance"] {
        let start = html.find(&format!("data-chart=\"{chart}\"")).unwrap();
        let end = start + html[start..].find("</figure>").unwrap();
        let svg = &html[start..end];
        for i in 0..report.tenants.len() {
            let colour = tenant_colour_hex(i);
            assert!(
                svg.contains(&format!("fill=\"{colour}\"")),
                "{chart}: nothing filled in {colour}"
            );
        }
    }
    assert!(html.contains("data-chart=\"utilization\""));
    assert!(!html.contains("<script"), "self-contained, no script");
    // (The SVG namespace is a name, not a resource.)
    for load in ["src=", "href=", "url(", "@import"] {
        assert!(!html.contains(load), "no external resource: {load}");
    }
}
