//! BillingService: metered usage, prices, invoices and billing periods.
//! Tenants see their own usage and invoices only (another tenant's is
//! NOT_FOUND); operators and regulators see everyone's.

use finpool_billing::{Kind, Period, Price, rfc3339};
use finpool_proto::v1 as pb;
use finpool_proto::v1::billing_service_server::BillingService;
use finpool_store::billing::{InvoiceRecord, PeriodRecord, capacity_of};
use tonic::{Request, Response, Status};

use super::principal;
use crate::auth::{Principal, Role};
use crate::error;
use crate::state::ApiState;

pub struct Billing {
    state: ApiState,
}

impl Billing {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }

    fn config(&self) -> finpool_billing::BillingConfig {
        self.state.config.billing
    }
}

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    Some(crate::convert::timestamp(finpool_domain::Timestamp(ms)))
}

fn now_ms() -> i64 {
    finpool_domain::Timestamp::now().0
}

/// An RFC 3339 time as UTC milliseconds; the field named on error.
pub(crate) fn parse_time(field: &str, text: &str) -> Result<i64, Status> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Status::invalid_argument(format!(
                "{field}: must be an RFC 3339 time such as 2026-03-01T00:00:00Z, got {text:?} ({e})"
            ))
        })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn from_pb_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<i64, Status> {
    let t = t.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{field}: nanos must be from 0 to 999999999, got {}",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1000)
        .map(|ms| ms + (t.nanos / 1_000_000) as i64)
        .ok_or_else(|| Status::invalid_argument(format!("{field}: out of range")))
}

/// The tenant a request is about: a tenant's own (naming another is
/// NOT_FOUND), or the one named, or everyone (`None`) for staff.
fn scope(who: &Principal, asked: &str) -> Result<Option<String>, Status> {
    match (&who.tenant, asked) {
        (Some(own), "") => Ok(Some(own.to_string())),
        (Some(own), t) if t == own.as_str() => Ok(Some(own.to_string())),
        (Some(_), t) => Err(Status::not_found(format!("tenant {t} not found"))),
        (None, "") => Ok(None),
        (None, t) => {
            finpool_domain::Name::parse("tenant_id", t).map_err(error::invalid)?;
            Ok(Some(t.to_owned()))
        }
    }
}

fn staff(who: &Principal) -> bool {
    matches!(who.role, Role::Operator | Role::Regulator)
}

fn price_pb(p: &finpool_store::billing::PriceRecord) -> pb::Price {
    pb::Price {
        gpu_class: p.price.class.clone(),
        kind: p.price.kind.to_string(),
        rate_fen: p.price.rate_fen,
        rate_unit: p.price.kind.rate_unit().into(),
        effective_from: ts(p.price.effective_from),
        set_at: ts(p.set_at),
        set_by: p.set_by.clone(),
    }
}

fn rate_units(kind: Kind, quantity: i64) -> f64 {
    quantity as f64 / kind.units_per_rate_unit() as f64
}

fn invoice_pb(r: &InvoiceRecord) -> pb::Invoice {
    let i = &r.invoice;
    pb::Invoice {
        id: i.id.clone(),
        tenant_id: i.tenant.clone(),
        period: i.period.label(),
        period_start: ts(i.period.start),
        period_end: ts(i.period.end),
        lines: i
            .lines
            .iter()
            .map(|l| pb::InvoiceLine {
                gpu_class: l.class.clone(),
                kind: l.kind.to_string(),
                quantity: l.quantity,
                unit: l.kind.unit().into(),
                rate_fen: l.rate_fen,
                rate_unit: l.kind.rate_unit().into(),
                rate_effective_from: ts(l.rate_effective_from),
                amount_fen: l.amount_fen,
            })
            .collect(),
        total_fen: i.total_fen,
        journal_entry_id: r.entry_id.clone().unwrap_or_default(),
        created_at: ts(r.created_at),
    }
}

