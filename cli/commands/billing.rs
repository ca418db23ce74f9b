//! `finpool price`, `finpool invoice`, `finpool period`, and `finpool usage
//! --from/--to`.

use anyhow::Context;
use finpool_proto::v1 as pb;

use crate::args::{Global, InvoiceCommand, PeriodCommand, PriceCommand, UsageArgs};
use crate::client::Clients;
use crate::output;

/// Fen as yuan, for people: 123456 → "1234.56".
fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", (fen / 100).abs(), (fen % 100).abs())
}

fn class(c: &str) -> String {
    if c.is_empty() {
        "-".into()
    } else {
        c.to_owned()
    }
}

fn rfc3339(flag: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("{flag} {text:?}: expected RFC 3339, such as 2026-03-01T00:00:00Z")
        })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

pub async fn price(global: &Global, command: PriceCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    match command {
        PriceCommand::Set(a) => {
            let p = c
                .billing
                .set_price(pb::SetPriceRequest {
                    gpu_class: a.gpu_class,
                    kind: a.kind,
                    rate_fen: a.rate_fen,
                    effective_from: Some(rfc3339("--effective-from", &a.effective_from)?),
                })
                .await?
                .into_inner();
            if global.output.is_document() {
                output::message(global.output, &p);
            } else {
                println!(
                    "{}/{}: {} fen per {} from {}",
                    class(&p.gpu_class),
                    p.kind,
                    p.rate_fen,
                    p.rate_unit,
                    output::timestamp(&p.effective_from)
                );
            }
        }
        PriceCommand::List => {
            let prices = c
                .billing
                .list_prices(pb::ListPricesRequest {})
                .await?
                .into_inner()
                .prices;
            if global.output.is_document() {
                output::list(global.output, &prices);
                return Ok(());
            }
            let rows = prices
                .iter()
                .map(|p| {
                    vec![
                        class(&p.gpu_class),
                        p.kind.clone(),
                        p.rate_fen.to_string(),
                        p.rate_unit.clone(),
                        output::timestamp(&p.effective_from),
                        p.set_by.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &["CLASS", "KIND", "RATE (FEN)", "PER", "FROM", "SET BY"],
                    rows
                )
            );
        }
    }
    Ok(())
}

fn print_invoice(i: &pb::Invoice) {
    println!(
        "invoice {} — tenant {}, period {} ({} to {}): {} yuan ({} fen)",
        i.id,
        i.tenant_id,
        i.period,
        output::timestamp(&i.period_start),
        output::timestamp(&i.period_end),
        yuan(i.total_fen),
        i.total_fen
    );
    let rows = i
        .lines
        .iter()
        .map(|l| {
            vec![
                class(&l.gpu_class),
                l.kind.clone(),
                l.quantity.to_string(),
                l.unit.clone(),
                format!("{} / {}", l.rate_fen, l.rate_unit),
                l.amount_fen.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &[
                "CLASS",
                "KIND",
                "QUANTITY",
                "UNIT",
                "RATE (FEN)",
                "AMOUNT (FEN)"
            ],
            rows
        )
    );
}

pub async fn invoice(global: &Global, command: InvoiceCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    match command {
        InvoiceCommand::List { tenant, period } => {
            let invoices = c
                .billing
                .list_invoices(pb::ListInvoicesRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    period: period.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .invoices;
            if global.output.is_document() {
                output::list(global.output, &invoices);
                return Ok(());
            }
            let rows = invoices
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.tenant_id.clone(),
                        i.period.clone(),
                        i.lines.len().to_string(),
                        i.total_fen.to_string(),
                        yuan(i.total_fen),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &["ID", "TENANT", "PERIOD", "LINES", "TOTAL (FEN)", "YUAN"],
                    rows
                )
            );
        }
        InvoiceCommand::Show { id } => {
            let i = c
                .billing
                .get_invoice(pb::GetInvoiceRequest { id })
                .await?
                .into_inner();
            if global.output.is_document() {
                output::message(global.output, &i);
            } else {
                print_invoice(&i);
            }
        }
    }
    Ok(())
}

fn print_periods(periods: &[pb::BillingPeriod]) {
    let rows = periods
        .iter()
        .map(|p| {
            vec![
                p.label.clone(),
                output::timestamp(&p.start),
                output::timestamp(&p.end),
                if p.closed {
                    format!("closed {}", output::timestamp(&p.closed_at))
                } else {
                    "open".into()
                },
                p.invoices.to_string(),
                p.total_fen.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["PERIOD", "START", "END", "STATE", "INVOICES", "TOTAL (FEN)"],
            rows
        )
    );
}

pub async fn period(global: &Global, command: PeriodCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    match command {
        PeriodCommand::List => {
            let periods = c
                .billing
                .list_periods(pb::ListPeriodsRequest {})
                .await?
                .into_inner()
                .periods;
            if global.output.is_document() {
                output::list(global.output, &periods);
            } else {
                print_periods(&periods);
            }
        }
        PeriodCommand::Close { at } => {
            let p = c
                .billing
                .close_period(pb::ClosePeriodRequest {
                    at: at.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if global.output.is_document() {
                output::message(global.output, &p);
            } else {
                print_periods(std::slice::from_ref(&p));
            }
        }
        PeriodCommand::Meter => {
            let r = c
                .billing
                .meter_usage(pb::MeterUsageRequest {})
                .await?
                .into_inner();
            if global.output.is_document() {
                output::message(global.output, &r);
            } else {
                println!(
                    "metered until {}: {} events, {} new",
                    output::timestamp(&r.metered_until),
                    r.events,
                    r.inserted
                );
            }
        }
    }
    Ok(())
}

/// Metered usage per tenant, class and kind from --from (default: the
/// start of this UTC month) to --to (default: now).
pub async fn period_usage(global: &Global, c: &mut Clients, args: UsageArgs) -> anyhow::Result<()> {
    let from = match args.from {
        Some(f) => f,
        None => {
            let now = time::OffsetDateTime::now_utc();
            let first = time::Date::from_calendar_date(now.year(), now.month(), 1)
                .context("this month's first day")?;
            first
                .midnight()
                .assume_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .context("formatting the month's start")?
        }
    };
    let usage = c
        .billing
        .get_period_usage(pb::GetPeriodUsageRequest {
            tenant_id: args.tenant.unwrap_or_default(),
            from,
            to: args.to.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if global.output.is_document() {
        output::message(global.output, &usage);
        return Ok(());
    }
    println!(
        "usage from {} to {} (metered until {})",
        output::timestamp(&usage.from),
        output::timestamp(&usage.to),
        output::timestamp(&usage.metered_until)
    );
    let rows = usage
        .lines
        .iter()
        .map(|l| {
            vec![
                l.tenant_id.clone(),
                class(&l.gpu_class),
                l.kind.clone(),
                format!("{:.3}", l.rate_units),
                l.quantity.to_string(),
                l.unit.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["TENANT", "CLASS", "KIND", "HOURS", "QUANTITY", "UNIT"],
            rows
        )
    );
    if !usage.capacity.is_empty() {
        let rows = usage
            .capacity
            .iter()
            .map(|c| {
                let h = |q: i64| format!("{:.3}", q as f64 / 3_600_000_000.0);
                vec![
                    c.gpu_class.clone(),
                    h(c.capacity),
                    h(c.used),
                    h(c.held_idle),
                    h(c.idle),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(
                &["CLASS", "CAPACITY GPU-H", "USED", "HELD IDLE", "IDLE"],
                rows
            )
        );
    }
    Ok(())
}
