//! Why a job waits, as data. Each reason has a stable machine-readable
//! [`WaitReason::code`] (for the API, the store and Kubernetes conditions)
//! and a rendering for people ([`std::fmt::Display`]) that names the real
//! rule and its real time limit. Drivers store both; nothing parses text.

use std::fmt;

use finpool_domain::Timestamp;

/// Why one queued job was not admitted this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The job's tenant is not (or no longer) known to the pool.
    UnknownTenant { tenant: String },
    /// An operator suspended the job's tenant; it waits until resumed.
    TenantSuspended { tenant: String },
    /// No node of the pool could ever run it, even empty.
    Infeasible { resource: Infeasible },
    /// It could run now, but its tenant's quota limit or the pool's
    /// borrowing budget does not allow it: per GPU class it may use, the
    /// limit it hit and the numbers (empty when no single limit explains
    /// it, e.g. a reservation or its model's card kept it back too).
    QuotaLimit { hits: Vec<QuotaHit> },
    /// Nodes that could run it are busy.
    NoCapacity { refused: Vec<Refusal> },
    /// It holds a reservation: the node frees for it at `at`.
    Reserved { node: String, at: Timestamp },
    /// Base-model locality: a card holding its model could run it and is
    /// expected to free before loading the model elsewhere would finish.
    WarmCard {
        model: String,
        node: String,
        /// When the warm card frees for it, by the jobs on it and the
        /// older jobs of its model queued for it.
        free_by: Timestamp,
        /// The longest it holds out with a usable card idle: the model's
        /// load time times the wait factor.
        limit_ms: u64,
    },
    /// Base-model locality: it may load its model only on an empty card or
    /// one whose model is less in demand, until it has waited `limit_ms`
    /// with a usable card idle.
    ModelBalance { model: String, limit_ms: u64 },
    /// Its jobs are being preempted for it; it starts once they are gone.
    AwaitingVictims { victims: usize },
    /// Not examined closely this cycle (only the first waiting jobs are).
    Queued,
}

/// The resource no node of the pool has enough of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Infeasible {
    /// More GPUs on one node than any node of its allowed classes has.
    Gpus {
        asked: u32,
        largest: u32,
    },
    CpuMilli {
        asked: u64,
        largest: u64,
    },
    MemoryMib {
        asked: u64,
        largest: u64,
    },
    /// No card of its allowed classes has the memory its share or model needs.
    GpuMemoryMib {
        asked: u64,
        largest: u64,
    },
    /// None of its allowed GPU classes is in the pool.
    GpuClasses {
        asked: Vec<String>,
    },
    /// Its tenant isolates in hardware and no card offers a MIG slice this big.
    MigSlice {
        milli: u32,
        memory_mib: u64,
    },
}

/// Which quota bound a job hit on one GPU class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaBoundKind {
    /// The tenant's limit: its guarantee plus its borrowing limit.
    Limit,
    /// The pool's borrowing budget: idle capacity nobody is guaranteed
    /// plus what other tenants lend of their idle guarantees (each at most
    /// its lending limit). The bound is what the tenant may hold now.
    BorrowingBudget,
}

impl QuotaBoundKind {
    /// A stable name: part of the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::BorrowingBudget => "borrowing budget",
        }
    }
}

/// One GPU class on which a job's tenant is at a quota bound, in
/// milli-GPU (1000 = one GPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaHit {
    pub class: String,
    pub bound: QuotaBoundKind,
    /// The most the tenant may hold on the class under that bound.
    pub bound_milli: u64,
    /// What the tenant holds on the class (after this cycle's admissions).
    pub held_milli: u64,
    /// What this job asks on the class.
    pub asked_milli: u64,
    /// The tenant's guarantee and limit on the class, for context.
    pub guaranteed_milli: u64,
    pub limit_milli: u64,
}

/// Milli-GPU as people read it: "4 GPUs", "1 GPU", "0.5 GPU".
pub fn gpus(milli: u64) -> String {
    let n = if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        let s = format!("{:.3}", milli as f64 / 1000.0);
        s.trim_end_matches('0').to_owned()
    };
    let s = if milli > 0 && milli <= 1000 { "" } else { "s" };
    format!("{n} GPU{s}")
}

impl fmt::Display for QuotaHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bound {
            QuotaBoundKind::Limit => {
                write!(f, "{} limit {}", self.class, gpus(self.bound_milli))?;
                if self.guaranteed_milli > 0 && self.guaranteed_milli < self.limit_milli {
                    write!(
                        f,
                        " (guaranteed {} + borrowing {})",
                        gpus(self.guaranteed_milli),
                        gpus(self.limit_milli - self.guaranteed_milli)
                    )?;
                }
            }
            QuotaBoundKind::BorrowingBudget => write!(
                f,
                "{} borrowing budget: the pool lends enough to hold {} now (guaranteed {}, limit {})",
                self.class,
                gpus(self.bound_milli),
                gpus(self.guaranteed_milli),
                gpus(self.limit_milli)
            )?,
        }
        write!(
            f,
            "; holding {}, this job asks {}",
            trim_gpus(self.held_milli),
            trim_gpus(self.asked_milli)
        )
    }
}

/// "4", "0.5": a number of GPUs without the unit.
fn trim_gpus(milli: u64) -> String {
    let g = gpus(milli);
    g.split(' ').next().unwrap_or_default().to_owned()
}

/// A filter that refused some nodes, kube-scheduler style: the plugin,
/// its reason code, and on how many nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub plugin: &'static str,
    pub code: &'static str,
    pub nodes: u32,
}

