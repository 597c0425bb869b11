//! Keap (Infusionsoft) REST v1: the CRM port, its HTTP adapter (the [`client`] mapping over
//! the [`transport`]), and what Keap's answers mean.
//! Two ways to authenticate ([`settings`]): an API key, or OAuth2 with tokens kept in a
//! shared store and refreshed by one worker at a time ([`oauth`]).

pub mod client;
pub mod country;
pub mod crm;
pub mod deadline;
pub mod directory;
pub mod errors;
pub mod memory;
pub mod oauth;
pub mod settings;
pub mod throttle;
pub mod transport;

pub use client::KeapClient;
pub use country::keap_country_code;
pub use crm::{
    Address, Company, CompanyId, Contact, ContactFields, ContactId, Crm, CustomField, GoalHit,
    KeapMeter, Tag, TagId, MAX_BULK_TAG_CONTACTS,
};
pub use directory::{Directory, IfMissing, LookupError};
pub use errors::{ErrorBody, KeapError, ThrottleKind};
pub use memory::InMemoryCrm;
pub use throttle::{Budget, ThrottleReport};
pub use transport::{Credential, KeapClientConfig, Operation};
