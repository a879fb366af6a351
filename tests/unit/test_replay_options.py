"""The replay CLI refuses option combinations it cannot honour, before touching AWS."""

from __future__ import annotations

from click.testing import CliRunner

from jobs.replay import main


def test_a_request_rate_limit_needs_a_sink_whose_requests_the_job_makes() -> None:
    args = ["--tenant", "acme", "--since", "1h", "--sink", "vector", "--max-requests-per-second", "5"]
    result = CliRunner().invoke(main, args, env={"S3_BUCKET_NAME": "", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2, result.output
    assert "--max-requests-per-second" in result.output and "vector" in result.output


def test_request_rate_limit_must_be_positive() -> None:
    result = CliRunner().invoke(main, ["--tenant", "acme", "--since", "1h", "--max-requests-per-second", "0"])
    assert result.exit_code == 2
    assert "--max-requests-per-second" in result.output
