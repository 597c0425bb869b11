//! Lambda `reconciler`: on a schedule, recovers the webhooks Chargify failed or paused and
//! the events whose state never reached us.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::entrypoints::reconciler_lambda::run().await
}
