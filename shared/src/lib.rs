//! chargify-keap-sync's library: the domain (Chargify webhooks, the queue envelope), the
//! ports (queue), their adapters (SQS, in-memory), the configuration and AWS wiring of each
//! function, and (with the `lambda` feature) the Lambda entry points.

pub mod apply;
pub mod aws;
pub mod backfill;
pub mod chargify;
pub mod config;
pub mod converge;
pub mod cursor_store;
pub mod dynamodb;
#[cfg(feature = "lambda")]
pub mod entrypoints;
pub mod envelope;
pub mod fixtures;
pub mod forget;
pub mod idempotency;
pub mod identity;
pub mod ingest;
pub mod keap;
pub mod processor;
pub mod queue;
pub mod reconcile;
pub mod replay;
pub mod rules;
pub mod telemetry;
