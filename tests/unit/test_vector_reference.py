"""Vector configs against Vector 0.58's own configuration reference (tests/support/vector-reference/).

(a) every Vector config document in the repo: the collector's files, and the configs its kustomizations
render into ConfigMaps (base and overlays); (b) every shape of config the Vector sink generates
(`pipeline/sinks/vector.py`); (c) the checker itself, on a minimal config with one mistake planted at a time.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.aws import StaticCredentials
from pipeline.sinks.vector import VectorSink, logs_endpoint, render_config, serialize_config
from pipeline.tenants import Delivery, DeliveryType
from tests.infra.infra_helpers import REPO, render_kustomization
from tests.support.vector_reference import (
    COMPONENT_KINDS,
    MIN_DISK_BUFFER_BYTES,
    REFERENCE_DIR,
    Checker,
    count_options,
    load_reference,
    validate,
)

SHARED_REFERENCE = REPO.parent / "shared" / "vector-reference"  # on the development machines only, not CI
NAME_HASH = re.compile(r"-[0-9a-f]{10}$")  # the suffix kustomize's configMapGenerator appends
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache"}


# --------------------------------------------------------------------------------------------------
# (a) Every Vector config document in the repo
# --------------------------------------------------------------------------------------------------


class _AnyTagLoader(yaml.SafeLoader):
    """Safe loading that reads other tools' tags (CloudFormation's !Sub...) as null: only the shape matters."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def is_vector_config(doc: Any) -> bool:
    """A Vector config: component maps at the top, and not a Kubernetes object or kustomization."""
    return (
        isinstance(doc, dict)
        and "apiVersion" not in doc
        and "kind" not in doc
        and any(isinstance(doc.get(kind), dict) for kind in COMPONENT_KINDS)
    )


def _repo_files() -> Iterator[Path]:
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and Path(root, d) != REFERENCE_DIR)
        for name in sorted(files):
            if name.endswith((".yaml", ".yml", ".json")):
                yield Path(root, name)


def _documents(text: str, name: str) -> list[Any]:
    if name.endswith(".json"):
        return [json.loads(text)]
    return list(yaml.load_all(text, Loader=_AnyTagLoader))  # a SafeLoader subclass: safe


def vector_documents() -> dict[str, Any]:
    """Every Vector config in the repo by where it is: the files themselves, and each kustomization's
    rendered ConfigMaps (base and overlays), which is what a cluster actually runs."""
    docs: dict[str, Any] = {}
    kustomizations = []
    for path in _repo_files():
        rel = str(path.relative_to(REPO))
        try:
            found = _documents(path.read_text(), path.name)
        except (yaml.YAMLError, ValueError, UnicodeDecodeError):
            continue  # not YAML/JSON we can read (a template of another tool); Vector configs always are
        first = found[0] if found else None
        if path.name == "kustomization.yaml" and isinstance(first, dict) and first.get("kind") == "Kustomization":
            kustomizations.append(path.parent)
        configs = [d for d in found if is_vector_config(d)]
        for i, doc in enumerate(configs):
            docs[rel if len(configs) == 1 else f"{rel}#{i}"] = doc
    for directory in kustomizations:
        rel = directory.relative_to(REPO)
        for obj in render_kustomization(directory):
            if obj["kind"] != "ConfigMap":
                continue
            for key, text in sorted(obj.get("data", {}).items()):
                if key.endswith((".yaml", ".yml", ".json")) and is_vector_config(doc := yaml.safe_load(text)):
                    name = NAME_HASH.sub("", obj["metadata"]["name"])  # stable ids: not the content's hash
                    docs[f"{rel} (kustomize): {name}/{key}"] = doc
    return docs


DOCUMENTS = vector_documents()


def test_every_collector_config_is_found() -> None:
    """The discovery finds the documents it must, so an empty or shrunken list cannot pass unnoticed."""
    assert {
        "collector/vector/base/vector.yaml",
        "collector/vector/vector-local-test.yaml",
        "collector/vector/base (kustomize): vector-config/vector.yaml",
        "collector/vector/overlays/openshift (kustomize): vector-config/vector.yaml",
    } <= set(DOCUMENTS)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_repo_vector_config_matches_the_reference(name: str) -> None:
    errors = validate(DOCUMENTS[name])
    assert not errors, f"{name}:\n" + "\n".join(errors)