impl WaitReason {
    /// A stable code: part of the API. Never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTenant { .. } => "UnknownTenant",
            Self::TenantSuspended { .. } => "TenantSuspended",
            Self::Infeasible { .. } => "Infeasible",
            Self::QuotaLimit { .. } => "QuotaLimit",
            Self::NoCapacity { .. } => "NoCapacity",
            Self::Reserved { .. } => "Reserved",
            Self::WarmCard { .. } => "WarmCard",
            Self::ModelBalance { .. } => "ModelBalance",
            Self::AwaitingVictims { .. } => "AwaitingVictims",
            Self::Queued => "Queued",
        }
    }

    /// Whether more time alone cannot help: the pool would have to change.
    pub fn is_infeasible(&self) -> bool {
        matches!(self, Self::Infeasible { .. } | Self::UnknownTenant { .. })
    }
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTenant { tenant } => write!(f, "tenant {tenant} is unknown"),
            Self::TenantSuspended { tenant } => {
                write!(
                    f,
                    "tenant {tenant} is suspended; its jobs wait until it is resumed"
                )
            }
            Self::Infeasible { resource } => write!(f, "fits no node of the pool: {resource}"),
            Self::QuotaLimit { hits } if hits.is_empty() => write!(
                f,
                "waiting: tenant quota limit or the pool's borrowing budget reached"
            ),
            Self::QuotaLimit { hits } => {
                write!(f, "quota: ")?;
                for (i, hit) in hits.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; and ")?;
                    }
                    write!(f, "{hit}")?;
                }
                Ok(())
            }
            Self::NoCapacity { refused } if refused.is_empty() => {
                write!(f, "waiting: no node has room")
            }
            Self::NoCapacity { refused } => {
                write!(f, "waiting: no node has room (")?;
                for (i, r) in refused.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    let s = if r.nodes == 1 { "" } else { "s" };
                    write!(f, "{} node{s}: {}/{}", r.nodes, r.plugin, r.code)?;
                }
                write!(f, ")")
            }
            Self::Reserved { node, at } => write!(f, "waiting: node {node} reserved from {at}"),
            Self::WarmCard {
                model,
                node,
                free_by,
                limit_ms,
            } => write!(
                f,
                "waiting for a card on {node} holding model {model}, free by {free_by}: \
                 sooner than loading it elsewhere; holds out at most {} with a usable card idle",
                seconds(*limit_ms)
            ),
            Self::ModelBalance { model, limit_ms } => write!(
                f,
                "waiting to load model {model} on an empty card or one whose model is less in \
                 demand; takes any usable card after {} with one idle",
                seconds(*limit_ms)
            ),
            Self::AwaitingVictims { victims } => {
                write!(
                    f,
                    "admitted; starts once {victims} preempted job(s) have stopped"
                )
            }
            Self::Queued => write!(f, "queued"),
        }
    }
}

impl fmt::Display for Infeasible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gpus { asked, largest } => write!(
                f,
                "gpus: asks for {asked} on one node; the largest node of its classes has {largest}"
            ),
            Self::CpuMilli { asked, largest } => write!(
                f,
                "cpu_milli: asks for {asked}; the largest node has {largest}"
            ),
            Self::MemoryMib { asked, largest } => write!(
                f,
                "memory_mib: asks for {asked}; the largest node has {largest}"
            ),
            Self::GpuMemoryMib { asked, largest } => write!(
                f,
                "gpu memory: needs {asked} MiB on a card; the largest card of its classes has {largest}"
            ),
            Self::GpuClasses { asked } => write!(
                f,
                "gpu_classes: none of {} is in the pool",
                asked.join(", ")
            ),
            Self::MigSlice { milli, memory_mib } => write!(
                f,
                "mig: no card offers a slice of {milli} milli-GPU and {memory_mib} MiB"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_text_names_the_limit() {
        let r = WaitReason::WarmCard {
            model: "qwen".into(),
            node: "n1".into(),
            free_by: Timestamp(0),
            limit_ms: 12_500,
        };
        assert_eq!(r.code(), "WarmCard");
        assert!(r.to_string().contains("12.5 s"), "{r}");
        let r = WaitReason::Infeasible {
            resource: Infeasible::CpuMilli {
                asked: 9_000_000,
                largest: 64_000,
            },
        };
        assert_eq!(r.code(), "Infeasible");
        assert!(r.to_string().contains("cpu_milli"), "{r}");
        assert!(r.is_infeasible());
    }

    #[test]
    fn quota_reasons_name_the_class_the_limit_and_the_numbers() {
        let r = WaitReason::QuotaLimit {
            hits: vec![QuotaHit {
                class: "A100-80G".into(),
                bound: QuotaBoundKind::Limit,
                bound_milli: 4000,
                held_milli: 4000,
                asked_milli: 1000,
                guaranteed_milli: 4000,
                limit_milli: 4000,
            }],
        };
        assert_eq!(r.code(), "QuotaLimit");
        assert_eq!(
            r.to_string(),
            "quota: A100-80G limit 4 GPUs; holding 4, this job asks 1"
        );
        let r = WaitReason::QuotaLimit {
            hits: vec![QuotaHit {
                class: "H100".into(),
                bound: QuotaBoundKind::BorrowingBudget,
                bound_milli: 3000,
                held_milli: 2500,
                asked_milli: 1000,
                guaranteed_milli: 2000,
                limit_milli: 6000,
            }],
        };
        assert_eq!(
            r.to_string(),
            "quota: H100 borrowing budget: the pool lends enough to hold 3 GPUs now \
             (guaranteed 2 GPUs, limit 6 GPUs); holding 2.5, this job asks 1"
        );
        assert_eq!(gpus(500), "0.5 GPU");
        assert_eq!(gpus(1000), "1 GPU");
        assert_eq!(gpus(1250), "1.25 GPUs");
        assert_eq!(gpus(0), "0 GPUs");
    }
}
