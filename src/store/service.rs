//! The store's calls, by what they serve: each file adds its part to
//! [`Store`](super::Store), whose state is in `handle.rs`, below them all.

mod indexes;
mod schemas;
