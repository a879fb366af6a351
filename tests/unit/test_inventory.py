"""The inventory builder without AWS: sampling, the table, writing and reading, and the CLI's usage errors."""

from __future__ import annotations

import gzip
import importlib.util
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.inventory import (
    SCHEMA,
    Inventory,
    InventoryOptions,
    SampleResult,
    _table,
    is_sampled,
    read_inventory,
    read_metadata,
    sample_object,
    write_inventory,
)
from pipeline.keys import format_key, parse_key
from pipeline.records import vector_record
from pipeline.source.listing import ListedObject, ListingFilter

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def _load_cli() -> Any:
    """jobs/ is a directory of scripts, not an installed package: load the CLI from its file."""
    path = Path(__file__).resolve().parents[2] / "jobs" / "inventory.py"
    spec = importlib.util.spec_from_file_location("jobs_inventory", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = _load_cli().main


def listed(tenant: str, i: int, size: int = 100, write: datetime | None = None) -> ListedObject:
    key = format_key("prod-1", tenant, "app", f"pod-{i % 2}", write or T0 + timedelta(minutes=i), uid=f"u{i}")
    return ListedObject(key, size, f"etag{i}", T0 + timedelta(minutes=i, seconds=5), parse_key(key))


def options(*tenants: str, **kw: Any) -> InventoryOptions:
    return InventoryOptions(tenants or ("acme",), T0, T0 + timedelta(hours=1), bucket="bucket", **kw)


def test_sampling_is_deterministic_per_key_and_seed_and_close_to_the_fraction() -> None:
    keys = [f"prod-1/acme/app/pod/{i:06d}.json.gz" for i in range(4000)]
    picked = [k for k in keys if is_sampled(k, 0.25, seed=3)]
    assert 0.22 * len(keys) < len(picked) < 0.28 * len(keys)
    assert picked == [k for k in keys if is_sampled(k, 0.25, seed=3)]
    assert picked != [k for k in keys if is_sampled(k, 0.25, seed=4)]
    # Monotone in the fraction: a bigger sample contains the smaller one.
    assert set(picked) <= {k for k in keys if is_sampled(k, 0.5, seed=3)}
    assert not any(is_sampled(k, 0.0, 3) for k in keys)
    assert all(is_sampled(k, 1.0, 3) for k in keys)


@pytest.mark.parametrize(
    "kw",
    [{"sample_fraction": -0.1}, {"sample_fraction": 1.01}, {"until": T0}],
)
def test_options_are_validated(kw: dict[str, Any]) -> None:
    base: dict[str, Any] = {"bucket": "b", "tenants": ("acme",), "since": T0, "until": T0 + timedelta(hours=1)}
    with pytest.raises(ValueError):
        InventoryOptions(**{**base, **kw})
    with pytest.raises(ValueError):
        InventoryOptions(**{**base, "tenants": ()})


def test_options_are_the_listing_filter_of_the_window() -> None:
    """The inventory lists what a replay of the same window lists: its options are that filter, declared once;
    where and how to inventory come after it, by keyword."""
    opts = options("acme", "globex", clusters=("prod-1",))
    assert isinstance(opts, ListingFilter)
    assert ListingFilter.of(opts) == ListingFilter(("acme", "globex"), T0, T0 + timedelta(hours=1), ("prod-1",))
    with pytest.raises(TypeError):
        InventoryOptions("bucket", ("acme",), T0, T0 + timedelta(hours=1))  # type: ignore[call-arg, arg-type]


class FakeS3:
    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.bodies[Key])}


def test_sample_counts_events_uncompressed_and_message_bytes() -> None:
    obj = listed("acme", 1)
    records = [vector_record(m, "2024-05-01T10:00:00Z", "prod-1", "acme", "app", "pod-1") for m in ("héllo", "x" * 10)]
    records.append(vector_record({"a": 1}, "2024-05-01T10:00:00Z", "prod-1", "acme", "app", "pod-1"))
    plain = b"".join(orjson.dumps(r) + b"\n" for r in records) + b"not json\n"
    result = sample_object(FakeS3({obj.key: gzip.compress(plain)}), "bucket", obj)
    assert result.events == 3
    assert result.bytes_uncompressed == len(plain)
    assert result.message_bytes == len("héllo".encode()) + 10 + len(b'{"a":1}')
    assert result.lines_malformed == 1
    assert result.damaged is None

    cut = gzip.compress(plain)[:-30]
    assert sample_object(FakeS3({obj.key: cut}), "bucket", obj).damaged


