//! The `cairn` binary's tooling commands, apart from the node itself: `bench` (a load
//! generator that prints figures), `backup` and `restore` (the backup catalog and
//! offline restore, on the command line), `certs` and `token` (a secured cluster's
//! certificates and tokens) and `client` (the HTTP API by hand). They reach a cluster
//! only through `cairn-client` or, for offline restore, the backup crate; none of
//! them runs inside a node.

pub mod backup;
pub mod bench;
pub mod certs;
pub mod client;
pub mod token;
