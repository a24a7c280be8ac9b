//! drctl's database adapters: consistent backups, restores, health gates and fingerprints
//! for PostgreSQL ([`postgres`]), Redis ([`redis`]) and Qdrant ([`qdrant`]).
//!
//! # Storage-agnostic streams
//! Backups write to an `AsyncWrite` and restores read from an `AsyncRead`; the caller
//! connects them to the repository, which compresses, encrypts and checksums. Nothing here
//! holds a dump in memory or puts it on the controller's disk. A writer is flushed, never
//! shut down; after an error it may hold a partial object, which the caller discards.
//!
//! # Through the tools in the containers
//! PostgreSQL and Redis are driven with the tools inside their own containers (`pg_dump`,
//! `pg_restore`, `psql`, `redis-cli`, `redis-check-rdb`) through `docker exec`, with stdin
//! and stdout streamed ([`drctl_docker::DockerClient::exec`]). So:
//! - client and server versions always match (pg_dump 17's output does not restore into
//!   16; a Redis RDB version must be one the server reads), whatever is installed on the
//!   controller host (nothing needs to be);
//! - no network path from the controller to the database is needed, and no port has to
//!   be published: the tools connect to 127.0.0.1 inside the container;
//! - the only credentials drctl needs are the Docker socket's and the database's own.
//!
//! Passwords: when a target has `password_env`, the variable is read once, when the adapter
//! is made (a missing variable fails before anything is touched), and handed to the tool
//! in the exec environment (`PGPASSWORD`, `REDISCLI_AUTH`), never in argv, a log line or a
//! message. With a password, PostgreSQL is reached over TCP on 127.0.0.1 (where
//! `pg_hba.conf` usually asks for it; the Unix socket is usually `trust`). Note that the
//! official postgres image trusts 127.0.0.1 too unless `POSTGRES_INITDB_ARGS` or
//! `POSTGRES_HOST_AUTH_METHOD` say otherwise; the lab image checks it.
//!
//! Qdrant has no such tools and is reached over its REST API (plain http, `api-key`
//! header from `api_key_env`).
//!
//! # Errors and fingerprints
//! Every call returns a [`DbError`] whose message starts "failed to ...", names the
//! container, database, collection or service, says what to do, and quotes the last lines
//! a failing tool printed. Fingerprints are serde structs (stored as `serde_json::Value`,
//! see [`Fingerprint`]) whose `compare` names exactly what differs.

pub mod container;
mod error;
pub mod fingerprint;
pub mod postgres;
pub mod qdrant;
pub mod redis;
mod util;

pub use container::service_container;
pub use error::DbError;
pub use fingerprint::{Fingerprint, Mismatch};
pub use postgres::{
    PgDatabaseFingerprint, PgDumpOptions, PgDumpReport, PgFingerprint, PgGlobalsReport,
    PgRestoreOptions, PgRestoreReport, PgTableFingerprint, Postgres,
};
pub use qdrant::{
    Qdrant, QdrantCollectionFingerprint, QdrantFingerprint, QdrantRestoreReport,
    QdrantSnapshotOptions, QdrantSnapshotReport, QdrantVector,
};
pub use redis::{
    Redis, RedisBackupOptions, RedisBackupReport, RedisDbFingerprint, RedisFingerprint,
    RedisPersistence, RedisRestoreOptions, RedisRestoreReport, RedisSample, RedisTypeSample,
};
pub use util::{secret_from_env, Secret};
