//! Lambda `processor`: webhook messages from SQS FIFO into Keap.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::entrypoints::processor_lambda::run().await
}
