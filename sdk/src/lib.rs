//! Write Cloudstate user functions in Rust.
