//! finpool's API server: the finpool.v1 gRPC services, JWT authentication
//! and per-method authorization. It talks to the pool only through the
//! store, an [`InventorySource`] and a [`LogSource`], so the same server
//! fronts the standalone pool and the Kubernetes one.

pub mod audit;
pub mod auth;
pub mod convert;
pub mod error;
pub mod health;
pub mod metrics;
pub mod reflection;
pub mod reports;
pub mod rest;
pub mod server;
pub mod service;
pub mod state;
pub mod streams;

pub use auth::{Principal, Role, SigningKey, TokenLifetimes, Verifier};
pub use state::{ApiConfig, ApiState, InventorySource, LogSource, RateLimit};
