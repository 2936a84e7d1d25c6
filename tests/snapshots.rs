//! Consistent snapshots against real processes.
