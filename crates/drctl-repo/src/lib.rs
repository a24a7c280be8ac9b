//! drctl backup repository.
