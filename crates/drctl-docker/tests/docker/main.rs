//! drctl-docker against the real Docker daemon. One test binary (linking one per suite
//! costs minutes on the lab's two cores); the suites are its modules.
//!
//! Everything a test creates is named `drctl-test-<pid>-...` and labelled
//! `org.drctl.test=1`, and removed by a drop guard, panics included. Without a daemon the
//! suites are skipped (and listed in the skipped file), or fail when `DRCTL_LAB=1`.

mod common;

mod compose;
mod containers;
mod exec;
mod health;
mod hostpath;
mod spec;
mod unreachable;
mod volume;
