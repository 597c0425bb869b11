//! `cks keap …`: the one-time OAuth authorisation that gives the functions their first token
//! pair (docs/keap-auth.md). It reads the same settings as the functions
//! (`KEAP_CLIENT_ID` + `KEAP_CLIENT_SECRET` or `KEAP_OAUTH_CLIENT_SECRET_ARN`,
//! `KEAP_TOKEN_TABLE`, `KEAP_TOKEN_KEY`, `KEAP_TOKEN_URL`), and the standard AWS variables
//! (`AWS_ENDPOINT_URL` points it at an emulator).

use clap::Subcommand;
use shared::config::ConfigError;
use shared::keap::oauth::{authorize_url, TokenStore};
use shared::keap::settings::KeapSettings;
use shared::keap::KeapError;
use std::time::Duration;

#[derive(Subcommand)]
pub enum KeapCommand {
    /// Print the URL a Keap admin opens to authorise the app.
    AuthorizeUrl {
        /// Where Keap sends the browser back with `?code=…`; must match the app's registered URI.
        #[arg(long)]
        redirect_uri: String,
        /// Opaque value Keap returns unchanged, to match the answer to this request.
        #[arg(long)]
        state: Option<String>,
    },
    /// Exchange the code from the redirect for the first token pair, and store it.
    ExchangeCode {
        /// The `code` parameter of the redirect (valid for a few minutes, once).
        #[arg(long)]
        code: String,
        /// The same redirect URI as in the authorisation URL.
        #[arg(long)]
        redirect_uri: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KeapAuthError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Keap refused the exchange: {0}")]
    Keap(#[from] KeapError),
    #[error("Keap issued a token pair but it could not be stored ({0}); it is lost: authorise again once the table is reachable")]
    Store(String),
}

/// Bound on AWS calls (Secrets Manager, DynamoDB) from the command.
const AWS_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(command: KeapCommand) -> Result<(), KeapAuthError> {
    let settings = KeapSettings::from_env()?;
    let oauth = settings.oauth()?;
    let aws = shared::aws::sdk_config(AWS_TIMEOUT, None).await;
    match command {
        KeapCommand::AuthorizeUrl {
            redirect_uri,
            state,
        } => {
            let client = oauth.client_credentials(&aws).await?;
            println!(
                "{}",
                authorize_url(&client.client_id, &redirect_uri, state.as_deref())?
            );
            eprintln!("Open it as a Keap admin, approve, then run `cks keap exchange-code --code <code from the redirect> --redirect-uri {redirect_uri}`.");
        }
        KeapCommand::ExchangeCode { code, redirect_uri } => {
            let endpoint = oauth.token_endpoint(&aws).await?;
            let pair = endpoint.exchange_code(&code, &redirect_uri).await?;
            let version = oauth
                .token_store(&aws)
                .replace(&pair)
                .await
                .map_err(|e| KeapAuthError::Store(e.to_string()))?;
            // Never print the tokens: this output lands in terminals and CI logs.
            println!(
                "stored the Keap token pair in table {} under key {} (version {version}); the access token expires at {}",
                oauth.token_table, oauth.token_key, pair.access_expires_at
            );
        }
    }
    Ok(())
}
