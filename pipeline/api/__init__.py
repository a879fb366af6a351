"""The tenant management HTTP API (CONTRACTS.md §9): FastAPI over `pipeline.admin`, HMAC-authenticated.

`auth` signs and verifies requests (key ids and scopes, the canonical string), `nonces` remembers each
request's nonce (DynamoDB `API_NONCE_TABLE`), `app` builds the application, `keys` reads the keys (a mounted
file `TENANT_API_KEYS_FILE`, the Secrets Manager secret `TENANT_API_KEY_SECRET_ARN`, or locally
`TENANT_API_KEY`), `lambda_handler` runs it behind API Gateway. `log-tenants serve` runs it with uvicorn,
over TLS in a cluster.
"""
