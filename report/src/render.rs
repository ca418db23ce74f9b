//! The report as JSON, CSV and HTML. Deterministic: no clock, no
//! randomness, sorted inputs; the same report gives the same bytes.

use crate::charts;
use crate::model::{Report, gpu_hours};

pub fn json(report: &Report) -> String {
    let mut out = serde_json::to_string_pretty(report).expect("a report serializes");
    out.push('\n');
    out
}

/// Fen as yuan with two decimals, exactly (no floating point).
pub fn money(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// A CSV field, quoted when it must be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One table, `section,tenant,class,metric,value`: every figure of the
/// report on its own row, so spreadsheets and scripts read one shape.
pub fn csv(report: &Report) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut row = |section: &str, tenant: &str, class: &str, metric: &str, value: String| {
        rows.push([
            section.into(),
            tenant.into(),
            class.into(),
            metric.into(),
            value,
        ])
    };
    row("period", "", "", "from", report.from.clone());
    row("period", "", "", "to", report.to.clone());
    row("period", "", "", "closed", report.closed.to_string());
    for t in &report.tenants {
        for c in &t.classes {
            row(
                "usage",
                &t.tenant,
                &c.class,
                "used_milli_gpu_ms",
                c.used.to_string(),
            );
            row(
                "usage",
                &t.tenant,
                &c.class,
                "held_idle_milli_gpu_ms",
                c.held_idle.to_string(),
            );
        }
        row("usage", &t.tenant, "", "jobs", t.jobs.to_string());
        row(
            "usage",
            &t.tenant,
            "",
            "charges_fen",
            t.charges_fen.to_string(),
        );
    }
    for p in &report.pool {
        row(
            "pool",
            "",
            &p.class,
            "capacity_milli_gpu_ms",
            p.capacity.to_string(),
        );
        row(
            "pool",
            "",
            &p.class,
            "used_milli_gpu_ms",
            p.used.to_string(),
        );
        row(
            "pool",
            "",
            &p.class,
            "held_idle_milli_gpu_ms",
            p.held_idle.to_string(),
        );
        row(
            "pool",
            "",
            &p.class,
            "idle_milli_gpu_ms",
            p.idle.to_string(),
        );
    }
    for c in &report.compliance {
        row(
            "compliance",
            &c.tenant,
            &c.class,
            "guaranteed_gpus",
            c.guaranteed_gpus.to_string(),
        );
        row(
            "compliance",
            &c.tenant,
            &c.class,
            "reclaims",
            c.reclaims.to_string(),
        );
        row(
            "compliance",
            &c.tenant,
            &c.class,
            "worst_time_to_reclaim_ms",
            c.worst_time_to_reclaim_ms.to_string(),
        );
        row(
            "compliance",
            &c.tenant,
            &c.class,
            "breaches",
            c.breaches.to_string(),
        );
        row(
            "compliance",
            &c.tenant,
            &c.class,
            "honoured",
            c.honoured.to_string(),
        );
    }
    for p in &report.preemptions {
        row("preemptions", "", "", &p.reason, p.count.to_string());
    }
    row(
        "denied",
        "",
        "",
        "cross_tenant",
        report.denied.cross_tenant.to_string(),
    );
    row(
        "denied",
        "",
        "",
        "privilege",
        report.denied.privilege.to_string(),
    );
    row(
        "denied",
        "",
        "",
        "unauthenticated",
        report.denied.unauthenticated.to_string(),
    );
    for n in &report.locations {
        row(
            "location",
            "",
            "",
            &n.node,
            format!("{} ({} GPUs)", n.location, n.gpus),
        );
    }
    if let Some(a) = &report.audit {
        row("audit", "", "", "tree_size", a.tree_size.to_string());
        row("audit", "", "", "root", a.root.clone());
    }
    let mut out = String::from("section,tenant,class,metric,value\r\n");
    for r in rows {
        let line: Vec<String> = r.iter().map(|f| field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One self-contained page: the figures as tables and three SVG charts,
/// no script, no external resource.
pub fn html(report: &Report) -> Result<String, charts::ChartError> {
    let tenants = report.tenant_ids();
    let usage = charts::usage_over_time(report)?;
    let utilization = charts::pool_utilization(report)?;
    let compliance = charts::quota_compliance(report)?;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str(&format!(
        "<title>finpool usage report {} to {}</title>\n",
        esc(&report.from),
        esc(&report.to)
    ));
    h.push_str(
        "<style>body{font-family:sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}\
         th{background:#eee}td:first-child,th:first-child{text-align:left}\
         figure{margin:1em 0}.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle}</style>\n",
    );
    h.push_str("</head><body>\n");
    h.push_str(&format!(
        "<h1>GPU pool usage, {} to {}</h1>\n<p>Period {}.</p>\n",
        esc(&report.from),
        esc(&report.to),
        if report.closed {
            "closed: these figures are final"
        } else {
            "open: figures so far"
        }
    ));
    h.push_str("<h2>Tenants</h2>\n<table><tr><th>Tenant</th><th>Colour</th><th>Class</th><th>Used GPU-h</th><th>Held idle GPU-h</th><th>Jobs</th><th>Charges (CNY)</th></tr>\n");
    for (i, t) in report.tenants.iter().enumerate() {
        let swatch = format!(
            "<span class=\"swatch\" style=\"background:{}\"></span>",
            charts::tenant_colour_hex(i)
        );
        if t.classes.is_empty() {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{swatch}</td><td></td><td>0.000</td><td>0.000</td><td>{}</td><td>{}</td></tr>\n",
                esc(&t.tenant), t.jobs, money(t.charges_fen)
            ));
        }
        for (k, c) in t.classes.iter().enumerate() {
            let (jobs, charges) = if k == 0 {
                (t.jobs.to_string(), money(t.charges_fen))
            } else {
                (String::new(), String::new())
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{swatch}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{jobs}</td><td>{charges}</td></tr>\n",
                esc(&t.tenant),
                esc(&c.class),
                gpu_hours(c.used),
                gpu_hours(c.held_idle)
            ));
        }
    }
    h.push_str("</table>\n<h2>Pool</h2>\n<table><tr><th>Class</th><th>Capacity GPU-h</th><th>Used</th><th>Held idle</th><th>Idle</th></tr>\n");
    for p in &report.pool {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>\n",
            esc(&p.class),
            gpu_hours(p.capacity),
            gpu_hours(p.used),
            gpu_hours(p.held_idle),
            gpu_hours(p.idle)
        ));
    }
    h.push_str("</table>\n");
    for (name, title, svg) in [
        ("usage", "Usage over time, stacked by tenant", &usage),
        ("utilization", "Pool utilization", &utilization),
        (
            "compliance",
            "Quota compliance: worst time to reclaim a guarantee",
            &compliance,
        ),
    ] {
        h.push_str(&format!(
            "<h2>{title}</h2>\n<figure data-chart=\"{name}\">\n{svg}\n</figure>\n"
        ));
    }
    h.push_str("<h2>Quota compliance</h2>\n<table><tr><th>Tenant</th><th>Class</th><th>Guaranteed</th><th>Reclaims</th><th>Worst (s)</th><th>Breaches</th><th>Honoured</th></tr>\n");
    for c in &report.compliance {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&c.tenant),
            esc(&c.class),
            c.guaranteed_gpus,
            c.reclaims,
            c.worst_time_to_reclaim_ms as f64 / 1000.0,
            c.breaches,
            if c.honoured { "yes" } else { "NO" }
        ));
    }
    h.push_str("</table>\n<h2>Preemptions</h2>\n<table><tr><th>Reason</th><th>Count</th></tr>\n");
    for p in &report.preemptions {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            esc(&p.reason),
            p.count
        ));
    }
    h.push_str(&format!(
        "</table>\n<h2>Denied attempts</h2>\n<table><tr><th>Kind</th><th>Count</th></tr>\
         <tr><td>Cross-tenant</td><td>{}</td></tr><tr><td>Privilege</td><td>{}</td></tr>\
         <tr><td>Unauthenticated</td><td>{}</td></tr></table>\n",
        report.denied.cross_tenant, report.denied.privilege, report.denied.unauthenticated
    ));
    h.push_str(
        "<h2>Data residency</h2>\n<table><tr><th>Node</th><th>Location</th><th>GPUs</th></tr>\n",
    );
    for n in &report.locations {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&n.node),
            esc(&n.location),
            n.gpus
        ));
    }
    h.push_str("</table>\n<h2>Audit</h2>\n");
    match &report.audit {
        Some(a) => h.push_str(&format!(
            "<p>Checkpoint: tree size {}, root <code>{}</code>.</p>\n",
            a.tree_size,
            esc(&a.root)
        )),
        None => h.push_str("<p>No audit checkpoint yet.</p>\n"),
    }
    h.push_str(&format!(
        "<p>Tenants in this report: {}.</p>\n</body></html>\n",
        esc(&tenants.join(", "))
    ));
    Ok(h)
}
