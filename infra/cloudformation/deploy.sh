#!/usr/bin/env bash
# Deploy the log delivery stacks in the order they depend on each other:
#   1. -t global     central log distribution role            (once per central account)
#   2. -t regional   core: bucket, KMS, SNS, tables, roles     (per region)
#      --tenant-table-mode  which tenant tables, and which one the processors read (v1 -> v2 migration)
#      --include-sqs     + queue and DLQ subscribed to the topic
#      --include-lambda  + container-image Lambda on the queue (needs --include-sqs, --ecr-image-uri)
#   3. -t customer   the tenant's CustomerLogDistribution role (in the tenant's account)
#      --bucket-name     + an S3 destination: PutObject under --bucket-prefix (bucket created, or --existing-bucket)
#   4. -t cluster    IRSA roles for Vector (writes under its cluster id) and the consumer (per cluster)
#      --central-role-arn  + the tenant API's IRSA role
#   5. -t replay     IRSA role for the KubeRay replay          (per Kubernetes cluster)
#   6. -t tenant-api the tenant management API: Lambda behind an HTTP API (per region, after regional;
#      --api-image-uri: the tenant API image)
# Later stacks read earlier stacks' outputs with describe-stacks; --dry-run prints the commands only.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy.sh -t global|regional|customer|cluster|replay|tenant-api [options]
  -t, --type TYPE              stack type (required)
  -r, --region REGION          AWS region (default: $AWS_REGION, then us-east-1)
  -e, --environment ENV        development|staging|production (default: $ENVIRONMENT, then development)
  -p, --project NAME           project prefix (default: multi-tenant-logging)
  -b, --template-bucket NAME   S3 bucket to upload templates through (large templates)
      --central-role-arn ARN   global stack's CentralLogDistributionRoleArn (regional, customer,
                               tenant-api; cluster: also creates the tenant API's IRSA role)
      --include-sqs            regional: also deploy the SQS stack
      --include-lambda         regional: also deploy the Lambda stack (requires --include-sqs)
      --ecr-image-uri URI      regional Lambda: the processor image in ECR (containers/Containerfile.processor)
      --api-image-uri URI      tenant-api: the tenant API image in ECR (containers/Containerfile.api; the
                               processor image has no FastAPI or Mangum)
      --tenant-table-mode MODE regional: v2 | v1-and-v2-read-v1 | v1-and-v2-read-v2 (docs/DEPLOY.md,
                               "Migrating a v1 tenant table to v2"). Default: the stack's current mode;
                               v2 for a new stack; v1-and-v2-read-v1 for a stack from before v2
      --cluster-name NAME      cluster, replay: the cluster id (CLUSTER_ID of its collector; cluster:
                               add --include-sqs when the cluster runs the SQS consumer)
      --oidc-provider HOST     cluster, replay: OIDC issuer without https://
      --log-group-name NAME    customer: the log group to deliver into (default /logs/delivered)
      --external-id ID         customer, required: the ExternalId the provider generated for this tenant
                               (its profile's external_id; `log-tenants profile show` prints it)
      --external-id-next ID    customer, during an ExternalId rotation only: the provider's next id
                               (external_id_next); the role accepts both while it is given
      --bucket-name NAME       customer: also deliver to this S3 bucket (created by the stack unless
                               --existing-bucket)
      --existing-bucket        customer: the bucket exists already; grant the role on it only
      --bucket-prefix PREFIX   customer: key prefix in the bucket, ending with / (default ROSA/cluster-logs/)
      --kms-key-arn ARN        customer: SSE-KMS key for the bucket's objects (default SSE-S3)
      --dry-run                print the aws commands, run nothing
  -h, --help
USAGE
}

