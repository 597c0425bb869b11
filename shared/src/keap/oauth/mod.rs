//! Keap OAuth2: bearer tokens refreshed by one worker at a time through a shared token store
//! (see [`tokens`] for the protocol), Keap's token endpoint, and the store's adapters.

pub mod dynamodb;
pub mod endpoint;
pub mod store;
pub mod tokens;

pub use dynamodb::DynamoDbTokenStore;
pub use endpoint::{
    authorize_url, ClientCredentials, KeapTokenEndpoint, TokenIssuer, KEAP_AUTHORIZE_URL,
    KEAP_TOKEN_URL,
};
pub use store::{Lease, MemoryTokenStore, StoreError, TokenPair, TokenRecord, TokenStore};
pub use tokens::{OAuthTokens, RefreshPolicy};
