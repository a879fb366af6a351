"""The S3 key layout written by the Vector collector (CONTRACTS.md §1).

This module is the only place the layout is written down. The collector config test, the synthetic
generator, the replay listing and the consumer all derive keys from here, because an earlier local
config that put the tenant first once routed logs to the wrong tenant.

    {cluster_id}/{namespace}/{application}/{pod_name}/{YYYYMMDD-HHMMSS}-{uuid}.json.gz

The namespace (second segment) is the tenant id.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from pipeline.errors import NonRecoverableError

# What the collector's Vector aws_s3 sink is configured with; tests compare collector/vector/ to these.
VECTOR_KEY_PREFIX = "{{ cluster_id }}/{{ namespace }}/{{ application }}/{{ pod_name }}/"
FILENAME_TIME_FORMAT = "%Y%m%d-%H%M%S"
FILENAME_EXTENSION = "json.gz"
FILENAME_TIME_LEN = 15  # len("20240101-000000")

# Events inside a file can be up to one Vector batch timeout older than the file's write time.
DEFAULT_WRITE_SLACK = timedelta(seconds=300)

TENANT_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Cluster, application and pod become part of log stream names and IAM-visible ARNs, so only the
# characters Kubernetes names and label values can hold are accepted; anything else is hostile or broken.
NAME_SEGMENT_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")
FILENAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,254}$")
MAX_KEY_BYTES = 1024  # S3's own limit
MIN_SEGMENTS = 5


class InvalidKeyError(NonRecoverableError, ValueError):
    """A key that does not follow the layout. Non-recoverable: retrying cannot fix a key.

    A ValueError too, so callers that validate input can catch it that way.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key[:200]!r}: {reason}")
        self.key = key
        self.reason = reason  # without the key: the result that reports it names the key already


@dataclass(frozen=True, slots=True)
class ObjectKey:
    cluster: str
    tenant: str
    application: str
    pod: str
    filename: str
    write_time: datetime | None  # from the filename; None when the filename carries no timestamp

    @property
    def key(self) -> str:
        return f"{pod_prefix(self.cluster, self.tenant, self.application, self.pod)}{self.filename}"


def _check_segment(key: str, name: str, value: str, pattern: re.Pattern[str]) -> None:
    if not value:
        raise InvalidKeyError(key, f"empty {name} segment")
    if value in (".", ".."):
        raise InvalidKeyError(key, f"{name} segment is {value!r}")
    if not pattern.fullmatch(value):
        raise InvalidKeyError(key, f"{name} segment {value[:80]!r} has characters or a length not allowed")


def parse_key(key: str) -> ObjectKey:
    """Split a key into its parts, or raise InvalidKeyError saying why it is not a valid key."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(str(key), "empty key")
    return _parse_key(key)


# A worker parses each object's key more than once (for the memory budget, then to deliver it), and the
# listing parses it before that: a small cache makes the repeats free. ObjectKey is frozen, so sharing one
# is safe; an invalid key raises every time (lru_cache keeps no exceptions).
@lru_cache(maxsize=4096)
def _parse_key(key: str) -> ObjectKey:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"longer than {MAX_KEY_BYTES} bytes")
    parts = key.split("/")
    if len(parts) < MIN_SEGMENTS:
        raise InvalidKeyError(key, f"has {len(parts)} segments, needs at least {MIN_SEGMENTS}")
    if any(p in (".", "..") for p in parts):
        raise InvalidKeyError(key, "contains a '.' or '..' segment")
    if any(p == "" for p in parts):
        raise InvalidKeyError(key, "contains an empty segment")
    cluster, tenant, application, pod = parts[:4]
    _check_segment(key, "cluster", cluster, NAME_SEGMENT_RE)
    if not TENANT_ID_RE.fullmatch(tenant):
        raise InvalidKeyError(key, f"tenant {tenant[:80]!r} is not a valid namespace name")
    _check_segment(key, "application", application, NAME_SEGMENT_RE)
    _check_segment(key, "pod", pod, NAME_SEGMENT_RE)
    for extra in parts[4:]:
        _check_segment(key, "filename", extra, FILENAME_RE)
    filename = "/".join(parts[4:])
    return ObjectKey(cluster, tenant, application, pod, filename, filename_time(parts[-1]))


def filename_time(filename: str) -> datetime | None:
    """The write time encoded at the start of a filename, or None."""
    stamp = filename[:FILENAME_TIME_LEN]
    # The collector's own shape, read without strptime (~30 µs a call). Anything else, or a time that is
    # not a real one, goes through strptime, so what it accepts or refuses stays exactly strptime's: for
    # ASCII digits of these fixed widths, in range, its %Y%m%d-%H%M%S can only read them this way.
    if len(stamp) == FILENAME_TIME_LEN and stamp[8] == "-" and stamp.isascii():
        digits = stamp[:8] + stamp[9:]
        if digits.isdigit():
            try:
                return datetime(
                    int(digits[0:4]),
                    int(digits[4:6]),
                    int(digits[6:8]),
                    int(digits[8:10]),
                    int(digits[10:12]),
                    int(digits[12:14]),
                    tzinfo=UTC,
                )
            except ValueError:
                pass
    try:
        return datetime.strptime(stamp, FILENAME_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def format_filename(write_time: datetime, uid: str | None = None) -> str:
    stamp = write_time.astimezone(UTC).strftime(FILENAME_TIME_FORMAT)
    return f"{stamp}-{uid or uuidlib.uuid4()}.{FILENAME_EXTENSION}"


def format_key(
    cluster: str,
    tenant: str,
    application: str,
    pod: str,
    write_time: datetime,
    uid: str | None = None,
) -> str:
    """The key the collector writes for a batch; validated, so a bad part fails here, not downstream."""
    key = pod_prefix(cluster, tenant, application, pod) + format_filename(write_time, uid)
    parse_key(key)
    return key


def tenant_prefix(cluster: str, tenant: str) -> str:
    return f"{cluster}/{tenant}/"


def pod_prefix(cluster: str, tenant: str, application: str, pod: str) -> str:
    return f"{cluster}/{tenant}/{application}/{pod}/"


def listing_bounds(
    prefix: str, since: datetime, until: datetime, slack: timedelta = DEFAULT_WRITE_SLACK
) -> tuple[str, str]:
    """(StartAfter, stop-after) keys for one pod prefix and a time window.

    Filenames sort as text by write time. A file written at T holds events from up to `slack` before T,
    so listing goes on to `until + slack`. The lower bound is widened by the same slack as a guard
    against clock skew between the node and its collector; callers filter events by their own timestamps.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("listing bounds need timezone-aware datetimes; a naive one would shift the window")
    start = prefix + (since - slack).astimezone(UTC).strftime(FILENAME_TIME_FORMAT)
    # "~" sorts after every character allowed in the rest of a filename, so the whole last second is kept.
    stop = prefix + (until + slack).astimezone(UTC).strftime(FILENAME_TIME_FORMAT) + "~"
    return start, stop
