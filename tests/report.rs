//! The regulator's report through a real server: jobs of two tenants
//! metered in one-second intervals, two-second billing periods closed, then
//! the report over them as JSON, CSV and HTML, over gRPC, REST and the CLI.
//! Its figures conserve capacity, a closed range regenerates to the same
//! bytes, and tenants may not read it.

mod common;

use std::time::Duration;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use reqwest::Method;

const PERIOD_MS: i64 = 2_000;

fn rfc(ms: i64) -> String {
    finpool_domain::Timestamp(ms).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_closed_periods_adds_up_and_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            "--meter-interval",
            "1s",
            "--billing-period",
            "2s",
            "--meter-settle",
            "1s",
            "--meter-every",
            "1s",
            "--audit-checkpoint-every",
            "1s",
        ],
    );
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    let classes = op
        .nodes
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .gpu_classes;
    let mut prices = vec![(String::new(), "cpu", 40), (String::new(), "memory", 5)];
    for c in classes {
        prices.push((c.name.clone(), "gpu_used", 1_800));
        prices.push((c.name, "gpu_held_idle", 900));
    }
    for (gpu_class, kind, rate_fen) in prices {
        op.billing
            .set_price(pb::SetPriceRequest {
                gpu_class,
                kind: kind.into(),
                rate_fen,
                effective_from: Some(prost_types::Timestamp {
                    seconds: 1_577_836_800, // 2020-01-01
                    nanos: 0,
                }),
            })
            .await
            .unwrap();
    }
    let start = finpool_domain::Timestamp::now().0;
    let from = start - start.rem_euclid(PERIOD_MS);
    let mut alpha = server.tenant("alpha").await;
    let mut beta = server.tenant("beta").await;
    let a = submit(&mut alpha, shell_job("a", whole(1), "sleep 2")).await;
    let b = submit(&mut beta, shell_job("b", share(500), "sleep 1")).await;
    // Denied attempts, in the audit log: alpha asks for beta's job, and
    // for what only operators may do.
    let other = alpha
        .jobs
        .get_job(pb::GetJobRequest { id: b.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);
    let privileged = alpha
        .billing
        .meter_usage(pb::MeterUsageRequest {})
        .await
        .unwrap_err();
    assert_eq!(privileged.code(), tonic::Code::PermissionDenied);
    for (c, id) in [(&mut alpha, &a.id), (&mut beta, &b.id)] {
        wait_for(c, Duration::from_secs(60), "the job to end", |jobs| {
            jobs.iter().any(|j| &j.id == id && is_terminal(j.state))
        })
        .await;
    }
    let end = finpool_domain::Timestamp::now().0;
    let to = end - end.rem_euclid(PERIOD_MS) + PERIOD_MS;
    // Past the last period and its metering delay, then close every period.
    tokio::time::sleep(Duration::from_millis((to - end + 1_500) as u64)).await;
    let mut at = from;
    while at < to {
        op.billing
            .close_period(pb::ClosePeriodRequest { at: rfc(at) })
            .await
            .unwrap();
        at += PERIOD_MS;
    }

    let regulator = server.client(&server.token(Role::Regulator, None)).await;
    let get = |format: &str| {
        let mut c = regulator.clone();
        let request = pb::GetUsageReportRequest {
            from: rfc(from),
            to: rfc(to),
            format: format.into(),
        };
        async move {
            c.reports
                .get_usage_report(request)
                .await
                .unwrap()
                .into_inner()
        }
    };
    let json = get("json").await;
    assert!(json.closed, "closed periods cover the range");
    let report: finpool_report::Report = serde_json::from_slice(&json.body).unwrap();
    report.check().expect("used + held idle + idle = capacity");
    let used: u64 = report.pool.iter().map(|p| p.used).sum();
    let capacity: u64 = report.pool.iter().map(|p| p.capacity).sum();
    assert!(used > 0 && capacity > used, "{:?}", report.pool);
    for tenant in ["alpha", "beta"] {
        let line = report.tenants.iter().find(|t| t.tenant == tenant).unwrap();
        assert_eq!(line.jobs, 1, "{tenant}");
        assert!(
            line.classes.iter().any(|c| c.used > 0),
            "{tenant}: {line:?}"
        );
        // The charges are the invoices' (a fraction of a GPU-second may
        // round to 0 fen: the rounding is the invoice's).
        let invoiced: i64 = op
            .billing
            .list_invoices(pb::ListInvoicesRequest {
                tenant_id: tenant.into(),
                period: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .invoices
            .iter()
            .filter(|i| {
                let s = millis(&i.period_start);
                s >= from && s < to
            })
            .map(|i| i.total_fen)
            .sum();
        assert_eq!(line.charges_fen, invoiced, "{tenant}");
    }
    assert!(report.denied.cross_tenant >= 1, "{:?}", report.denied);
    assert!(report.denied.privilege >= 1, "{:?}", report.denied);
    let checkpoint = report.audit.as_ref().expect("an audit checkpoint");
    assert!(
        checkpoint.tree_size >= 2 && checkpoint.root.len() == 64,
        "{checkpoint:?}"
    );
    // A closed range gives the same bytes every time, in every format.
    for format in ["json", "csv", "html"] {
        let first = get(format).await.body;
        let again = get(format).await.body;
        assert_eq!(first, again, "{format}");
    }
    assert_eq!(get("json").await.body, json.body);
    let html = String::from_utf8(get("html").await.body).unwrap();
    for chart in ["usage", "utilization", "compliance"] {
        assert!(html.contains(&format!("data-chart=\"{chart}\"")), "{chart}");
    }

    // REST: the document itself, with its content type.
    let token = server.token(Role::Regulator, None);
    let query = format!(
        "/v1/reports/usage?from={}&to={}&format=csv",
        rfc(from),
        rfc(to)
    );
    let response = server
        .rest(Method::GET, &query, Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = response.text().await.unwrap();
    assert!(
        csv.starts_with("section,tenant,class,metric,value\r\n"),
        "{csv}"
    );
    assert_eq!(csv.as_bytes(), get("csv").await.body.as_slice());

    // Tenants may not read the cross-tenant report; bad input is named.
    let tenant_token = server.token(Role::Tenant, Some("alpha"));
    let refused = server
        .rest(Method::GET, &query, Some(&tenant_token))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let mut c = regulator.clone();
    let err = c
        .reports
        .get_usage_report(pb::GetUsageReportRequest {
            from: rfc(to),
            to: rfc(from),
            format: "pdf".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("format:"), "{}", err.message());

    // The CLI writes the page.
    let out = dir.path().join("report.html");
    let status = std::process::Command::new(finpool_bin())
        .args(["report", "usage", "--from", &rfc(from), "--to", &rfc(to)])
        .args(["--format", "html", "--out"])
        .arg(&out)
        .args(["--addr", &server.addr, "--token", &token])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), html);
}