fn period_pb(p: &PeriodRecord, invoices: &[InvoiceRecord], show_totals: bool) -> pb::BillingPeriod {
    let mine: Vec<&InvoiceRecord> = invoices
        .iter()
        .filter(|i| i.invoice.period.start == p.period.start)
        .collect();
    pb::BillingPeriod {
        label: p.label.clone(),
        start: ts(p.period.start),
        end: ts(p.period.end),
        closed: p.closed_at.is_some(),
        closed_at: p.closed_at.and_then(ts),
        closed_by: if show_totals {
            p.closed_by.clone()
        } else {
            String::new()
        },
        invoices: if show_totals { mine.len() as i64 } else { 0 },
        total_fen: if show_totals {
            mine.iter().map(|i| i.invoice.total_fen).sum()
        } else {
            0
        },
    }
}

#[tonic::async_trait]
impl BillingService for Billing {
    async fn list_prices(
        &self,
        _request: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let prices = self.state.store.prices().await.map_err(error::store)?;
        Ok(Response::new(pb::ListPricesResponse {
            prices: prices.iter().map(price_pb).collect(),
        }))
    }

    async fn set_price(
        &self,
        request: Request<pb::SetPriceRequest>,
    ) -> Result<Response<pb::Price>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let price = Price {
            class: r.gpu_class,
            kind: Kind::parse("kind", &r.kind)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            effective_from: from_pb_time("effective_from", r.effective_from.as_ref())?,
            rate_fen: r.rate_fen,
        };
        let stored = self
            .state
            .store
            .set_price(&self.config(), &price, &who.subject, now_ms())
            .await
            .map_err(error::store)?;
        Ok(Response::new(price_pb(&stored)))
    }

    async fn get_period_usage(
        &self,
        request: Request<pb::GetPeriodUsageRequest>,
    ) -> Result<Response<pb::PeriodUsage>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let tenant = scope(&who, &r.tenant_id)?;
        if r.from.is_empty() {
            return Err(Status::invalid_argument(
                "from: required (RFC 3339, such as 2026-03-01T00:00:00Z)",
            ));
        }
        let from = parse_time("from", &r.from)?;
        let to = if r.to.is_empty() {
            now_ms()
        } else {
            parse_time("to", &r.to)?
        };
        if to <= from {
            return Err(Status::invalid_argument(format!(
                "to: must be after from ({}), got {}",
                rfc3339(from),
                rfc3339(to)
            )));
        }
        let store = &self.state.store;
        let rows = store
            .usage_between(from, to, tenant.as_deref())
            .await
            .map_err(error::store)?;
        let capacity = if staff(&who) && tenant.is_none() {
            let caps = store
                .capacity_between(from, to)
                .await
                .map_err(error::store)?;
            caps.into_iter()
                .map(|c| {
                    let sum = |kind: Kind| {
                        rows.iter()
                            .filter(|u| u.class == c.class && u.kind == kind)
                            .map(|u| u.quantity)
                            .sum::<i64>()
                    };
                    let (used, held_idle) = (sum(Kind::GpuUsed), sum(Kind::GpuHeldIdle));
                    pb::ClassCapacity {
                        gpu_class: c.class,
                        capacity: c.capacity,
                        used,
                        held_idle,
                        idle: c.capacity - used - held_idle,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let metered_until = store.metered_until().await.map_err(error::store)?;
        tracing::debug!(subject = %who.subject, tenant = ?tenant, from = %rfc3339(from), to = %rfc3339(to), "period usage");
        Ok(Response::new(pb::PeriodUsage {
            from: ts(from),
            to: ts(to),
            metered_until: metered_until.and_then(ts),
            lines: rows
                .into_iter()
                .map(|u| pb::UsageLine {
                    rate_units: rate_units(u.kind, u.quantity),
                    unit: u.kind.unit().into(),
                    kind: u.kind.to_string(),
                    tenant_id: u.tenant,
                    gpu_class: u.class,
                    quantity: u.quantity,
                })
                .collect(),
            capacity,
        }))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let tenant = scope(&who, &r.tenant_id)?;
        let invoices = self
            .state
            .store
            .invoices(tenant.as_deref(), None)
            .await
            .map_err(error::store)?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: invoices
                .iter()
                .filter(|i| r.period.is_empty() || i.invoice.period.label() == r.period)
                .map(invoice_pb)
                .collect(),
        }))
    }

    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let who = principal(&request)?;
        let id = request.into_inner().id;
        let not_found = || Status::not_found(format!("invoice {id} not found"));
        let invoice = match self.state.store.invoice(&id).await {
            Ok(i) => i,
            Err(finpool_store::StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(error::store(e)),
        };
        // Another tenant's invoice does not exist for this caller.
        if who.role == Role::Tenant
            && who.tenant.as_ref().map(|t| t.as_str()) != Some(invoice.invoice.tenant.as_str())
        {
            return Err(not_found());
        }
        Ok(Response::new(invoice_pb(&invoice)))
    }

    async fn list_periods(
        &self,
        request: Request<pb::ListPeriodsRequest>,
    ) -> Result<Response<pb::ListPeriodsResponse>, Status> {
        let who = principal(&request)?;
        let store = &self.state.store;
        let mut records = store.periods().await.map_err(error::store)?;
        let current = self
            .config()
            .period
            .period_containing(now_ms())
            .map_err(|e| Status::internal(e.to_string()))?;
        if !records.iter().any(|p| p.period == current) {
            records.push(PeriodRecord {
                label: current.label(),
                period: current,
                closed_at: None,
                closed_by: String::new(),
            });
        }
        let invoices = if staff(&who) {
            store.invoices(None, None).await.map_err(error::store)?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ListPeriodsResponse {
            periods: records
                .iter()
                .map(|p| period_pb(p, &invoices, staff(&who)))
                .collect(),
        }))
    }

    async fn close_period(
        &self,
        request: Request<pb::ClosePeriodRequest>,
    ) -> Result<Response<pb::BillingPeriod>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let config = self.config();
        let now = now_ms();
        let period: Period = if r.at.is_empty() {
            let current = config
                .period
                .period_containing(now)
                .map_err(|e| Status::internal(e.to_string()))?;
            config
                .period
                .period_containing(current.start - 1)
                .map_err(|e| Status::internal(e.to_string()))?
        } else {
            config
                .period
                .period_containing(parse_time("at", &r.at)?)
                .map_err(|e| Status::invalid_argument(format!("at: {e}")))?
        };
        let capacity = capacity_of(&self.state.inventory.inventory());
        let store = &self.state.store;
        if period.end <= config.meterable_until(now) {
            store
                .meter(&config, &capacity, now)
                .await
                .map_err(error::store)?;
        }
        let report = store
            .close_period(&config, period, &who.subject, now)
            .await
            .map_err(error::store)?;
        tracing::info!(period = %report.period.label, invoices = report.invoices,
            total_fen = report.total_fen, already_closed = report.already_closed,
            subject = %who.subject, "close period");
        let invoices = store
            .invoices(None, Some(period.start))
            .await
            .map_err(error::store)?;
        Ok(Response::new(period_pb(&report.period, &invoices, true)))
    }

    async fn meter_usage(
        &self,
        request: Request<pb::MeterUsageRequest>,
    ) -> Result<Response<pb::MeterUsageResponse>, Status> {
        let who = principal(&request)?;
        let capacity = capacity_of(&self.state.inventory.inventory());
        let report = self
            .state
            .store
            .meter(&self.config(), &capacity, now_ms())
            .await
            .map_err(error::store)?;
        tracing::info!(subject = %who.subject, to = %rfc3339(report.to), events = report.events,
            inserted = report.inserted, "metering pass");
        Ok(Response::new(pb::MeterUsageResponse {
            metered_until: ts(report.to),
            events: report.events as i64,
            inserted: report.inserted as i64,
        }))
    }
}