# --------------------------------------------------------------------------------------------------
# (b) Every config the Vector sink generates
# --------------------------------------------------------------------------------------------------

CENTRAL_ACCOUNT = "123456789012"
DEST = Delivery(
    tenant_id="acme",
    delivery_id="cloudwatch",
    type=DeliveryType.CLOUDWATCH,
    role_arn="arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
    region="eu-west-1",
    log_group="/logs/acme",
)
# A second delivery with its own ExternalId, a role under an IAM path, and a log group with every character
# the tenant schema allows.
OWN_EXTERNAL_ID = Delivery(
    tenant_id="globex",
    delivery_id="audit",
    type=DeliveryType.CLOUDWATCH,
    role_arn="arn:aws:iam::222222222222:role/logging/CustomerLogDistribution-globex",
    region="us-gov-west-1",
    log_group="/aws/eks/globex#audit_2024.v1",
    external_id="globex+ext=id,@org:1/x-y",
)
ENDPOINT_ENV = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": "http://127.0.0.1:5000"}

GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "defaults": lambda: render_config(DEST, external_id=CENTRAL_ACCOUNT, data_dir="/tmp/v/p1/data"),
    "endpoint override": lambda: render_config(
        DEST, external_id=CENTRAL_ACCOUNT, data_dir="/tmp/v/p1/data", endpoint="https://logs.eu-west-1.amazonaws.com"
    ),
    "endpoint from the environment (moto)": lambda: render_config(
        DEST, external_id=CENTRAL_ACCOUNT, data_dir="/tmp/v/p1/data", endpoint=logs_endpoint(ENDPOINT_ENV)
    ),
    "the delivery's own ExternalId, role under a path": lambda: render_config(
        OWN_EXTERNAL_ID, external_id=OWN_EXTERNAL_ID.external_id or CENTRAL_ACCOUNT, data_dir="/var/tmp/d"
    ),
    "other stream field, whole-second timeout, no retries": lambda: render_config(
        DEST, external_id=CENTRAL_ACCOUNT, data_dir="d", stream_field="log_stream", batch_timeout_s=5, retry_attempts=0
    ),
    "sub-second batch timeout, many retries": lambda: render_config(
        DEST, external_id=CENTRAL_ACCOUNT, data_dir="d", batch_timeout_s=0.25, retry_attempts=1000
    ),
}


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_generated_config_matches_the_reference(case: str) -> None:
    # What Vector reads: the JSON written for --config-json.
    config = orjson.loads(serialize_config(GENERATED[case]()))
    errors = validate(config)
    assert not errors, f"{case}:\n" + "\n".join(errors)


def test_the_config_the_sink_writes_for_its_process_matches_the_reference(tmp_path: Path) -> None:
    """Through VectorSink itself (its ExternalId fallback, the endpoint from its environment), with the
    stand-in binary (tests/support/fake_vector.py) recording each config it is started with."""
    binary = tmp_path / "fake-vector"
    fake = Path(__file__).resolve().parents[1] / "support" / "fake_vector.py"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    binary.chmod(0o755)
    record = tmp_path / "record.ndjson"

    class Broker:
        external_id = CENTRAL_ACCOUNT

        def central(self) -> StaticCredentials:
            return StaticCredentials("ASIAKEY", "secret", "token", datetime.now(UTC) + timedelta(hours=1))

    env = {
        "PATH": os.environ.get("PATH", ""),
        "FAKE_VECTOR_OUT": str(tmp_path / "out.ndjson"),
        "FAKE_VECTOR_RECORD": str(record),
        **ENDPOINT_ENV,
    }
    with VectorSink(Broker(), binary=str(binary), env=env, temp_parent=str(tmp_path), flush_timeout_s=10) as sink:
        for dest in (DEST, OWN_EXTERNAL_ID):
            sink.send(dest, "app-pod-2024-01-01", [(1_700_000_000_000, "hello")])
        sink.flush()
    configs = [json.loads(json.loads(line)["config"]) for line in record.read_text().splitlines()]
    assert len(configs) == 2
    for config in configs:
        assert config["sinks"]["cloudwatch"]["endpoint"] == "http://127.0.0.1:5000"
        errors = validate(config)
        assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------------