die() { echo "deploy.sh: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TYPE="" REGION="${AWS_REGION:-us-east-1}" ENVIRONMENT="${ENVIRONMENT:-development}"
PROJECT="multi-tenant-logging" TEMPLATE_BUCKET="" CENTRAL_ROLE_ARN=""
INCLUDE_SQS=false INCLUDE_LAMBDA=false ECR_IMAGE_URI="" API_IMAGE_URI="" CLUSTER_NAME="" OIDC_PROVIDER=""
LOG_GROUP_NAME="" DRY_RUN=false TENANT_TABLE_MODE="" EXTERNAL_ID="" EXTERNAL_ID_NEXT=""
BUCKET_NAME="" EXISTING_BUCKET=false BUCKET_PREFIX="" KMS_KEY_ARN=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    -t|--type) TYPE="${2:?}"; shift 2 ;;
    -r|--region) REGION="${2:?}"; shift 2 ;;
    -e|--environment) ENVIRONMENT="${2:?}"; shift 2 ;;
    -p|--project) PROJECT="${2:?}"; shift 2 ;;
    -b|--template-bucket) TEMPLATE_BUCKET="${2:?}"; shift 2 ;;
    --central-role-arn) CENTRAL_ROLE_ARN="${2:?}"; shift 2 ;;
    --include-sqs) INCLUDE_SQS=true; shift ;;
    --include-lambda) INCLUDE_LAMBDA=true; shift ;;
    --ecr-image-uri) ECR_IMAGE_URI="${2:?}"; shift 2 ;;
    --api-image-uri) API_IMAGE_URI="${2:?}"; shift 2 ;;
    --cluster-name) CLUSTER_NAME="${2:?}"; shift 2 ;;
    --oidc-provider) OIDC_PROVIDER="${2#https://}"; shift 2 ;;
    --log-group-name) LOG_GROUP_NAME="${2:?}"; shift 2 ;;
    --external-id) EXTERNAL_ID="${2:?}"; shift 2 ;;
    --external-id-next) EXTERNAL_ID_NEXT="${2:?}"; shift 2 ;;
    --tenant-table-mode) TENANT_TABLE_MODE="${2:?}"; shift 2 ;;
    --bucket-name) BUCKET_NAME="${2:?}"; shift 2 ;;
    --existing-bucket) EXISTING_BUCKET=true; shift ;;
    --bucket-prefix) BUCKET_PREFIX="${2:?}"; shift 2 ;;
    --kms-key-arn) KMS_KEY_ARN="${2:?}"; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$TYPE" ]] || { usage >&2; die "-t is required"; }

run() {
  if $DRY_RUN; then printf '%q ' "$@"; echo; else "$@"; fi
}

