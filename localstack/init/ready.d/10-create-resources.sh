#!/usr/bin/env bash
# Creates the SQS queues and SNS topics the README examples use. LocalStack runs every executable
# script in /etc/localstack/init/ready.d once SQS and SNS are ready (see docker-compose.yml).
# Idempotent (CreateQueue/CreateTopic/Subscribe return the existing resource), so it can also be run
# by hand against any LocalStack:  AWS_ENDPOINT_URL=http://localhost:4566 bash 10-create-resources.sh
#
#   queues  batch-events, batch-events.fifo (FIFO, ContentBasedDeduplication=false: batchbridge sends
#           the event id as MessageDeduplicationId), jobs, failed-jobs
#   topics  batch-events      -> queue batch-events       (raw message delivery)
#                             -> queue failed-jobs        (raw, FilterPolicy: ce-type ends in ".failed")
#           batch-events.fifo -> queue batch-events.fifo  (raw message delivery)
set -euo pipefail

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
if command -v awslocal >/dev/null 2>&1; then
    AWS=(awslocal)  # inside the LocalStack container
else
    AWS=(aws --endpoint-url "${AWS_ENDPOINT_URL:-http://localhost:4566}")
fi

queue() {  # queue NAME [ATTRIBUTES] -> prints the queue ARN
    local url
    if [[ -n "${2:-}" ]]; then
        url=$("${AWS[@]}" sqs create-queue --queue-name "$1" --attributes "$2" --query QueueUrl --output text)
    else
        url=$("${AWS[@]}" sqs create-queue --queue-name "$1" --query QueueUrl --output text)
    fi
    "${AWS[@]}" sqs get-queue-attributes --queue-url "$url" --attribute-names QueueArn \
        --query Attributes.QueueArn --output text
}

topic() {  # topic NAME [ATTRIBUTES] -> prints the topic ARN
    if [[ -n "${2:-}" ]]; then
        "${AWS[@]}" sns create-topic --name "$1" --attributes "$2" --query TopicArn --output text
    else
        "${AWS[@]}" sns create-topic --name "$1" --query TopicArn --output text
    fi
}

subscribe() {  # subscribe TOPIC_ARN QUEUE_ARN [FILTER_POLICY_JSON]
    local attributes='{"RawMessageDelivery":"true"}'
    if [[ -n "${3:-}" ]]; then
        # the filter policy is a JSON document carried as a string attribute
        attributes=$(printf '{"RawMessageDelivery":"true","FilterPolicy":%s}' \
            "$(printf '%s' "$3" | sed 's/\\/\\\\/g; s/"/\\"/g; s/^/"/; s/$/"/')")
    fi
    "${AWS[@]}" sns subscribe --topic-arn "$1" --protocol sqs --notification-endpoint "$2" \
        --attributes "$attributes" --return-subscription-arn --query SubscriptionArn --output text >/dev/null
}

events_q=$(queue batch-events)
events_fifo_q=$(queue batch-events.fifo FifoQueue=true,ContentBasedDeduplication=false)
queue jobs >/dev/null
failed_q=$(queue failed-jobs)

events_t=$(topic batch-events)
events_fifo_t=$(topic batch-events.fifo FifoTopic=true,ContentBasedDeduplication=false)

subscribe "$events_t" "$events_q"
subscribe "$events_t" "$failed_q" '{"ce-type": [{"suffix": ".failed"}]}'
subscribe "$events_fifo_t" "$events_fifo_q"

echo "batchbridge: created queues batch-events, batch-events.fifo, jobs, failed-jobs and topics" \
     "batch-events, batch-events.fifo"
