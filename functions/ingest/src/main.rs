//! Lambda `ingest`: Chargify webhooks in, verified messages onto SQS FIFO.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::entrypoints::ingest_lambda::run().await
}
