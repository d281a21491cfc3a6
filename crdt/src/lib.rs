//! Statehouse CRDTs: the eight Cloudstate CRDT types as delta-state CRDTs (no I/O).
//!
//! * [`State`] — a CRDT state, and a delta is a state too: a join-semilattice element. Joins are
//!   commutative, associative and idempotent (`tests/laws.rs` checks it on thousands of random
//!   cases), so replicas converge whatever the order and duplication of the fragments they
//!   exchange. GCounter `{replica: total}`, PNCounter `{replica: (p, n)}`, GSet, ORSet (dots and
//!   a causal context, adds win), LWWRegister `(value, clock, replica)`, Flag, ORMap (keys as an
//!   ORSet, each dot carrying a nested state; updates win), Vote `{replica: (version, vote)}`.
//! * [`codec`] — the canonical encoding (`statehouse.crdt.v1.State`): equal states, equal bytes.
//!   Any consumer of the broadcast topic can fold an entity from it.
//! * [`protocol`] — the Cloudstate side: what a user function holds ([`protocol::View`]), the
//!   protocol delta that updates it ([`protocol::diff`]), and what a user function's delta
//!   means for the CRDT ([`protocol::apply`]: a fragment, or why it is invalid).

pub mod codec;
pub mod dot;
pub mod protocol;
mod state;

pub use dot::{CausalContext, Dot, DotSet, ReplicaId};
pub use state::{
    DEPARTED, Elem, Flag, GCounter, GSet, LwwRegister, Mismatch, ORMap, ORSet, PNCounter, State,
    Type, Vote,
};
