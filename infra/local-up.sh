#!/usr/bin/env bash
# Runs the ingest function on this machine with no AWS account: moto on 127.0.0.1 stands in
# for SQS, the FIFO queue and its dead-letter queue are created, and `cargo lambda watch`
# serves the function on 127.0.0.1:9000 with the demo shared key. Ctrl-C stops everything.
#
#   LAMBDA_PORT (9000), MOTO_PORT (5000), CHARGIFY_SHARED_KEYS (local-dev-shared-key)
#
# Then, from another terminal: bash infra/local-send.sh [event]
set -euo pipefail
source "$(dirname "$0")/../.ci/tools.sh"
cd "$CKS_ROOT"

LAMBDA_PORT="${LAMBDA_PORT:-9000}"
MOTO_PORT="${MOTO_PORT:-5000}"
KEYS="${CHARGIFY_SHARED_KEYS:-local-dev-shared-key}"

ensure_tools
start_moto "$MOTO_PORT" /tmp/chargify-keap-sync-local-moto.log
trap stop_moto EXIT

export AWS_ENDPOINT_URL="$MOTO_ENDPOINT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
QUEUE_URL="$(python - <<'PY'
import boto3
sqs = boto3.client("sqs")
dlq = sqs.create_queue(QueueName="chargify-webhooks-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
queue = sqs.create_queue(
    QueueName="chargify-webhooks.fifo",
    Attributes={
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
        "RedrivePolicy": '{"deadLetterTargetArn": "%s", "maxReceiveCount": "5"}' % dlq_arn,
    },
)["QueueUrl"]
print(queue)
PY
)"
log "queue: $QUEUE_URL"
log "ingest: POST http://127.0.0.1:$LAMBDA_PORT/lambda-url/ingest/ (building on first start)"
log "send samples with: bash infra/local-send.sh"
QUEUE_URL="$QUEUE_URL" CHARGIFY_SHARED_KEYS="$KEYS" \
  cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$LAMBDA_PORT" --package ingest --bin ingest
