//! The adversarial suite: attacks and faults from the catalogue
//! (`shared/reference/attack-catalogue.md`) that the other suites do not
//! already cover, against the real binary. Each test names its row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod chunk_framing;
mod exhaustion;
mod full_disk;
mod h2_downgrade;
mod h2_floods;
mod h2_paths;
mod h2_wire;
mod local_replies;
mod member_requests;
mod membership_attacks;
mod store_faults;
mod token_api_keys;
mod upstream_faults;
