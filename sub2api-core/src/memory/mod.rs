//! In-process implementations of every trait: the embedded default for state that need not
//! survive a restart (scheduling), and complete stand-ins for the durable stores in tests and in
//! services that keep money elsewhere.

mod accounts;
mod directory;
mod ledger;
mod scheduler;
mod usage_log;

pub use accounts::MemoryAccountProvider;
pub use directory::MemoryDirectory;
pub use ledger::{JournalEntry, MemoryLedger};
pub use scheduler::{MemoryScheduler, SchedulerConfig};
pub use usage_log::MemoryUsageLog;

/// How much of a bounded collection to reserve up front. Reserving touches no memory until it is
/// used, and a collection that grows by doubling copies (or rehashes) every entry under the lock
/// that every request waits on; a bound may also be "practically unbounded", hence the cap.
fn preallocated(bound: usize) -> usize {
    bound.min(1 << 20)
}
