//! Chargify (Maxio Advanced Billing): webhooks (the wire format, signatures and the fields we
//! use) and the REST API client ([`api`]).

pub mod api;
pub mod form;
pub mod signature;
pub mod webhook;

pub use form::{FormBody, FormError};
pub use signature::{SharedKey, SharedKeySet, SignatureCandidate, SignatureError, SignatureSource};
pub use webhook::{Webhook, WebhookError};
