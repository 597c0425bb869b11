//! Chargify (Maxio Advanced Billing): webhooks (the wire format, signatures and the fields we
//! use), the REST API client ([`api`]) and snapshot syncs built from it ([`snapshot`]).

pub mod api;
pub mod form;
pub mod signature;
pub mod snapshot;
pub mod webhook;

pub use form::{FormBody, FormError, FormLimitError, FormLimits, MAX_FORM_DEPTH, MAX_FORM_FIELDS};
pub use signature::{SharedKey, SharedKeySet, SignatureCandidate, SignatureError, SignatureSource};
pub use webhook::{Webhook, WebhookError};
