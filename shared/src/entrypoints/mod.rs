//! Entry points: a Lambda runtime around each function's service. Each cold start reads the
//! function's settings (`from_env`, [`crate::config`]) and builds its service over AWS
//! (`build`); each invocation is then handed to that service. The functions' `main.rs` files
//! call these and nothing else.
//!
//! Compiled with the `lambda` feature only (the functions' crates and the tests enable it),
//! so `cks`, which runs the same services from the same settings, builds no Lambda runtime.

pub mod ingest_lambda;
pub mod processor_lambda;
pub mod reconciler_lambda;
