//! Whether a job could ever run on the pool: the check a submit makes, so
//! that a job no node could hold is refused rather than left waiting
//! forever. It is the same check ([`crate::decide::infeasible`]) that gives
//! a queued job [`crate::WaitReason::Infeasible`] when the pool changes
//! under it.

use std::sync::Arc;

use finpool_domain::{
    BaseModel, GpuClass, IsolationLevel, JobId, Name, Node, Resources, Tenant, Timestamp,
};

use crate::decide::infeasible;
use crate::snapshot::{Built, QueuedJob, Snapshot, SnapshotError};
use crate::wait::Infeasible;

/// The pool's nodes, indexed once, to check jobs against.
#[derive(Debug, Clone)]
pub struct PoolFit {
    built: Built,
}

impl PoolFit {
    /// Indexes the pool (as it would be empty).
    pub fn new(classes: &[GpuClass], nodes: &[Node]) -> Result<Self, SnapshotError> {
        let snapshot = Snapshot {
            classes: classes.to_vec(),
            nodes: Arc::new(nodes.to_vec()),
            // The tenant is given per check; only its isolation matters.
            tenantless: true,
            ..Snapshot::default()
        };
        Ok(Self {
            built: snapshot.build()?,
        })
    }

    /// `Ok` if some node of the pool, were it empty, could run a job of
    /// `tenant` asking for `resources` (and running `model`, one of
    /// `models`); otherwise the resource no node has enough of.
    pub fn check(
        &self,
        tenant: &Tenant,
        resources: &Resources,
        model: Option<&Name>,
        models: &[BaseModel],
    ) -> Result<(), Infeasible> {
        let job = QueuedJob {
            id: JobId(Default::default()),
            tenant: tenant.id.clone(),
            priority: 0,
            submitted_at: Timestamp(0),
            resources: resources.clone(),
            model: model.cloned(),
            max_runtime_ms: None,
        };
        // A tenant-less task always builds; the tenant's isolation is
        // what placement would apply to it.
        let Ok(mut task) = self.built.task_for(&job, models, true) else {
            return Ok(());
        };
        task.mig = tenant.isolation == IsolationLevel::Mig;
        infeasible(&self.built.cluster, &task)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use finpool_domain::{Gpu, GpuRequest, MigSlice, Quota};

    use super::*;

    fn pool() -> PoolFit {
        let node = |name: &str, cpu: u64, gpus: u32, mig: bool| Node {
            name: name.into(),
            labels: BTreeMap::new(),
            cpu_milli: cpu,
            memory_mib: 65_536,
            gpus: (0..gpus)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{name}-{i}"),
                    class: "A100".into(),
                    memory_mib: 81_920,
                    mig: if mig {
                        vec![MigSlice::from_profile("3g.40gb", format!("MIG-{name}-{i}")).unwrap()]
                    } else {
                        vec![]
                    },
                })
                .collect(),
            models: vec![],
        };
        let classes = [GpuClass {
            name: "A100".into(),
            memory_mib: 81_920,
        }];
        PoolFit::new(
            &classes,
            &[node("big", 32_000, 4, false), node("mig", 8_000, 1, true)],
        )
        .unwrap()
    }

    fn tenant(isolation: IsolationLevel) -> Tenant {
        Tenant {
            id: Name::parse("id", "alpha").unwrap(),
            display_name: "alpha".into(),
            quotas: [(
                "A100".to_owned(),
                Quota {
                    guaranteed: 4,
                    limit: 8,
                    lending_limit: None,
                },
            )]
            .into(),
            weight: 1,
            isolation,
            created_at: Timestamp(0),
            suspended: None,
        }
    }

    fn resources(gpu: GpuRequest, cpu_milli: u64) -> Resources {
        Resources {
            gpu,
            gpu_classes: vec![],
            cpu_milli,
            memory_mib: 1024,
        }
    }

    #[test]
    fn names_the_resource_no_node_has_enough_of() {
        let pool = pool();
        let shared = tenant(IsolationLevel::SharedWithinTenant);
        let check = |r: &Resources| pool.check(&shared, r, None, &[]);
        assert_eq!(
            check(&resources(GpuRequest::Whole { count: 4 }, 32_000)),
            Ok(())
        );
        assert_eq!(
            check(&resources(GpuRequest::None, i64::MAX as u64)),
            Err(Infeasible::CpuMilli {
                asked: i64::MAX as u64,
                largest: 32_000
            })
        );
        assert_eq!(
            check(&resources(GpuRequest::Whole { count: 5 }, 0)),
            Err(Infeasible::Gpus {
                asked: 5,
                largest: 4
            })
        );
        // Two cards fit only on the node with four, and its CPU is enough.
        assert_eq!(
            check(&resources(GpuRequest::Whole { count: 2 }, 16_000)),
            Ok(())
        );
        let mut big = resources(GpuRequest::Whole { count: 1 }, 0);
        big.memory_mib = 1 << 40;
        assert!(matches!(check(&big), Err(Infeasible::MemoryMib { .. })));
        let mut other_class = resources(GpuRequest::Whole { count: 1 }, 0);
        other_class.gpu_classes = vec!["H100".into()];
        assert!(matches!(
            check(&other_class),
            Err(Infeasible::GpuClasses { .. })
        ));
    }

    #[test]
    fn a_mig_tenants_share_needs_a_slice_that_holds_it() {
        let pool = pool();
        let share = |milli| {
            resources(
                GpuRequest::Share {
                    milli,
                    memory_mib: 1024,
                },
                0,
            )
        };
        let mig = tenant(IsolationLevel::Mig);
        assert_eq!(pool.check(&mig, &share(400), None, &[]), Ok(()));
        assert_eq!(
            pool.check(&mig, &share(900), None, &[]),
            Err(Infeasible::MigSlice {
                milli: 900,
                memory_mib: 1024
            })
        );
        // A tenant sharing in software may take any card.
        let shared = tenant(IsolationLevel::SharedWithinTenant);
        assert_eq!(pool.check(&shared, &share(900), None, &[]), Ok(()));
    }

    #[test]
    fn a_model_needs_a_card_with_its_memory() {
        let pool = pool();
        let model = BaseModel {
            name: Name::parse("name", "huge").unwrap(),
            size_mib: 150_000,
            min_gpu_memory_mib: 160_000,
            load_time_ms: None,
            registered_at: Timestamp(0),
        };
        assert_eq!(
            pool.check(
                &tenant(IsolationLevel::SharedWithinTenant),
                &resources(GpuRequest::Whole { count: 1 }, 0),
                Some(&model.name),
                std::slice::from_ref(&model),
            ),
            Err(Infeasible::GpuMemoryMib {
                asked: 160_000,
                largest: 81_920
            })
        );
    }
}
