use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub tenant: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `admitted`, `preempted` or `waiting`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The gRPC method (`finpool.v1.JobService/Submit`) or REST route.
    pub method: String,
    /// The gRPC status code name, or the HTTP status.
    pub code: String,
}

/// Every metric finpool exports. Cheap to clone: the families are shared.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub pending_jobs: Family<TenantLabels, Gauge>,
    /// In GPUs (fractions as thousandths, so the gauge is a float).
    pub allocated_gpus: Family<ClassLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub guaranteed_gpus: Family<ClassLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub cycle_duration: Histogram,
    pub decisions: Family<OutcomeLabels, Counter>,
    pub bind_duration: Histogram,
    pub preemptions: Family<ReasonLabels, Counter>,
    pub model_loads: Family<ModelLabels, Counter>,
    pub model_load_duration: Histogram,
    pub api_requests: Family<ApiLabels, Counter>,
    pub submit_duration: Histogram,
}

/// One tenant's line of the pool's state, as a cycle saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSnapshot {
    pub tenant: String,
    pub pending: i64,
    /// Per GPU class: (allocated, guaranteed), in GPUs.
    pub classes: Vec<(String, f64, f64)>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to ~100 s.
    exponential_buckets(0.0001, 2.5, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("finpool");
        let pending_jobs = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "pending_jobs",
            "Jobs waiting for admission, per tenant",
            pending_jobs.clone(),
        );
        let allocated_gpus = Family::default();
        registry.register(
            "tenant_allocated_gpus",
            "GPUs held by a tenant's admitted and running jobs, per GPU class",
            allocated_gpus.clone(),
        );
        let guaranteed_gpus = Family::default();
        registry.register(
            "tenant_guaranteed_gpus",
            "GPUs guaranteed to a tenant by its quota, per GPU class",
            guaranteed_gpus.clone(),
        );
        let cycle_duration = Histogram::new(seconds_buckets());
        registry.register(
            "scheduler_cycle_duration_seconds",
            "Time one scheduling cycle took, loading to carrying out its plan",
            cycle_duration.clone(),
        );
        let decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "scheduler_decisions",
            "Scheduling decisions by outcome",
            decisions.clone(),
        );
        let bind_duration = Histogram::new(seconds_buckets());
        registry.register(
            "scheduler_bind_duration_seconds",
            "Time from a job's admission to its pod's binding",
            bind_duration.clone(),
        );
        let preemptions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "preemptions",
            "Jobs stopped to make room for others, by reason",
            preemptions.clone(),
        );
        let model_loads = Family::<ModelLabels, Counter>::default();
        registry.register(
            "model_loads",
            "Base models loaded onto cards, per model",
            model_loads.clone(),
        );
        let model_load_duration = Histogram::new(seconds_buckets());
        registry.register(
            "model_load_duration_seconds",
            "Time a base model took to load onto its cards",
            model_load_duration.clone(),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API calls by method and result code",
            api_requests.clone(),
        );
        let submit_duration = Histogram::new(seconds_buckets());
        registry.register(
            "api_submit_duration_seconds",
            "Time to accept a job submission durably",
            submit_duration.clone(),
        );
        // Known label values start at zero, so that a rate over them
        // exists before the first event.
        for reason in ["Reclaim", "Priority"] {
            let _ = preemptions.get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        for outcome in ["admitted", "preempted", "waiting"] {
            let _ = decisions.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry: Arc::new(registry),
            pending_jobs,
            allocated_gpus,
            guaranteed_gpus,
            cycle_duration,
            decisions,
            bind_duration,
            preemptions,
            model_loads,
            model_load_duration,
            api_requests,
            submit_duration,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Replaces the per-tenant gauges with what one cycle saw; tenants and
    /// classes no longer present are dropped, not left at stale values.
    pub fn set_tenants(&self, tenants: &[TenantSnapshot]) {
        self.pending_jobs.clear();
        self.allocated_gpus.clear();
        self.guaranteed_gpus.clear();
        for t in tenants {
            self.pending_jobs
                .get_or_create(&TenantLabels {
                    tenant: t.tenant.clone(),
                })
                .set(t.pending);
            for (class, allocated, guaranteed) in &t.classes {
                let labels = ClassLabels {
                    tenant: t.tenant.clone(),
                    class: class.clone(),
                };
                self.allocated_gpus.get_or_create(&labels).set(*allocated);
                self.guaranteed_gpus.get_or_create(&labels).set(*guaranteed);
            }
        }
    }

    pub fn observe_cycle(&self, took: Duration, admitted: usize, preempted: usize, waiting: usize) {
        self.cycle_duration.observe(took.as_secs_f64());
        for (outcome, n) in [
            ("admitted", admitted),
            ("preempted", preempted),
            ("waiting", waiting),
        ] {
            if n > 0 {
                self.decisions
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n as u64);
            }
        }
    }

    pub fn preempted(&self, reason: &str) {
        self.preemptions
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn model_loaded(&self, model: &str, took: Duration) {
        self.model_loads
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .inc();
        self.model_load_duration.observe(took.as_secs_f64());
    }

    pub fn api_request(&self, method: &str, code: &str) {
        self.api_requests
            .get_or_create(&ApiLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        let mut names: Vec<String> = scrape.samples.into_iter().map(|s| s.metric).collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn every_family_is_exported_under_its_dashboard_name() {
        let m = Metrics::new();
        m.set_tenants(&[TenantSnapshot {
            tenant: "acme".into(),
            pending: 3,
            classes: vec![("H100".into(), 1.5, 2.0)],
        }]);
        m.observe_cycle(Duration::from_millis(3), 1, 1, 2);
        m.bind_duration.observe(0.02);
        m.preempted("guarantee reclaim");
        m.model_loaded("llama-3-8b", Duration::from_secs(4));
        m.api_request("finpool.v1.JobService/Submit", "OK");
        m.submit_duration.observe(0.001);
        let text = m.encode();
        let names = names(&text);
        for expected in [
            "finpool_pending_jobs",
            "finpool_tenant_allocated_gpus",
            "finpool_tenant_guaranteed_gpus",
            "finpool_scheduler_cycle_duration_seconds",
            "finpool_scheduler_decisions_total",
            "finpool_scheduler_bind_duration_seconds_count",
            "finpool_preemptions_total",
            "finpool_model_loads_total",
            "finpool_model_load_duration_seconds_sum",
            "finpool_api_requests_total",
            "finpool_api_submit_duration_seconds",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing in {names:?}"
            );
        }
        assert!(text.contains(r#"finpool_tenant_allocated_gpus{tenant="acme",class="H100"} 1.5"#));
    }

    #[test]
    fn a_tenant_gone_from_the_pool_leaves_the_gauges() {
        let m = Metrics::new();
        let acme = TenantSnapshot {
            tenant: "acme".into(),
            pending: 1,
            classes: vec![],
        };
        m.set_tenants(&[acme]);
        assert!(m.encode().contains("tenant=\"acme\""));
        m.set_tenants(&[]);
        assert!(!m.encode().contains("tenant=\"acme\""));
    }
}
