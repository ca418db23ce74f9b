//! finpool in Kubernetes: the custom resources ([`crd`]), pure builders of
//! the objects they own ([`build`]), and the controllers that apply them
//! ([`controller`]). The PostgreSQL store stays the system of record: an
//! InferenceJob is submitted through the store's submit path, and jobs
//! submitted over the API are mirrored as InferenceJobs.

pub mod build;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod inventory;
