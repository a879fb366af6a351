"""Redelivery requests as Ray jobs, through the Ray cluster's Jobs REST API (what Ray's own
`JobSubmissionClient` sends: `POST /api/jobs/`, `GET /api/jobs/{id}`, `POST /api/jobs/{id}/stop`), over HTTP
with the standard library.

Not through `ray.job_submission`: that client lives in the ray wheel (about 240 MB installed, with grpc and
the dashboard's aiohttp), which the tenant API's image would then carry for three small HTTP calls. The REST
API is Ray's public, stable interface to the same server (dashboard/modules/job/job_head.py); the Ray image,
which runs the jobs, is the one that needs Ray.

The address is `RAY_ADDRESS` (the dashboard, `http://…:8265`). With `RAY_AUTH_MODE=token` the token is
`RAY_AUTH_TOKEN`, or the contents of the file `RAY_AUTH_TOKEN_PATH` (CONTRACTS.md §7), sent as Ray's own SDK
sends it (`Authorization: Bearer <token>`). Each client names its own cluster and token, so the API, the CLI
and a test running clusters with different tokens in one process each reach the one they mean.

The job's submission id is the replay id, so a second submission of one request (a retry after a timeout)
is the same job, never a second run.
"""

from __future__ import annotations

import http.client
import logging
import shlex
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import ConfigError, JobsUnavailable

log = logging.getLogger("pipeline.replay")

# How long Ray waits, after the SIGTERM of a stop, before it kills the driver: enough for the workers to end
# the objects in flight, record them, and for the driver to write its report and end state.
STOP_WAIT_S = 60
ENTRYPOINT = "log-replay"
# Each call to the Jobs API: the server answers from the GCS's job table, in milliseconds when it is well. The
# API's own request (a Lambda's 30 s, a client's patience) must outlive one call.
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class JobCommand:
    """What a replay request runs: `log-replay` with the request's options."""

    tenant_id: str
    replay_id: str
    since: str
    until: str
    report: str
    deliveries: Sequence[str] = ()
    applications: Sequence[str] = ()
    max_events: int | None = None
    max_events_per_second: float | None = None
    max_requests_per_second: float | None = None

    def argv(self) -> list[str]:
        args = [ENTRYPOINT, "--tenant", self.tenant_id, "--since", self.since, "--until", self.until]
        for d in self.deliveries:
            args += ["--delivery", d]
        for a in self.applications:
            args += ["--application", a]
        if self.max_events is not None:
            args += ["--max-events", str(self.max_events)]
        if self.max_events_per_second:
            args += ["--max-events-per-second", f"{self.max_events_per_second:g}"]
        if self.max_requests_per_second:
            args += ["--max-requests-per-second", f"{self.max_requests_per_second:g}"]
        args += ["--report", self.report, "--replay-request", self.replay_id, "--no-progress"]
        return args

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv())


@dataclass(frozen=True)
class TokenFile:
    """A token kept in a file (a mounted Kubernetes Secret), read again at each call: the kubelet rewrites the
    file when the Secret is rotated, and a token read once at start would be refused until a restart."""

    path: Path

    def read(self) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH {str(self.path)!r} cannot be read: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH {str(self.path)!r} is empty")
        return token


def token_from_env(env: Mapping[str, str]) -> str | TokenFile | None:
    """The cluster's token when `RAY_AUTH_MODE=token`: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH (read
    now, so a wrong path is a ConfigError at start, and again at each call). None without token auth, or with
    neither variable (Ray's own loader then looks in its default place)."""
    if env.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return None
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = env.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        source = TokenFile(Path(path))
        source.read()
        return source
    return None


