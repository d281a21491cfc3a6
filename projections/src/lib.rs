//! Statehouse projector: read models built from journal topics.
