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
