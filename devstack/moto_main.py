"""The moto server of the local stack, with moto's TransactWriteItems made fit for concurrent use.

Run as a script (`MotoServer` does): `python devstack/moto_main.py -H HOST -p PORT`, the arguments of
`moto.server`, or `python devstack/moto_main.py --serial HOST PORT` for one request at a time. Everything is
moto's own, except one method of its DynamoDB backend:

moto's `transact_write_items` backs up every table a transaction touches by deep-copying the whole table,
once per item of the transaction, and rolls back by putting the copies in place of the tables. A copy taken
while another request thread writes the table fails (`RuntimeError: dictionary changed size during
iteration`, answered as HTTP 500), a rollback would undo other requests' writes, and a transaction of 100
items over a ledger of N items copies 100·N items: a cost DynamoDB does not have, which would dominate any
measurement of the ledger (`docs/PERFORMANCE.md`). Here a transaction backs up only the items it names,
runs moto's own logic (its checks, conditions, updates and error answers unchanged) with the table copy
turned into a no-op, restores those items if it is cancelled, and runs under one lock, so transactions are
isolated from each other as DynamoDB's are.

And one function of its dispatcher: every request asks `moto.backends.list_of_moto_modules()` whether its
host names a service, and that lists moto's package folder and stats each of its ~200 entries, under the
dispatcher's one lock. Requests then queue on the file system: sampled during a replay, threads waiting on
that lock were 44% of the server's samples. The folder does not change while the server runs, so it is read
once.

And one method of moto's base response: `_get_param` parses the whole JSON body of the request again for
every parameter it is asked for. A PutLogEvents of 10,000 events (1 MiB) was parsed three times, and those
parses were 41% of the server's CPU in a CloudWatch benchmark. Here the body is parsed once per request; what
a parameter resolves to is unchanged (the query string first, then the body, then the URL).
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import threading
from typing import Any

import moto.backends as moto_backends
import moto.dynamodb.models as ddb_models
from moto.core.responses import BaseResponse
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.server import main

_LOCK = threading.RLock()
_transact = DynamoDBBackend.transact_write_items
_list_of_moto_modules = moto_backends.list_of_moto_modules
_get_param = BaseResponse._get_param
_UNPARSABLE = object()


class _NoTableCopy:
    """`copy` as moto's DynamoDB models module sees it: tables are not copied, anything else is."""

    copy = staticmethod(copy.copy)

    @staticmethod
    def deepcopy(x: Any, memo: dict[int, Any] | None = None) -> Any:
        return x if isinstance(x, Table) else copy.deepcopy(x, memo)


def _key_of(table: Table, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    attrs = op["Key"] if "Key" in op else op["Item"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    return hash_key, range_key


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    with _LOCK:
        backups: list[tuple[Table, DynamoType, DynamoType | None, Any]] = []
        try:
            for item in transact_items:
                op = next(iter(item.values()))
                table = self.get_table(op["TableName"])
                hash_key, range_key = _key_of(table, op)
                backups.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
        except Exception:  # a malformed request: moto's own code answers it as it would
            pass
        try:
            _transact(self, transact_items)
        except Exception:
            for table, hash_key, range_key, old in reversed(backups):
                if old is None:
                    table.delete_item(hash_key, range_key)
                elif range_key is not None:
                    table.items[hash_key][range_key] = old
                else:
                    table.items[hash_key] = old
            raise


def _parsed_body(response: BaseResponse) -> Any:
    """The request's JSON body, parsed on first use (each request has a response object of its own)."""
    cached = response.__dict__.get("_parsed_body")
    if cached is None or cached[0] is not response.body:
        try:
            parsed = json.loads(response.body)
        except (ValueError, TypeError):
            parsed = _UNPARSABLE
        cached = response.__dict__["_parsed_body"] = (response.body, parsed)
    return cached[1]


def get_param(self: BaseResponse, param_name: str, if_none: Any = None) -> Any:
    if self.automated_parameter_parsing:
        return _get_param(self, param_name, if_none)
    val = self.querystring.get(param_name)
    if val is not None:
        return val[0]
    if self.body is not None:
        parsed = _parsed_body(self)
        if isinstance(parsed, dict) and param_name in parsed:
            return parsed[param_name]
    if self.uri_match and param_name in self.uri_match:
        return self.uri_match[param_name]
    return if_none


# A tuple, not moto's generator, so the one cached answer can be iterated by every request.
moto_backends.list_of_moto_modules = functools.cache(lambda: tuple(_list_of_moto_modules()))
ddb_models.copy = _NoTableCopy  # type: ignore[assignment]  # the module's global `copy`, seen by _transact
DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
BaseResponse._get_param = get_param  # type: ignore[method-assign]


def serve_serially(host: str, port: int) -> None:
    """moto's server answering one request at a time (`MotoServer(serial=True)`, see devstack/server.py)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serial"]:
        serve_serially(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])
