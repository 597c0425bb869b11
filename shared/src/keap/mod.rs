//! Keap (Infusionsoft) REST v1: what its answers mean. The client, the `Crm` port and auth
//! come with issue 3; these pieces are what they classify responses with.

pub mod errors;
pub mod throttle;

pub use errors::{ErrorBody, KeapError, ThrottleKind};
pub use throttle::{Budget, ThrottleReport};
