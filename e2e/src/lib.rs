//! Whole-stack test tools shared by the tests in `tests/`: a client driver that records every
//! operation (invoked → ok / failed / unknown) with unique tokens and idempotency keys, and a
//! checker that reads the journal with read_committed and queries every entity
//! (DESIGN §9, `docs/reliability-plan.md` of the team).

pub mod checker;
pub mod driver;
