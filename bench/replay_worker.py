"""A null-sink replay worker that runs any tree's code: the Ray actor of `replay_bench`.

The actor imports this module from this checkout (its PYTHONPATH), then puts the tree it is to measure
first on its import path before anything imports `pipeline`, so one run holds actors of this checkout and
of older commits side by side. Nothing here imports the project at module level, and everything crossing
to and from the actor is plain data (tuples, ints, the bodies), because classes such as `WorkUnit` differ
between versions. Results are read through `bench.baseline.result_dict`, which takes either shape.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bench.baseline import from_tree, make_unit, result_dict

PlainObject = tuple[str, int, str, float, str]  # key, size, etag, last_modified (epoch s), tenant


class MemoryS3:
    """GetObject from memory, shaped like boto3's answer (Body with read(), ETag, LastModified)."""

    def __init__(self, store: Mapping[str, tuple[bytes, str, datetime]]) -> None:
        self._store = store

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:  # boto3's argument names
        body, etag, last_modified = self._store[Key]
        return {"Body": io.BytesIO(body), "ETag": f'"{etag}"', "LastModified": last_modified}


def use_tree(tree: str) -> str:
    """Import `pipeline` from `tree` in this process from now on; returns where it was imported from."""
    if sys.path[:1] != [tree]:
        sys.path.insert(0, tree)
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]
    import pipeline

    return str(pipeline.__file__)


class TreeWorker:
    """One replay worker's UnitRunner with sink 'null' from `tree`, its S3 reads served from memory.

    Settings come from the environment (`Settings.from_env`, in every version); the tenant config from the
    moto DynamoDB that environment names, once per worker."""

    def __init__(self, tree: str, window: tuple[int, int], store: Mapping[str, tuple[bytes, str, datetime]]) -> None:
        self.source = use_tree(tree)
        TimeWindow = from_tree("pipeline.delivery.routing", "TimeWindow")
        from pipeline.replay.plan import ObjectSpec, WorkUnit
        from pipeline.replay.workers import UnitRunner
        from pipeline.settings import Settings

        self._classes = (WorkUnit, ObjectSpec)
        self.runner = UnitRunner(Settings.from_env(), "null", TimeWindow(*window))
        self.runner.deliverer._s3 = MemoryS3(store)  # the Deliverer's own client slot; no other change

    def where(self) -> str:
        return self.source

    def run(self, unit_id: int, objects: Sequence[PlainObject]) -> tuple[int, float]:
        """Events delivered, and the CPU seconds this worker process spent on the unit (all threads)."""
        unit = make_unit(*self._classes, unit_id, objects)
        cpu = time.process_time()
        results = [result_dict(r) for r in self.runner.run(unit)]
        cpu = time.process_time() - cpu
        bad = [r for r in results if r["status"] != "delivered"]
        if bad:
            raise RuntimeError(f"{len(bad)} objects not delivered, e.g. {bad[0]['key']}: {bad[0]['reason']}")
        return sum(int(r["events_delivered"]) for r in results), cpu
