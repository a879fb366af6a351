"""Remembering the nonces of signed requests, so a captured request cannot be sent a second time (§9).

A request is accepted while its X-Timestamp is within `auth.WINDOW_S` of the server's clock, on either side:
a nonce must be remembered at least until `timestamp + WINDOW_S`, which is at most `now + 2 * WINDOW_S`.
Items live `NONCE_TTL_S` (more than that) past their first use.

`DynamoNonces` is what every deployment uses: the table `API_NONCE_TABLE` (hash key `nonce` (S), TTL attribute
`expires_at`), one conditional PutItem per request (`attribute_not_exists(nonce)`), so two replicas of the
API, or two Lambda execution environments, that receive the same request at the same instant still accept it
once: DynamoDB decides, not a process's memory. An item is never read and never updated, so the API's role
needs `dynamodb:PutItem` on that table and nothing else. A nonce stays refused until DynamoDB's TTL removes
the item (hours to days after `expires_at`): never earlier than the window needs.

`MemoryNonces` is for one local process (`TENANT_API_KEY` without a table) and for tests.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.api.auth import WINDOW_S
from pipeline.classify import describe
from pipeline.errors import NonceStoreError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

NONCE_TTL_S = 2 * WINDOW_S + 60


class NonceStore(Protocol):
    def remember(self, key_id: str, nonce: str) -> bool:
        """True the first time (key id, nonce) is seen; False for a reuse. NonceStoreError when unknown."""
        ...


class MemoryNonces:
    """Nonces of one process, each forgotten NONCE_TTL_S after its first use.

    Bounded: when `max_entries` unexpired nonces are held, a new one is refused (fails closed) rather than
    evicting one that could then be replayed.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = 200_000) -> None:
        self._clock = clock
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # insertion order is expiry order (one TTL)
        self._lock = threading.Lock()

    def remember(self, key_id: str, nonce: str) -> bool:
        now = self._clock()
        name = f"{key_id}/{nonce}"
        with self._lock:
            while self._seen:
                oldest, expires = next(iter(self._seen.items()))
                if expires > now:
                    break
                del self._seen[oldest]
            if name in self._seen or len(self._seen) >= self._max:
                return False
            self._seen[name] = now + NONCE_TTL_S
            return True

    def __len__(self) -> int:
        return len(self._seen)


class DynamoNonces:
    """Nonces in the DynamoDB table `table`, by a conditional put (see the module docstring)."""

    def __init__(
        self, table: str, client: DynamoDBClient | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.table = table
        self._client = client
        self._clock = clock

    def _ddb(self) -> DynamoDBClient:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    def remember(self, key_id: str, nonce: str) -> bool:
        expires = int(self._clock()) + NONCE_TTL_S
        try:
            self._ddb().put_item(
                TableName=self.table,
                Item={"nonce": {"S": f"{key_id}/{nonce}"}, "expires_at": {"N": str(expires)}},
                ConditionExpression="attribute_not_exists(nonce)",
            )
        except ClientError as exc:
            if aws.condition_failed(exc):
                return False
            raise NonceStoreError(f"{self.table}: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise NonceStoreError(f"{self.table}: {describe(exc)}") from None
        return True