def dashboard_url(address: str) -> str:
    """The Jobs API's base URL from RAY_ADDRESS: `http(s)://host:port`, or `host:port` taken as http."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    if urllib.parse.urlsplit(address).scheme not in ("http", "https"):
        raise ConfigError(
            f"RAY_ADDRESS {address!r}: replay requests go to the Ray dashboard's Jobs API, an http(s)://…:8265 URL"
        )
    return address


@dataclass
class RayJobs:
    """A Ray cluster's Jobs REST API. Stateless: each call is one HTTP request, so a cluster that was away
    is used again as soon as it answers."""

    address: str
    token: str | TokenFile | None = None
    runtime_env_vars: dict[str, str] = field(default_factory=dict)  # variables every job gets
    timeout_s: float = CALL_TIMEOUT_S

    def __post_init__(self) -> None:
        self.address = dashboard_url(self.address)

    @classmethod
    def from_env(cls, env: Mapping[str, str], runtime_env_vars: Mapping[str, str] | None = None) -> RayJobs | None:
        address = env.get("RAY_ADDRESS", "").strip()
        if not address:
            return None
        return cls(address, token_from_env(env), dict(runtime_env_vars or {}))

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """(HTTP status, body) of one call; JobsUnavailable when the cluster cannot be reached at all, or
        refuses the token (Ray answers 401 without one, 403 for a wrong one)."""
        headers = {"Accept": "application/json"}
        try:
            token = self.token.read() if isinstance(self.token, TokenFile) else self.token
        except ConfigError as exc:  # the mounted Secret went away: the cluster cannot be asked, for now
            raise JobsUnavailable(str(exc)) from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        # The scheme is http(s), checked by dashboard_url: never file: or another opener.
        request = urllib.request.Request(self.address + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                status, text = int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, timed out, cut off
            reason = getattr(exc, "reason", exc)
            raise JobsUnavailable(f"the Ray cluster at {self.address} cannot be reached: {_short(reason)}") from None
        if status in (401, 403):
            raise JobsUnavailable(
                f"the Ray cluster at {self.address} refused the token (HTTP {status}): {_text(text)}"
                " (RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
            )
        return status, text

    def submit(self, command: JobCommand) -> None:
        """Submit the request's job; a job of that id already there is this one (an idempotent resubmission)."""
        env_vars = {**self.runtime_env_vars, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
        code, text = self._call(
            "POST",
            "/api/jobs/",
            {
                "entrypoint": command.entrypoint,
                "submission_id": command.replay_id,
                "runtime_env": {"env_vars": env_vars},
                "metadata": {"tenant_id": command.tenant_id, "replay_id": command.replay_id},
            },
        )
        if code != 200:
            # Ray answers a taken submission id with an error (500 from the head, the agent's 400 inside)
            # whose text says so: the job is there already, from this request's earlier submission.
            if b"already exists" in text:
                log.info("replay job already submitted", extra={"replay_id": command.replay_id})
                return
            raise JobsUnavailable(f"the Ray cluster refused the job (HTTP {code}): {_text(text)}")
        log.info("replay job submitted", extra={"replay_id": command.replay_id, "address": self.address})

    def status(self, job_id: str) -> tuple[str | None, str]:
        """(Ray's status name, its message), or (None, why) when the cluster has no such job."""
        code, text = self._call("GET", f"/api/jobs/{_quote(job_id)}")
        if code == 404:
            return None, f"the Ray cluster has no job {job_id}"
        info = _json_object(code, text, f"did not answer for job {job_id}")
        return str(info.get("status")), str(info.get("message") or "")

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM to the driver, which stops between objects); False when there
        is no such job or it has already ended."""
        code, text = self._call("POST", f"/api/jobs/{_quote(job_id)}/stop")
        if code == 404:
            return False
        return bool(_json_object(code, text, f"did not stop job {job_id}").get("stopped"))


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _json_object(status: int, text: bytes, failed: str) -> dict[str, Any]:
    """The JSON object of a 200 answer; JobsUnavailable for any other answer."""
    if status == 200:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            return doc
    raise JobsUnavailable(f"the Ray cluster {failed} (HTTP {status}): {_text(text)}")


def _text(body: bytes) -> str:
    return body[:300].decode("utf-8", "replace").strip()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
