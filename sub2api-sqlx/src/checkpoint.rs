//! Keeps a SQLite file's write-ahead log bounded without stalling the ledger writer.
//!
//! The ledger writer's connection never checkpoints inside its commits (every waiting request
//! would sit through the copy and its fsync); a pool connection copies the WAL back into the
//! database in the background instead, with `PASSIVE` checkpoints that never block the writer.
//! But SQLite only starts the WAL over from its beginning when a write transaction begins after a
//! checkpoint has copied *every* frame, and under steady load the writer appends frames faster
//! than a background pass can finish: the WAL then grows for as long as the load lasts (the
//! benchmark grew one to 800 MB), every append allocating new file blocks.
//!
//! So once the WAL is large and a background pass has left only a short tail, the writer is
//! asked to copy that tail itself, between two rounds ([`Writer::finish_checkpoint`]): nothing
//! is appended meanwhile, the copy completes, and its next transaction starts the WAL over (the
//! file keeps its size and is overwritten from then on).

use std::sync::Arc;
use std::time::Duration;

use crate::Shared;
use crate::batch::Writer;
use crate::db::Q;

/// How often the background pass runs.
const EVERY: Duration = Duration::from_millis(500);
/// A WAL this long (frames of one page, 4 KiB by default) is started over.
const RESET_FRAMES: i64 = 8192;
/// The most frames the writer copies itself: a few milliseconds of one round's time.
const TAIL_FRAMES: i64 = 1024;

pub(crate) fn spawn(shared: Arc<Shared>, writer: Writer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Passes repeat at once while the WAL is long and their tail too long for the writer.
            loop {
                let pass = match shared
                    .pool
                    .one(Q::new("PRAGMA wal_checkpoint(PASSIVE)"))
                    .await
                {
                    Ok(row) => row
                        .i64("log")
                        .and_then(|log| Ok((log, row.i64("checkpointed")?))),
                    Err(e) => Err(e),
                };
                match pass {
                    Ok((log, _)) if log < RESET_FRAMES => break,
                    Ok((log, copied)) if log - copied <= TAIL_FRAMES => {
                        writer.finish_checkpoint().await;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                        break;
                    }
                }
            }
        }
    })
}