def test_table_has_the_schema_and_one_row_per_object() -> None:
    objs = [listed("acme", i) for i in range(3)]
    no_time = ListedObject("prod-1/acme/app/pod-0/nodate.json.gz", 5, "e", T0, parse_key("prod-1/acme/app/pod-0/x.gz"))
    table = _table([*objs, no_time], {objs[0].key}, {objs[1].key: SampleResult(7, 700, 500, 0, None)})
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert [r["delivered"] for r in rows] == [True, False, False, False]
    assert [r["sampled"] for r in rows] == [False, True, False, False]
    assert (rows[1]["events"], rows[1]["bytes_uncompressed"], rows[1]["message_bytes"]) == (7, 700, 500)
    assert rows[0]["events"] is None and rows[0]["damaged"] is None
    assert rows[0]["write_time"] == T0
    assert rows[3]["write_time"] == T0  # no time in the filename: LastModified
    assert _table(objs, None, {}).column("delivered").null_count == 3


def test_single_file_and_dataset_round_trip_with_metadata(tmp_path: Path) -> None:
    objs = [listed("acme", i) for i in range(3)] + [listed("globex", i, size=1000) for i in range(2)]
    inv = Inventory(_table(objs, set(), {}), options("acme", "globex", "hooli"), list_calls=9)

    (single,) = write_inventory(inv, tmp_path / "inv.parquet")
    assert read_inventory(single).to_pylist() == inv.table.sort_by("key").to_pylist()
    (meta,) = read_metadata(single)
    assert meta["tenants"] == ["acme", "globex", "hooli"] and meta["list_calls"] == 9 and meta["objects"] == 5

    files = write_inventory(inv, tmp_path / "ds")
    assert [f.parent.name for f in files] == ["tenant=acme", "tenant=globex", "tenant=hooli"]
    assert pq.read_table(files[2]).num_rows == 0  # listed, found nothing: an empty partition, not a stale one
    assert read_inventory(tmp_path / "ds").to_pylist() == inv.table.sort_by("key").to_pylist()
    assert len(read_metadata(tmp_path / "ds")) == 3

    # Rewriting one tenant replaces its partition and leaves the others alone.
    fewer = Inventory(_table(objs[:1], set(), {}), options("acme"))
    write_inventory(fewer, tmp_path / "ds")
    keys = read_inventory(tmp_path / "ds")["key"].to_pylist()
    assert keys == sorted([objs[0].key, objs[3].key, objs[4].key])

    summary = inv.summary()
    assert summary["globex"] == {"objects": 2, "bytes": 2000, "sampled": 0, "delivered": 0}
    assert summary["hooli"]["objects"] == 0


def test_empty_dataset_directory_reads_as_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert read_inventory(tmp_path / "empty").schema == SCHEMA


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "1h", "-o", "x.parquet"], "--tenant"),
        (["--tenant", "acme", "-o", "x.parquet"], "--since"),
        (["--tenant", "acme", "--since", "1h"], "--output"),
        (["--tenant", "acme", "--since", "1h", "--until", "2h", "-o", "x.parquet"], "--until"),
        (["--tenant", "acme", "--since", "1h", "--sample-fraction", "1.5", "-o", "x.parquet"], "1.5"),
        (["--tenant", "acme", "--since", "yesterday-ish", "-o", "x.parquet"], "yesterday-ish"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tmp_path / a) if a == "x.parquet" else a for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x.parquet").exists()


def test_missing_bucket_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_BUCKET_NAME", raising=False)
    result = CliRunner().invoke(main, ["--tenant", "acme", "--since", "1h", "-o", str(tmp_path / "x.parquet")])
    assert result.exit_code == 3
    assert "S3_BUCKET_NAME" in result.output


def test_help_names_the_environment_and_exit_codes() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for word in ("S3_BUCKET_NAME", "DELIVERY_LEDGER_TABLE", "AWS_ENDPOINT_URL", "Exit codes", "--sample-fraction"):
        assert word in out
