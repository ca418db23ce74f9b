//! FGD, after "Beware of Fragmentation" (USENIX ATC '23).

use crate::cluster::Choice;
use crate::plugins::workload::WorkloadModel;
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// FGD: place the task where it raises the node's expected fragmentation
/// the least. The workload model is fixed (the FGD paper reads it from the
/// trace) or, when `None`, the one the driver learned ([`Ctx::workload`]).
pub struct Fgd {
    pub model: Option<WorkloadModel>,
    pub scale: FgdScale,
}

/// How the fragmentation change becomes a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FgdScale {
    /// The decrease in expected fragmentation, in milli-GPU.
    Raw,
    /// As the FGD authors ran it inside the kube-scheduler framework: the
    /// decrease squashed by a sigmoid (per 1000 milli) onto the framework's
    /// integer 0..=100 node-score scale. Near-equal choices tie.
    KubeSigmoid,
}

impl FgdScale {
    fn apply(self, decrease: f64) -> f64 {
        match self {
            Self::Raw => decrease,
            Self::KubeSigmoid => (100.0 / (1.0 + (-decrease / 1000.0).exp())).floor(),
        }
    }
}

impl Scorer for Fgd {
    fn name(&self) -> &'static str {
        "FGD"
    }

    fn score(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: crate::cluster::NodeIdx,
        choice: Choice,
    ) -> f64 {
        let mut out = [0.0];
        self.score_node(ctx, task, node, &[choice], &mut out);
        out[0]
    }

    fn score_node(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: crate::cluster::NodeIdx,
        choices: &[Choice],
        out: &mut [f64],
    ) {
        let model = self.model.as_ref().unwrap_or(ctx.workload);
        let node = &ctx.cluster.nodes[node as usize];
        let before = ctx.remembered(|| model.fragmentation_now(node));
        for (choice, score) in choices.iter().zip(out) {
            let after = model.fragmentation_after(node, *choice, task.cpu_milli, task.memory_mib);
            *score = self.scale.apply(before - after);
        }
    }
}
