//! Folder shares: real directories kept identical across peers.
//!
//! Built on the records engine: an entry's key is its relative path and its value a
//! [`model::FileMeta`]. This module adds what files need on top: scanning, content-defined
//! chunks, fetching only missing chunks, and writing files safely.

pub mod model;
