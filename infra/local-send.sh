#!/usr/bin/env bash
# Signs a bundled Chargify webhook with the demo key, posts it to the local ingest started by
# infra/local-up.sh, and shows what is on the queue.
#
#   bash infra/local-send.sh                 # signup_success
#   bash infra/local-send.sh payment_failure # any file in shared/fixtures/chargify/
#   BAD_SIGNATURE=1 bash infra/local-send.sh # see a refusal
set -euo pipefail
source "$(dirname "$0")/../.ci/tools.sh"
cd "$CKS_ROOT"

EVENT="${1:-signup_success}"
BODY_FILE="shared/fixtures/chargify/$EVENT.txt"
[ -f "$BODY_FILE" ] || { echo "no sample $BODY_FILE; samples: $(ls shared/fixtures/chargify | grep txt | sed 's/.txt//' | tr '\n' ' ')" >&2; exit 2; }
KEY="${CHARGIFY_SHARED_KEYS:-local-dev-shared-key}"
[ "${BAD_SIGNATURE:-0}" = 1 ] && KEY="not-the-key"
SIG="$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "${KEY%%,*}" "$BODY_FILE")"

echo "POST $EVENT ($(stat -c %s "$BODY_FILE") bytes)"
curl -sS -w '\nHTTP %{http_code}\n' -X POST "http://127.0.0.1:${LAMBDA_PORT:-9000}/lambda-url/ingest/" \
  -H 'Content-Type: application/x-www-form-urlencoded' \
  -H "X-Chargify-Webhook-Signature-Hmac-Sha-256: $SIG" \
  --data-binary "@$BODY_FILE"

ensure_tools
AWS_ENDPOINT_URL="http://127.0.0.1:${MOTO_PORT:-5000}" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
python - <<'PY'
import boto3, json
sqs = boto3.client("sqs")
url = sqs.get_queue_url(QueueName="chargify-webhooks.fifo")["QueueUrl"]
n = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]
print(f"queue chargify-webhooks.fifo holds {n} message(s)")
PY
