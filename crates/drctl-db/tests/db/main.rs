//! drctl-db against real servers: PostgreSQL and Redis in containers from the lab images,
//! Qdrant from `QDRANT_URL` or a `qdrant` binary on PATH. One test binary (linking one
//! per suite costs minutes on two cores); the suites are its modules.
//!
//! Everything a test creates is named `drctl-test-<pid>-...`, labelled `org.drctl.test=1`
//! and removed by a drop guard, panics included; leftovers of dead test processes are
//! removed first. Without a daemon (or an image, or a Qdrant) a suite is skipped and
//! listed in the skipped file, or fails when `DRCTL_LAB=1`.

mod common;

mod postgres;
mod qdrant;
mod redis;