# deploy STACK TEMPLATE [Key=Value ...]
deploy() {
  local stack="$1" template="$HERE/$2"; shift 2
  local args=(aws cloudformation deploy --region "$REGION" --stack-name "$stack"
    --template-file "$template" --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset
    --tags "Project=$PROJECT" "Environment=$ENVIRONMENT")
  [[ -n "$TEMPLATE_BUCKET" ]] && args+=(--s3-bucket "$TEMPLATE_BUCKET")
  [[ $# -gt 0 ]] && args+=(--parameter-overrides "$@")
  run "${args[@]}"
}

# output STACK KEY: an earlier stack's output (a placeholder in a dry run).
output() {
  if $DRY_RUN; then echo "<$1.$2>"; return; fi
  local value
  value="$(aws cloudformation describe-stacks --region "$REGION" --stack-name "$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text)"
  [[ -n "$value" && "$value" != "None" ]] || die "stack $1 has no output $2: deploy it first"
  echo "$value"
}

CORE_STACK="$PROJECT-$ENVIRONMENT-core"
SQS_STACK="$PROJECT-$ENVIRONMENT-sqs"
LAMBDA_STACK="$PROJECT-$ENVIRONMENT-lambda"

case "$TYPE" in
  global)
    deploy "$PROJECT-global" global/central-log-distribution-role.yaml "ProjectName=$PROJECT"
    ;;
  regional)
    [[ -n "$CENTRAL_ROLE_ARN" ]] || die "regional needs --central-role-arn (output of -t global)"
    if $INCLUDE_LAMBDA; then
      $INCLUDE_SQS || die "--include-lambda needs --include-sqs: the function reads the queue"
      [[ -n "$ECR_IMAGE_URI" ]] || die "--include-lambda needs --ecr-image-uri"
    fi
    params=("ProjectName=$PROJECT" "Environment=$ENVIRONMENT" "CentralLogDistributionRoleArn=$CENTRAL_ROLE_ARN")
    case "$TENANT_TABLE_MODE" in
      v2|v1-and-v2-read-v1|v1-and-v2-read-v2) params+=("TenantTableMode=$TENANT_TABLE_MODE") ;;
      "")
        # Not given: an existing stack keeps its mode (aws cloudformation deploy reuses previous values),
        # a new one gets v2. A stack from before the v2 table has no such parameter, and the default
        # would move its processors to the new, empty v2 table: add v2 beside v1 and keep reading v1.
        if ! $DRY_RUN && has_mode="$(aws cloudformation describe-stacks --region "$REGION" \
            --stack-name "$CORE_STACK" --output text \
            --query "length(Stacks[0].Parameters[?ParameterKey=='TenantTableMode'])" 2>/dev/null)" \
            && [[ "$has_mode" == "0" ]]; then
          echo "deploy.sh: $CORE_STACK predates the v2 tenant table: TenantTableMode=v1-and-v2-read-v1" \
            "(the processors keep the v1 table; see docs/DEPLOY.md to migrate)" >&2
          params+=("TenantTableMode=v1-and-v2-read-v1")
        fi
        ;;
      *) die "--tenant-table-mode must be v2, v1-and-v2-read-v1 or v1-and-v2-read-v2" ;;
    esac
    deploy "$CORE_STACK" regional/core-infrastructure.yaml "${params[@]}"
    if $INCLUDE_SQS; then
      topic_arn="$(output "$CORE_STACK" TopicArn)"
      deploy "$SQS_STACK" regional/sqs-stack.yaml \
        "ProjectName=$PROJECT" "Environment=$ENVIRONMENT" "TopicArn=$topic_arn"
    fi
    if $INCLUDE_LAMBDA; then
      params=("ProjectName=$PROJECT" "Environment=$ENVIRONMENT" "EcrImageUri=$ECR_IMAGE_URI"
        "CentralLogDistributionRoleArn=$CENTRAL_ROLE_ARN")
      for key in ProcessorRoleArn ProcessorRoleName BucketName TenantConfigTableName DeliveryLedgerTableName \
        LedgerRetentionDays DeliveryStatusTableName; do
        value="$(output "$CORE_STACK" "$key")"
        params+=("$key=$value")
      done
      value="$(output "$SQS_STACK" QueueArn)"
      params+=("QueueArn=$value")
      deploy "$LAMBDA_STACK" regional/lambda-stack.yaml "${params[@]}"
    fi
    ;;
  customer)
    [[ -n "$CENTRAL_ROLE_ARN" ]] || die "customer needs --central-role-arn (from the log delivery provider)"
    [[ -n "$EXTERNAL_ID" ]] || die "customer needs --external-id (generated by the log delivery provider for you)"
    params=("CentralLogDistributionRoleArn=$CENTRAL_ROLE_ARN" "ExternalId=$EXTERNAL_ID")
    [[ -n "$EXTERNAL_ID_NEXT" ]] && params+=("ExternalIdNext=$EXTERNAL_ID_NEXT")
    [[ -n "$LOG_GROUP_NAME" ]] && params+=("LogGroupName=$LOG_GROUP_NAME")
    if [[ -n "$BUCKET_NAME" ]]; then
      params+=("BucketName=$BUCKET_NAME")
      $EXISTING_BUCKET && params+=("CreateBucket=false")
      [[ -n "$BUCKET_PREFIX" ]] && params+=("BucketPrefix=$BUCKET_PREFIX")
      [[ -n "$KMS_KEY_ARN" ]] && params+=("KmsKeyArn=$KMS_KEY_ARN")
    elif $EXISTING_BUCKET || [[ -n "$BUCKET_PREFIX$KMS_KEY_ARN" ]]; then
      die "--existing-bucket, --bucket-prefix and --kms-key-arn need --bucket-name"
    fi
    deploy "$PROJECT-customer-$REGION" customer/customer-log-distribution-role.yaml "${params[@]}"
    ;;
  cluster)
    [[ -n "$CLUSTER_NAME" && -n "$OIDC_PROVIDER" ]] || die "cluster needs --cluster-name and --oidc-provider"
    params=("ProjectName=$PROJECT" "ClusterName=$CLUSTER_NAME" "OidcProvider=$OIDC_PROVIDER")
    for key in BucketName LogsKeyArn DeliveryPolicyArn; do
      value="$(output "$CORE_STACK" "$key")"
      params+=("$key=$value")
    done
    if $INCLUDE_SQS; then  # the cluster runs the SQS consumer
      value="$(output "$SQS_STACK" QueueConsumerPolicyArn)"
      params+=("QueueConsumerPolicyArn=$value")
    fi
    # Only then: a core stack from before the v2 table has no TenantTableV2Name, and a cluster without
    # the tenant API should not need one.
    if [[ -n "$CENTRAL_ROLE_ARN" ]]; then
      value="$(output "$CORE_STACK" TenantTableV2Name)"
      nonces="$(output "$CORE_STACK" ApiNonceTableName)"
      params+=("TenantConfigTableName=$value" "ApiNonceTableName=$nonces"
        "CentralLogDistributionRoleArn=$CENTRAL_ROLE_ARN")
      # The status and redelivery routes (a core stack from before them has neither output: both stay off).
      for key in DeliveryStatusTableName ReplayRequestTableName DeliveryLedgerTableName; do
        value="$(output "$CORE_STACK" "$key" 2>/dev/null || true)"
        params+=("$key=$value")
      done
    fi
    deploy "$PROJECT-$ENVIRONMENT-cluster-$CLUSTER_NAME" cluster/cluster-iam-roles.yaml "${params[@]}"
    ;;
  replay)
    [[ -n "$CLUSTER_NAME" && -n "$OIDC_PROVIDER" ]] || die "replay needs --cluster-name and --oidc-provider"
    value="$(output "$CORE_STACK" DeliveryPolicyArn)"
    bucket="$(output "$CORE_STACK" BucketName)"
    key="$(output "$CORE_STACK" LogsKeyArn)"
    requests="$(output "$CORE_STACK" ReplayRequestTableName 2>/dev/null || true)"
    deploy "$PROJECT-$ENVIRONMENT-replay-$CLUSTER_NAME" cluster/replay-role.yaml \
      "ProjectName=$PROJECT" "ClusterName=$CLUSTER_NAME" "OidcProvider=$OIDC_PROVIDER" \
      "DeliveryPolicyArn=$value" "BucketName=$bucket" "LogsKeyArn=$key" "ReplayRequestTableName=$requests"
    ;;
  tenant-api)
    [[ -n "$CENTRAL_ROLE_ARN" ]] || die "tenant-api needs --central-role-arn (output of -t global)"
    [[ -n "$API_IMAGE_URI" ]] || die "tenant-api needs --api-image-uri (the tenant API image, not the processor's)"
    # The v2 table, not TenantConfigTableName: mid-migration that one is v1, which the API cannot write.
    table="$(output "$CORE_STACK" TenantTableV2Name)"
    key="$(output "$CORE_STACK" LogsKeyArn)"
    nonces="$(output "$CORE_STACK" ApiNonceTableName)"
    status="$(output "$CORE_STACK" DeliveryStatusTableName 2>/dev/null || true)"
    deploy "$PROJECT-$ENVIRONMENT-tenant-api" regional/tenant-api.yaml \
      "ProjectName=$PROJECT" "Environment=$ENVIRONMENT" "EcrImageUri=$API_IMAGE_URI" \
      "TenantConfigTableName=$table" "ApiNonceTableName=$nonces" "LogsKeyArn=$key" \
      "CentralLogDistributionRoleArn=$CENTRAL_ROLE_ARN" "DeliveryStatusTableName=$status"
    ;;
  *) die "unknown type $TYPE (global|regional|customer|cluster|replay|tenant-api)" ;;
esac
