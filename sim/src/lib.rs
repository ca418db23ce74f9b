//! Simulation drivers for finpool's scheduler. Each replays a workload
//! through the very same scheduling cycle and shell the standalone pool
//! runs, over in-memory ports ([`pool::SimPool`]).
//!
//! - [`openb`]: Alibaba's cluster-trace-gpu-v2023 (the FGD paper's trace),
//!   read from its CSV files.
//! - [`workload`]: the paper's protocol for inflating and ordering it.
//! - [`experiment`]: one run, the allocation curve, and many runs over seeds.
//! - [`check`]: an independent recount from a placements file.
//! - [`plot`]: allocation curves as SVG or PNG.
//!
//! Long runs report progress through callbacks (`*_observed`); drawing it
//! is the caller's business, so nothing here writes to a terminal.

pub mod bench;
pub mod check;
pub mod experiment;
pub mod fairness;
pub mod genai;
pub mod openb;
pub mod plot;
pub mod policies;
pub mod pool;
mod trace_csv;
pub mod workload;

pub use experiment::{
    Experiment, ExperimentReport, PolicyKind, RunResult, run_experiment, run_experiment_observed,
    run_once, run_once_observed,
};
pub use openb::{OpenbNode, OpenbPod, TraceError};
