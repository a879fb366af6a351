"""The tenant management HTTP API (CONTRACTS.md §9): FastAPI over `pipeline.admin`, HMAC-authenticated.

`auth` signs and verifies requests, `app` builds the application, `keys` reads the pre-shared key (from
`TENANT_API_KEY` or the Secrets Manager secret `TENANT_API_KEY_SECRET_ARN`), `lambda_handler` runs it behind
API Gateway. `log-tenants serve` runs it with uvicorn.
"""
