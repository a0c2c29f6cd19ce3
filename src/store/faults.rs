//! Test-only fault injection, compiled only with the `fault-injection`
//! feature (which the integration tests turn on): the hooks that make a
//! shard meet a failure the way a real one would, so the tests can check
//! what the service does then. A release binary has no way in.

use std::time::Duration;

/// Faults that only tests inject, through [`Store::inject_fault`]: nothing
/// outside the process can reach them. Each makes the writer take the path
/// a real failure of that kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The writer panics.
    Panic,
    /// The writer panics, and the supervisor waits at least this long
    /// before reopening it: a failure that lasts, so a test can watch the
    /// shard while it is down instead of racing its restart.
    PanicAndStayDown(Duration),
    /// The writer panics right after its next commit, before it updates the
    /// cache and acknowledges.
    PanicAfterCommit,
    /// The writer's connection closes under it.
    BreakConnection,
    /// The writer sleeps this long before its next job (its queue fills).
    Stall(Duration),
    /// The file may not grow: SQLite answers as on a full disk.
    DiskFull,
    /// The file may not be written: SQLite answers as on a read-only one.
    ReadOnly,
    /// Undoes `DiskFull` and `ReadOnly`.
    Heal,
    /// Every read connection of the shard is taken for this long, as by
    /// slow scans (handled by the shard, not the writer).
    HoldReads(Duration),
}

/// The payload of [`Fault::PanicAndStayDown`]'s panic, which the
/// supervisor reads to hold its restart back.
pub(super) struct StayDown {
    pub(super) shard: usize,
    pub(super) duration: Duration,
}

impl StayDown {
    /// How long to wait before reopening, and the panic's message, if
    /// `panic` is this fault's.
    pub(super) fn of(panic: &(dyn std::any::Any + Send)) -> Option<(Duration, String)> {
        let down = panic.downcast_ref::<Self>()?;
        let message = format!(
            "injected fault: shard {}'s writer panics and stays down for {} ms",
            down.shard,
            down.duration.as_millis()
        );
        Some((down.duration, message))
    }
}
