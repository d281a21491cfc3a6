//! The shopping cart over the wire, driven the way the processor drives a
//! user function: discovery, then one `handle` stream per cart.

mod cart;
mod support;
