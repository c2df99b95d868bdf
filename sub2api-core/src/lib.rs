//! # sub2api-core
//!
//! The relay as a library: domain types, the five traits ([`AccountProvider`], [`Scheduler`],
//! [`Meter`], [`Ledger`], [`PaymentGateway`]), the tower layers of the request path, usage meters,
//! pricing, and in-memory implementations of everything.
//!
//! Core depends on no web framework, database driver or Redis client: adapters (`sub2api-axum`,
//! `sub2api-actix`) mount its services, storage crates (`sub2api-sqlx`, `sub2api-redis`) implement
//! its traits.

pub mod account_provider;
pub mod api;
pub mod body;
pub mod config;
pub mod dialect;
pub mod domain;
pub mod error;
pub mod layer;
pub mod ledger;
pub mod memory;
pub mod meter;
pub mod metrics;
pub mod money;
pub mod oauth;
pub mod payment;
pub mod pricing;
pub mod protocol;
pub mod relay;
pub mod request;
pub mod runtime;
pub mod scheduler;
pub mod store;
pub mod subscription;

pub use account_provider::AccountProvider;
pub use ledger::Ledger;
pub use meter::Meter;
pub use payment::PaymentGateway;
pub use scheduler::Scheduler;

/// The boxed error type of bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
