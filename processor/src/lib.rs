//! Statehouse processor: partitions, entities and the user-function sidecar.
