//! Telemetry shared by every finpool component: the Prometheus metrics
//! (one place for every name, in the style Kueue and KAI use) and the
//! HTTP endpoint that serves them with the health probes.
//!
//! A process builds one [`Metrics`], hands clones to the parts that record,
//! and serves it with [`serve`] (or mounts [`router`] beside its own routes,
//! as the API does).

mod metrics;
mod server;

pub use metrics::{
    ApiLabels, ClassLabels, Metrics, OutcomeLabels, ReasonLabels, TenantLabels, TenantSnapshot,
};
pub use server::{Readiness, router, serve};
