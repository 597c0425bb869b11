//! Keap's end state as a function of Chargify's history alone, whatever order the webhooks
//! arrive in, however often, on however many instances.
//!
//! Every value the rules write to a contact is a [`Target`]: a contact field (the email, the
//! name, the address…), a custom field by label, or a tag. Each target keeps, in the identity
//! map, the [`Version`] of the Chargify change that last decided it: the Chargify time the
//! webhook carries for that kind of value (the customer's `updated_at` for contact data, the
//! subscription's `updated_at` for everything else) and the webhook id to order two changes of
//! one instant. A webhook writes a target only if its version is at least the stored one, so
//! an older webhook never overwrites a newer value; equal versions pass, so a retry of the
//! same webhook writes again. The end value of each target is the one of the newest change
//! that wrote it, whatever the order the changes were applied in: a last-writer-wins register
//! per target, keyed by Chargify's clock.
//!
//! Goals and notes are not values: they happen once per call. A rule whose every write was
//! superseded by newer changes is *stale* for that webhook, and its goals and notes follow the
//! rule's `on_stale` (skipped by default): a late `past_due` does not start dunning for a
//! customer who has paid since.
//!
//! The identity map also keeps a *mirror* of what Keap holds: a digest of each value last
//! written, and the contact's tag ids as Keap last listed them (kept up to date with our own
//! tag calls). A write of what Keap already holds is skipped, so a renewal that changes
//! nothing costs no Keap call.
//!
//! Everything here is pure: the processor and the backfill fold plans over a
//! [`CustomerState`] read under the customer's lease, then make the Keap calls the result
//! asks for (see `crate::apply`).

mod fold;
mod state;
mod target;

pub use fold::{writes_of, Fold, Verdict, Winner, Write};
pub use state::{CustomerState, StateError};
pub use target::{digest, holds, ContactAttr, Desired, Target, Version};