# (c) The checker
# --------------------------------------------------------------------------------------------------

ROLE = "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme"
MINIMAL: dict[str, Any] = {
    "sources": {"in": {"type": "stdin"}},
    "sinks": {
        "cloudwatch": {
            "type": "aws_cloudwatch_logs",
            "inputs": ["in"],
            "group_name": "/logs/acme",
            "stream_name": "{{ stream }}",
            "encoding": {"codec": "text"},
        }
    },
}
Mutation = Callable[[dict[str, Any], dict[str, Any]], object]  # (config, its sink); the result is unused


def mutated(mutate: Mutation) -> dict[str, Any]:
    config = copy.deepcopy(MINIMAL)
    mutate(config, config["sinks"]["cloudwatch"])
    return config


def test_a_valid_minimal_config_passes() -> None:
    assert validate(MINIMAL) == []


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


INVALID: dict[str, tuple[Mutation, str]] = {
    # misspelled options, at every depth
    "misspelled sink option": (
        lambda c, s: _rename(s, "encoding", "encodign"),
        "sinks.cloudwatch.encodign: unknown option (did you mean 'encoding'?)",
    ),
    "misspelled nested option": (
        lambda c, s: s.update(batch={"max_bytez": 1000}),
        "sinks.cloudwatch.batch.max_bytez: unknown option",
    ),
    "misspelled option of a map's value": (
        lambda c, s: s.update(request={"headers": {"x-a": "b"}, "adaptive_concurency": {}}),
        "sinks.cloudwatch.request.adaptive_concurency: unknown option",
    ),
    "misspelled global option": (lambda c, s: c.update(data_dri="/var/lib/vector"), "data_dri: unknown option"),
    "misspelled source option": (
        lambda c, s: c["sources"]["in"].update(max_lenght=10),
        "sources.in.max_lenght: unknown option",
    ),
    "misspelled component type": (
        lambda c, s: s.update(type="aws_cloudwatch_log"),
        "sinks.cloudwatch.type: no reference for component type 'aws_cloudwatch_log'",
    ),
    "component type whose reference is not vendored": (
        lambda c, s: s.update(type="console"),
        "sinks.cloudwatch.type: no reference for component type 'console' (copy sinks/console.json",
    ),
    # wrong types
    "string for a uint": (
        lambda c, s: s.update(batch={"max_events": "100"}),
        "sinks.cloudwatch.batch.max_events: expected uint, got str '100'",
    ),
    "negative uint": (
        lambda c, s: s.update(request={"retry_attempts": -1}),
        "sinks.cloudwatch.request.retry_attempts: expected uint, got int -1",
    ),
    "float for a uint": (
        lambda c, s: s.update(batch={"max_events": 1.5}),
        "sinks.cloudwatch.batch.max_events: expected uint, got float 1.5",
    ),
    "string for a bool": (
        lambda c, s: s.update(create_missing_group="false"),
        "sinks.cloudwatch.create_missing_group: expected bool, got str 'false'",
    ),
    "bool for a float": (
        lambda c, s: s.update(batch={"timeout_secs": True}),
        "sinks.cloudwatch.batch.timeout_secs: expected float, got bool True",
    ),
    "string for an array": (
        lambda c, s: s.update(inputs="in"),
        "sinks.cloudwatch.inputs: expected array, got str 'in'",
    ),
    "object for a string": (
        lambda c, s: s.update(region={"name": "eu-west-1"}),
        "sinks.cloudwatch.region: expected string, got dict",
    ),
    "null": (lambda c, s: s.update(healthcheck=None), "sinks.cloudwatch.healthcheck: null is not a value here"),
    "template in an option that is not one": (
        lambda c, s: s.update(region="{{ region }}"),
        "sinks.cloudwatch.region: {{ … }} is expanded only in template options",
    ),
    "interpolated default of the wrong type": (
        lambda c, s: s.update(batch={"max_events": "${MAX_EVENTS:-many}"}),
        "sinks.cloudwatch.batch.max_events: expected uint, got str 'many' (from '${MAX_EVENTS:-many}')",
    ),
    "partly interpolated number": (
        lambda c, s: s.update(batch={"max_events": "1${ZEROS}"}),
        "sinks.cloudwatch.batch.max_events: expected uint, got str '1${ZEROS}'",
    ),
    # enum values
    "bad codec": (
        lambda c, s: s.update(encoding={"codec": "txt"}),
        "sinks.cloudwatch.encoding.codec: 'txt' is not one of avro,",
    ),
    "bad compression": (lambda c, s: s.update(compression="gz"), "sinks.cloudwatch.compression: 'gz' is not one of"),
    "bad compression level": (
        lambda c, s: s.update(compression={"algorithm": "zstd", "level": "fastest"}),
        "sinks.cloudwatch.compression.level: 'fastest' is not one of none, fast, default, best",
    ),
    "bad buffer when_full": (
        lambda c, s: s.update(buffer={"type": "memory", "when_full": "drop_oldest"}),
        "sinks.cloudwatch.buffer.when_full: 'drop_oldest' is not one of block, drop_newest",
    ),
    "bad enum behind a default": (
        lambda c, s: s.update(encoding={"codec": "${CODEC:-txt}"}),
        "sinks.cloudwatch.encoding.codec: 'txt' is not one of",
    ),
    "bad global enum": (
        lambda c, s: c.update(wildcard_matching="loose"),
        "wildcard_matching: 'loose' is not one of strict, relaxed",
    ),
    # required options
    "missing group_name": (lambda c, s: s.pop("group_name"), "sinks.cloudwatch.group_name: missing required option"),
    "missing encoding": (lambda c, s: s.pop("encoding"), "sinks.cloudwatch.encoding: missing required option"),
    "missing codec": (lambda c, s: s.update(encoding={}), "sinks.cloudwatch.encoding.codec: missing required option"),
    "missing inputs": (lambda c, s: s.pop("inputs"), "sinks.cloudwatch.inputs: missing required option"),
    "missing type": (lambda c, s: c["sources"]["in"].pop("type"), "sources.in.type: missing required option"),
    "missing option its codec needs": (
        lambda c, s: s.update(encoding={"codec": "csv"}),
        "sinks.cloudwatch.encoding.csv: missing required option",
    ),
    "missing compression algorithm": (
        lambda c, s: s.update(compression={"level": 3}),
        "sinks.cloudwatch.compression.algorithm: missing required option",
    ),
    "remap without a program": (
        lambda c, s: c.update(transforms={"t": {"type": "remap", "inputs": ["in"]}}),
        "transforms.t: set exactly one of source, file, files (found none)",
    ),
    "remap with two programs": (
        lambda c, s: c.update(transforms={"t": {"type": "remap", "inputs": ["in"], "source": ".", "file": "p.vrl"}}),
        "transforms.t: set exactly one of source, file, files (found source, file)",
    ),
    "option for another codec": (
        lambda c, s: s.update(encoding={"codec": "text", "json": {"pretty": True}}),
        "sinks.cloudwatch.encoding.json: only applies when codec = \"json\" (here codec = 'text')",
    ),
    # AWS auth variants
    "auth mixing role and credentials file": (
        lambda c, s: s.update(auth={"assume_role": ROLE, "credentials_file": "/etc/aws/credentials"}),
        "sinks.cloudwatch.auth: the options assume_role, credentials_file fit none of its variants",
    ),
    "auth mixing access key and credentials file": (
        lambda c, s: s.update(auth={"access_key_id": "AKIA", "secret_access_key": "s", "credentials_file": "/f"}),
        "sinks.cloudwatch.auth: the options access_key_id, credentials_file, secret_access_key fit none",
    ),
    "auth with half an access key": (
        lambda c, s: s.update(auth={"access_key_id": "AKIA"}),
        "access_key needs secret_access_key",
    ),
    "auth profile without a credentials file": (
        lambda c, s: s.update(auth={"profile": "prod"}),
        "file needs credentials_file",
    ),
    "auth imds with an access key": (
        lambda c, s: s.update(auth={"access_key_id": "AKIA", "secret_access_key": "s", "imds": {"max_attempts": 2}}),
        "access_key does not take imds",
    ),
    # buffers
    "disk buffer without max_size": (
        lambda c, s: s.update(buffer={"type": "disk"}),
        'sinks.cloudwatch.buffer.max_size: missing required option (required when type = "disk")',
    ),
    "disk buffer with max_events": (
        lambda c, s: s.update(buffer={"type": "disk", "max_size": MIN_DISK_BUFFER_BYTES, "max_events": 10}),
        "sinks.cloudwatch.buffer.max_events: only applies when type = \"memory\" (here type = 'disk')",
    ),
    "memory buffer with both limits": (
        lambda c, s: s.update(buffer={"max_events": 10, "max_size": 1_000_000}),
        "sinks.cloudwatch.buffer: a memory buffer takes max_events or max_size, not both",
    ),
    "disk buffer below Vector's minimum": (
        lambda c, s: s.update(buffer={"type": "disk", "max_size": MIN_DISK_BUFFER_BYTES - 1}),
        f"sinks.cloudwatch.buffer.max_size: a disk buffer needs at least {MIN_DISK_BUFFER_BYTES} bytes",
    ),
    "bad stage of a buffer list": (
        lambda c, s: s.update(buffer=[{"type": "memory", "max_events": 10}, {"type": "disk"}]),
        "sinks.cloudwatch.buffer[1].max_size: missing required option",
    ),
    # the graph
    "input naming nothing": (
        lambda c, s: s.update(inputs=["in", "tenant_fields"]),
        "sinks.cloudwatch.inputs[1]: 'tenant_fields' names no source or transform",
    ),
    "no source": (lambda c, s: c.update(sources={}), "sources: a Vector config needs at least one source"),
    "an id used twice": (
        lambda c, s: c.update(transforms={"in": {"type": "remap", "inputs": ["in"], "source": "."}}),
        "transforms.in: the id is already used in sources",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_planted_mistake_is_reported_with_its_path(case: str) -> None:
    mutate, expected = INVALID[case]
    errors = validate(mutated(mutate))
    assert any(expected in e for e in errors), f"{expected!r} not in {errors}"


VALID: dict[str, Mutation] = {
    "auth: role with ExternalId": lambda c, s: s.update(auth={"assume_role": ROLE, "external_id": "123456789012"}),
    "auth: access key": lambda c, s: s.update(auth={"access_key_id": "AKIA", "secret_access_key": "s"}),
    "auth: access key, then a role": lambda c, s: s.update(
        auth={"access_key_id": "AKIA", "secret_access_key": "s", "session_token": "t", "assume_role": ROLE}
    ),
    "auth: credentials file and profile": lambda c, s: s.update(auth={"credentials_file": "/f", "profile": "p"}),
    "auth: the default chain, its region and IMDS": lambda c, s: s.update(
        auth={"region": "us-east-1", "imds": {"max_attempts": 2}}
    ),
    "auth: empty (the default chain)": lambda c, s: s.update(auth={}),
    "disk buffer at Vector's minimum": lambda c, s: s.update(
        buffer={"type": "disk", "max_size": MIN_DISK_BUFFER_BYTES, "when_full": "block"}
    ),
    "memory buffer by size": lambda c, s: s.update(buffer={"max_size": 1_000_000}),
    "buffer stages": lambda c, s: s.update(
        buffer=[{"type": "memory", "max_events": 10}, {"type": "disk", "max_size": MIN_DISK_BUFFER_BYTES}]
    ),
    "bool shorthands": lambda c, s: (
        s.update(healthcheck=False, acknowledgements=True),
        c.update(acknowledgements=True),
    ),
    "compression object": lambda c, s: s.update(compression={"algorithm": "zstd", "level": 19}),
    "integer for a float": lambda c, s: s.update(batch={"timeout_secs": 5}),
    "environment variable in a uint": lambda c, s: s.update(batch={"max_events": "${MAX_EVENTS}"}),
    "environment default in a uint": lambda c, s: s.update(batch={"max_events": "${MAX_EVENTS:-500}"}),
    "environment variable in an enum": lambda c, s: s.update(encoding={"codec": "${CODEC:?set CODEC}"}),
    "environment variable in a bool": lambda c, s: s.update(healthcheck={"enabled": "$HEALTHCHECK"}),
    "environment variables inside a string": lambda c, s: s.update(group_name="/logs/${TENANT}-$$-${SUFFIX:-x}"),
    "template with an environment variable": lambda c, s: s.update(stream_name="${PREFIX}-{{ pod }}"),
    "map of headers": lambda c, s: s.update(request={"headers": {"X-Tenant": "{{ tenant }}"}}),
    "named output and wildcard inputs": lambda c, s: (
        c.update(transforms={"t": {"type": "remap", "inputs": ["i*"], "source": "."}}),
        s.update(inputs=["t", "t.dropped"]),
    ),
    "hidden top-level keys": lambda c, s: c.update(tests=[{"name": "t", "inputs": []}], provider={"type": "http"}),
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_a_valid_variation_passes(case: str) -> None:
    assert validate(mutated(VALID[case])) == []


CONDITION = {
    "types": {
        "condition": {
            "forms": ["string", "object"],
            "object_type_enum": ["vrl", "datadog_search", "is_log", "is_metric", "is_trace"],
            "object_options": {
                "type": "required",
                "source": "required for vrl and datadog_search",
                "runtime": "optional (hidden)",
            },
        }
    }
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('.status == "error"', []),
        ({"type": "vrl", "source": ".x == 1"}, []),
        ({"type": "is_log"}, []),
        ({"type": "vrl"}, ["c.source: missing required option"]),
        (
            {"type": "lua", "source": "x"},
            ["c.type: 'lua' is not one of vrl, datadog_search, is_log, is_metric, is_trace"],
        ),
        ({"source": "x"}, ["c.type: missing required option"]),
        ({"type": "is_log", "sorce": "x"}, ["c.sorce: unknown option (did you mean 'source'?)"]),
        (["x"], ["c: expected condition, got list ['x']"]),
    ],
)
def test_conditions(value: Any, expected: list[str]) -> None:
    """No vendored component has a condition (filter and route are not used here): the kind's node as the
    reference writes it for `filter.condition`."""
    assert Checker(load_reference()).check(value, CONDITION, "c") == expected


def test_not_a_mapping() -> None:
    assert validate(["sources"]) == ["(top level): a Vector config is a mapping, got list ['sources']"]


# --------------------------------------------------------------------------------------------------
# The vendored reference
# --------------------------------------------------------------------------------------------------

VENDORED = ["global.json", *load_reference().vendored_files()]


@pytest.mark.parametrize("name", VENDORED)
def test_vendored_file_is_complete_and_from_the_indexed_commit(name: str) -> None:
    reference = load_reference()
    data = json.loads((REFERENCE_DIR / name).read_text())
    assert data["source"]["commit"] == reference.index["commit"]
    assert data["source"]["version"] == reference.index["version"]
    assert count_options(data["options"]) == reference.index["files"][name]["option_count"]
    assert len(data["options"]) == reference.index["files"][name]["top_level_option_count"]


@pytest.mark.skipif(
    not SHARED_REFERENCE.is_dir(),
    reason="no ../shared/vector-reference beside this checkout (only the development machines have it)",
)
@pytest.mark.parametrize("name", ["README.md", "index.json", *VENDORED])
def test_vendored_file_is_identical_to_the_shared_reference(name: str) -> None:
    assert (REFERENCE_DIR / name).read_bytes() == (SHARED_REFERENCE / name).read_bytes()
