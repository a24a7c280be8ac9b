//! Running a plan: events, the run journal, the stack lock, the executor and the report.
//!
//! The executor knows the order of things (dependencies, timeouts, retries, `on_failure`,
//! confirmations, resume); what a step does is a [`StepRunner`]'s business, implemented over
//! the adapters by the binary.

pub mod events;
pub mod executor;
pub mod journal;
pub mod lock;
pub mod report;

pub use events::{Event, EventKind, StepStatus};
pub use executor::{Executor, RunOptions, RunOutcome, StepCtx, StepError, StepOutput, StepRunner};
pub use journal::{Journal, RunDir};
pub use lock::{LockError, StackLock};
pub use report::RunReport;

/// A new run id: sortable by time, unique enough for one stack's runs.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = jiff::Timestamp::now();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now.as_nanosecond() as u128);
    h.write_u32(std::process::id());
    format!(
        "{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        h.finish() & 0xffff
    )
}
