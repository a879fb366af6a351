"""Multi-tenant log delivery: Vector's central S3 bucket to each tenant's own CloudWatch Logs."""

__version__ = "0.1.0"
