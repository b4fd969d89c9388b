//! floe's development tools, kept out of the production crates: the seed event generator
//! ([`generate`]) and its producer ([`produce`]) behind `floe generate`, the in-process
//! Kafka-protocol broker ([`broker`]) behind `floe dev-broker` and `floe quickstart`, and what
//! `floe bench` measures with ([`meters`], [`mappings`]).
#![deny(missing_docs)]

pub mod broker;
pub mod generate;
pub mod mappings;
pub mod meters;
pub mod produce;
