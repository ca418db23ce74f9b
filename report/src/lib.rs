//! The regulator's report for a period: per-tenant GPU time by class, job
//! counts and charges; quota compliance; preemptions by reason; the pool's
//! capacity split into used, held idle and idle; denied attempts; node
//! locations; and the audit checkpoint it was made against.
//!
//! [`model`] is the figures, filled by the store; [`render`] formats them
//! as JSON, CSV or one HTML page whose [`charts`] are inline SVG. Nothing
//! here reads a clock, so a closed period renders to the same bytes every
//! time.

pub mod charts;
pub mod history;
pub mod model;
pub mod render;

pub use model::{Inconsistent, Report};
