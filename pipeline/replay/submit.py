"""Redelivery requests as Ray jobs, through Ray's Jobs API (`ray.job_submission.JobSubmissionClient`).

The address is `RAY_ADDRESS` (the dashboard, `http://…:8265`). With `RAY_AUTH_MODE=token` the token is
`RAY_AUTH_TOKEN`, or the contents of the file `RAY_AUTH_TOKEN_PATH` (CONTRACTS.md §7), sent as Ray's own SDK
sends it (`Authorization: Bearer <token>`). The header is passed explicitly rather than left to Ray's
process-wide token loader, which reads the variables once per process: the API and the CLI name the
cluster they talk to per client, and a test can run clusters with different tokens in one process.

The job's submission id is the replay id, so a second submission of one request (a retry after a timeout)
is the same job, never a second run. Ray is imported lazily: only the processes that submit need it.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.replay")

# How long Ray waits, after the SIGTERM of a stop, before it kills the driver: enough for the workers to end
# the objects in flight, record them, and for the driver to write its report and end state.
STOP_WAIT_S = 60
ENTRYPOINT = "log-replay"


class JobsUnavailable(RuntimeError):
    """The Ray cluster's Jobs API could not be reached or refused the call."""


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


def token_from_env(env: Mapping[str, str]) -> str | None:
    """The cluster's token when `RAY_AUTH_MODE=token`: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH.
    None without token auth, or with neither variable (Ray's own loader then looks in its default place)."""
    if env.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return None
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = env.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH {path!r} cannot be read: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH {path!r} is empty")
        return token
    return None


@dataclass
class RayJobs:
    """A Ray cluster's Jobs API. Each call makes its own client: the constructor of Ray's checks the
    cluster's version over HTTP, so one made while the cluster was away would be useless later."""

    address: str
    token: str | None = None
    runtime_env_vars: dict[str, str] = field(default_factory=dict)  # variables every job gets

    @classmethod
    def from_env(cls, env: Mapping[str, str], runtime_env_vars: Mapping[str, str] | None = None) -> RayJobs | None:
        address = env.get("RAY_ADDRESS", "").strip()
        if not address:
            return None
        return cls(address, token_from_env(env), dict(runtime_env_vars or {}))

    def _client(self) -> Any:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:  # the image without the replay extra
            raise JobsUnavailable(f"replays need the ray package (the replay extra): {exc}") from None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            return JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError for a cluster it cannot use
            raise JobsUnavailable(f"the Ray cluster at {self.address} cannot be reached: {_short(exc)}") from None

    def submit(self, command: JobCommand) -> None:
        """Submit the request's job; a job of that id already there is this one (an idempotent resubmission)."""
        client = self._client()
        env_vars = {**self.runtime_env_vars, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
        try:
            client.submit_job(
                entrypoint=command.entrypoint,
                submission_id=command.replay_id,
                runtime_env={"env_vars": env_vars},
                metadata={"tenant_id": command.tenant_id, "replay_id": command.replay_id},
            )
        except Exception as exc:
            if "already exists" in str(exc):
                log.info("replay job already submitted", extra={"replay_id": command.replay_id})
                return
            raise JobsUnavailable(f"the Ray cluster refused the job: {_short(exc)}") from None
        log.info("replay job submitted", extra={"replay_id": command.replay_id, "address": self.address})

    def status(self, job_id: str) -> tuple[str | None, str]:
        """(Ray's status name, its message), or (None, why) when the cluster has no such job."""
        client = self._client()
        try:
            info = client.get_job_info(job_id)
        except Exception as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None, f"the Ray cluster has no job {job_id}"
            raise JobsUnavailable(f"the Ray cluster did not answer for job {job_id}: {_short(exc)}") from None
        status = getattr(info.status, "value", str(info.status))
        return str(status), str(info.message or "")

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM to the driver, which stops between objects); False when there
        is no such job or it has already ended."""
        client = self._client()
        try:
            return bool(client.stop_job(job_id))
        except Exception as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return False
            raise JobsUnavailable(f"the Ray cluster did not stop job {job_id}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
