//! The Cairn node: configuration, the HTTP API, request routing, and the wiring of
//! store, replicas and API into a running [`Node`].
//!
//! A request's path reads off the modules: [`api`] parses and validates it, [`router`]
//! finds its shard and that shard's leader, and `cairn_raft` replicates and applies
//! it. This crate must never touch Raft state or sled trees directly: it asks the
//! replicas through `cairn_raft`, so the API cannot break a guarantee the Raft loop
//! keeps.

pub mod api;
pub mod auth;
pub mod config;
pub mod departures;
pub mod dev;
pub mod error;
pub mod https;
pub mod identity;
pub mod join;
pub mod leadership;
pub mod moves;
pub mod node;
pub mod rebalance;
pub mod revert;
pub mod router;
pub mod serve;

pub use config::{Config, Settings};
pub use error::ServerError;
pub use node::Node;
