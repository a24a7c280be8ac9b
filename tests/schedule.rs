//! `drctl schedule` against a real dockerd (being written).
