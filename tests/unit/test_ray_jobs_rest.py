"""The replay requests' client of Ray's Jobs REST API (pipeline/replay/submit.py) against a stand-in server
on loopback that answers as Ray's dashboard does (dashboard/modules/job/job_head.py): what it sends (paths,
body, the Bearer token) and how it reads each answer (a taken submission id, no such job, a refused token, no
cluster). tests/integration/test_replay_requests.py runs the same client against a real Ray head."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import ConfigError
from pipeline.replay.submit import STOP_WAIT_S, JobCommand, JobsUnavailable, RayJobs, TokenFile, dashboard_url

TOKEN = "t0ken"


class FakeJobsApi:
    """Jobs by submission id, with Ray's answers: 200 JSON, 404 text for an unknown id, a 500 whose text says
    "already exists" for a taken id, 401 without a token and 403 with a wrong one."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: object) -> None:
                data = orjson.dumps(body) if not isinstance(body, str) else body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = orjson.loads(self.rfile.read(length)) if length else None
                fake.seen.append((self.command, self.path, dict(self.headers), body))
                auth = self.headers.get("Authorization")
                if auth is None:
                    return self._answer(401, "Unauthorized: Missing authentication token")
                if auth != f"Bearer {TOKEN}":
                    return self._answer(403, "Forbidden: Invalid authentication token")
                parts = self.path.strip("/").split("/")  # api, jobs[, id[, stop]]
                if self.command == "POST" and len(parts) == 2:
                    sid = body["submission_id"]
                    if sid in fake.jobs:
                        return self._answer(500, f"RuntimeError: Job with submission_id {sid} already exists.")
                    fake.jobs[sid] = {"status": "PENDING", "message": "Job has not started yet.", **body}
                    return self._answer(200, {"job_id": sid, "submission_id": sid})
                job = fake.jobs.get(parts[2]) if len(parts) > 2 else None
                if job is None:
                    return self._answer(404, f"Job {parts[2] if len(parts) > 2 else ''} does not exist")
                if self.command == "GET":
                    return self._answer(200, job)
                stopped = job["status"] in ("PENDING", "RUNNING")
                job["status"] = "STOPPED" if stopped else job["status"]
                return self._answer(200, {"stopped": stopped})

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[FakeJobsApi]:
    fake = FakeJobsApi()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


COMMAND = JobCommand("acme", "rp-1", "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z", "s3://b/reports/rp-1.json")


def test_a_submission_is_the_request_s_job_with_its_variables_and_a_second_one_is_the_same_job(
    api: FakeJobsApi,
) -> None:
    jobs = RayJobs(api.url + "/", TOKEN, {"REPLAY_REQUEST_TABLE": "requests"})
    jobs.submit(COMMAND)
    method, path, headers, body = api.seen[-1]
    assert (method, path) == ("POST", "/api/jobs/")
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["Content-Type"] == "application/json"
    assert body == {
        "entrypoint": COMMAND.entrypoint,
        "submission_id": "rp-1",
        "runtime_env": {"env_vars": {"REPLAY_REQUEST_TABLE": "requests", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}},
        "metadata": {"tenant_id": "acme", "replay_id": "rp-1"},
    }
    jobs.submit(COMMAND)  # a retry after a timeout: Ray has the id already, and this is no error
    assert len(api.jobs) == 1
    assert jobs.status("rp-1") == ("PENDING", "Job has not started yet.")


def test_status_and_stop_of_a_job_the_cluster_does_not_have(api: FakeJobsApi) -> None:
    jobs = RayJobs(api.url, TOKEN)
    assert jobs.status("rp-none") == (None, "the Ray cluster has no job rp-none")
    assert jobs.stop("rp-none") is False
    jobs.submit(COMMAND)
    assert jobs.stop("rp-1") is True
    assert jobs.status("rp-1")[0] == "STOPPED"
    assert jobs.stop("rp-1") is False  # it has ended: nothing to stop
    assert [p for m, p, *_ in api.seen if m == "POST"][-1] == "/api/jobs/rp-1/stop"


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 403)])
def test_a_refused_token_is_unavailable_and_says_which_variables_hold_it(
    api: FakeJobsApi, token: str | None, status: int
) -> None:
    with pytest.raises(JobsUnavailable, match=rf"refused the token \(HTTP {status}\).*RAY_AUTH_TOKEN"):
        RayJobs(api.url, token).submit(COMMAND)
    assert api.jobs == {}


def test_a_token_in_a_file_is_read_at_each_call_so_a_rotated_secret_is_used_without_a_restart(
    api: FakeJobsApi, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text("0ld-t0ken\n")  # the cluster's token was rotated; the mounted Secret not yet
    jobs = RayJobs(api.url, TokenFile(path))
    with pytest.raises(JobsUnavailable, match=r"refused the token \(HTTP 403\)"):
        jobs.status("rp-1")
    path.write_text(f"{TOKEN}\n")  # the kubelet rewrote the file: the same client sends the new token
    assert jobs.status("rp-1") == (None, "the Ray cluster has no job rp-1")
    assert [h["Authorization"] for _, _, h, _ in api.seen[-2:]] == ["Bearer 0ld-t0ken", f"Bearer {TOKEN}"]
    path.unlink()  # mid-rotation: no token to send, and the cluster is not asked without one
    seen = len(api.seen)
    with pytest.raises(JobsUnavailable, match=r"RAY_AUTH_TOKEN_PATH .* cannot be read"):
        jobs.status("rp-1")
    assert len(api.seen) == seen


def test_a_cluster_that_does_not_answer_is_unavailable(api: FakeJobsApi) -> None:
    address = api.url
    api.server.shutdown()
    api.server.server_close()
    with pytest.raises(JobsUnavailable, match="cannot be reached"):
        RayJobs(address, TOKEN, timeout_s=5).status("rp-1")


def test_ray_address_is_the_dashboard_s_http_url() -> None:
    assert dashboard_url("head:8265") == "http://head:8265"
    assert dashboard_url(" https://ray.example:8265/ ") == "https://ray.example:8265"
    for wrong in ("ray://head:10001", "file:///etc/passwd"):
        with pytest.raises(ConfigError, match="Jobs API"):
            RayJobs.from_env({"RAY_ADDRESS": wrong})
    assert RayJobs.from_env({}) is None
