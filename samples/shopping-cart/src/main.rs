//! The Cloudstate shopping cart sample.
fn main() {}
