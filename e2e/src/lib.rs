//! Whole-stack tests live in `tests/`.
