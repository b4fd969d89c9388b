//! Sources: where a pipeline's messages come from. Only the source differs between `floe
//! run` ([`kafka`]), `floe load` ([`lines`] of a file or stdin) and `floe dlq replay` (the
//! dead letters, [`crate::replay`]); each hands its messages to the same stages (decode,
//! transform, batch, write, commit, dead letters).

pub(crate) mod dead_letters;
pub mod kafka;
pub mod lines;
