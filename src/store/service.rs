//! The store's calls, by what they serve: each file adds its part to
//! [`Store`](super::Store), whose state is in `handle.rs`, below them all.

#[cfg(feature = "fault-injection")]
mod faults;
mod feed;
mod indexes;
mod query;
mod schemas;
