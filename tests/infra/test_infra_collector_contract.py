"""The collector's S3 key layout is the one in pipeline/keys.py (CONTRACTS.md §1), in both Vector configs."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_helpers import REPO

from pipeline import keys

CONFIGS = {
    "daemonset": REPO / "collector" / "vector" / "base" / "vector.yaml",
    "local-test": REPO / "collector" / "vector" / "vector-local-test.yaml",
}
TEMPLATE_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def s3_sink(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    config = yaml.safe_load(path.read_text())
    (sink,) = [s for s in config["sinks"].values() if s["type"] == "aws_s3"]
    return config, sink


def vector_key(sink: dict[str, Any], event: dict[str, str], written: datetime, uid: str) -> str:
    """The object key Vector's aws_s3 sink builds: the rendered key_prefix, then the filename time,
    then -<uuid> when filename_append_uuid is on, then .<filename_extension>."""
    prefix = TEMPLATE_FIELD.sub(lambda m: event[m.group(1)], sink["key_prefix"])
    name = written.strftime(sink["filename_time_format"])
    if sink["filename_append_uuid"]:
        name += f"-{uid}"
    return f"{prefix}{name}.{sink['filename_extension']}"


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_sink_settings_match_the_key_module(which: str) -> None:
    _, sink = s3_sink(CONFIGS[which])
    assert sink["key_prefix"] == keys.VECTOR_KEY_PREFIX
    assert sink["filename_time_format"] == keys.FILENAME_TIME_FORMAT
    assert sink["filename_extension"] == keys.FILENAME_EXTENSION
    assert sink["filename_append_uuid"] is True
    assert sink["timezone"] == "UTC", "filename times are UTC (CONTRACTS.md §1)"
    assert sink["compression"] == "gzip"
    assert sink["encoding"]["codec"] == "json"
    assert sink["framing"]["method"] == "newline_delimited"


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_a_key_vector_would_write_parses_back_to_the_same_parts(which: str) -> None:
    _, sink = s3_sink(CONFIGS[which])
    event = {"cluster_id": "prod-1", "namespace": "acme", "application": "payment-service", "pod_name": "payment-7d9f"}
    written = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    uid = str(uuid.UUID(int=42))
    key = vector_key(sink, event, written, uid)
    parsed = keys.parse_key(key)
    assert (parsed.cluster, parsed.tenant, parsed.application, parsed.pod) == (
        "prod-1",
        "acme",
        "payment-service",
        "payment-7d9f",
    )
    assert parsed.write_time == written
    # And the key module, formatting the same batch, writes the very same key.
    assert keys.format_key("prod-1", "acme", "payment-service", "payment-7d9f", written, uid) == key


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_the_transform_sets_every_field_the_key_uses(which: str) -> None:
    config, sink = s3_sink(CONFIGS[which])
    fields = TEMPLATE_FIELD.findall(sink["key_prefix"])
    assert fields == ["cluster_id", "namespace", "application", "pod_name"]
    (transform,) = [config["transforms"][i] for i in sink["inputs"]]
    assert transform["type"] == "remap"
    assigned = re.findall(r"^\s*\.([a-z_]+)\s*=", transform["source"], re.MULTILINE)
    assert assigned == fields, "the remap must set exactly the key fields, cluster first, tenant second"
    # The tenant is the pod's namespace, never a customer_id label (the drift that misrouted logs once).
    assert re.search(r"^\s*\.namespace = .*\.kubernetes\.pod_namespace", transform["source"], re.MULTILINE)
    assert "customer_id" not in CONFIGS[which].read_text()
    assert transform.get("drop_on_error") is True, "an event without a namespace must not reach S3"


def test_daemonset_config_buffers_on_disk_under_the_data_dir() -> None:
    config, sink = s3_sink(CONFIGS["daemonset"])
    assert sink["buffer"]["type"] == "disk"
    assert sink["buffer"]["when_full"] == "block"
    assert config["data_dir"] == "/var/lib/vector"  # a hostPath in daemonset.yaml (test_infra_k8s)
    assert sink["batch"]["timeout_secs"] == 300, "keys.DEFAULT_WRITE_SLACK assumes a 300 s batch timeout"
    assert keys.DEFAULT_WRITE_SLACK.total_seconds() >= sink["batch"]["timeout_secs"]
    # The cluster's own IRSA role writes (its grant is scoped to <bucket>/<CLUSTER_ID>/): no shared writer role.
    assert "auth" not in sink
    # End-to-end acknowledgements: a file checkpoint never runs ahead of the disk buffer.
    assert sink["acknowledgements"] == {"enabled": True}
    assert config["sources"][config["transforms"][sink["inputs"][0]]["inputs"][0]]["type"] == "kubernetes_logs"


def test_local_test_config_reads_stdin() -> None:
    config, _ = s3_sink(CONFIGS["local-test"])
    (source,) = config["sources"].values()
    assert source["type"] == "stdin"
    assert source["decoding"]["codec"] == "json"
