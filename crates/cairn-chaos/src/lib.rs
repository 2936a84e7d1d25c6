//! Black-box fault injection for Cairn, in the manner of Jepsen and etcd's robustness
//! tests: real `cairn server` processes on loopback, faults from outside (signals, and
//! a proxy on the peer links), a concurrent workload whose every operation is
//! recorded, and checks of the recorded history against what Cairn promises
//! (docs/ARCHITECTURE.md, "Guarantees").
//!
//! Nothing here looks inside a node except through its HTTP API, and the one door
//! added for it (`/v1/debug/*`, read-only views of a node's own replicas).
//!
//! # Modules, in the order a run uses them
//!
//! - [`cluster`] owns processes: three (or more) nodes with random ports and a
//!   temporary directory, SIGKILL, SIGSTOP/SIGCONT, restart; children never outlive
//!   the [`cluster::Cluster`] that spawned them.
//! - [`network`] owns the wire between nodes: a frame-aware TCP proxy in front of
//!   every node's peer port, applying [`network::LinkFaults`] (partitions, one-way
//!   blocks, loss, delay, duplication) per directed node pair.
//! - [`workload`] owns the clients: concurrent, some pinned to one node and some
//!   spread, a seeded mix of reads, writes, conditional writes, deletes, batches and
//!   scans, each recorded into a [`history::History`].
//! - [`nemesis`] owns the faults: which, when (seeded), their injection, their
//!   healing, and the proof that each one fired.
//! - [`linearizability`] checks each key's history with the Wing-Gong-Lowe checker of
//!   `todc-utils`; [`replicas`] checks durability, applied-once and convergence
//!   against every node's replica; [`snapshots`] checks every snapshot taken during
//!   the faults against the four guarantees.
//! - [`run`] puts one seeded run together and reports; the `cairn-chaos` binary
//!   repeats runs for a soak.
//!
//! # What a seed fixes, and what it cannot
//!
//! A seed fixes every choice the harness makes: the faults, their order, their times
//! and parameters, each client's operations and keys, and the proxy's per-frame
//! decisions in the order frames reach it. It cannot fix the operating system's
//! scheduling, so a replay runs the same scenario, not the same interleaving. A
//! failure therefore reports its seed and the command that replays it, and the
//! recorded history that showed it.

pub mod cluster;
pub mod error;
pub mod history;
pub mod linearizability;
pub mod nemesis;
pub mod network;
pub mod replicas;
pub mod run;
pub mod snapshots;
pub mod workload;

pub use error::ChaosError;
pub use run::{Run, RunReport, Scenario};
