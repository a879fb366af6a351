"""The counters every result carries, declared once.

`DeliveryCounts` is what events did at one delivery: a sink's answer to one send, a stream prepared for
sending, an object's result at one of its deliveries, and their sums per delivery, tenant and run.
`DecodeCounts` is what reading one object saw. Every result type inherits one of them, so adding a counter
is one line here: `add()` sums it, `counts()` reports it, and the replay report, the consumer's Prometheus
metrics and the Lambda's EMF metrics pick it up by name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar


class _Counts:
    NAMES: ClassVar[tuple[str, ...]] = ()

    def add(self, other: _Counts) -> None:
        """Add every counter of `other` (of the same family) into these; other fields are left alone."""
        # Through the instance dicts: several times cheaper than getattr/setattr, and every object settles
        # a few of these. The counters are plain dataclass fields (no slots, no properties), so the dict is
        # where they live.
        mine, theirs = self.__dict__, other.__dict__
        for name in self.NAMES:
            mine[name] += theirs[name]

    def counts(self) -> dict[str, int]:
        mine = self.__dict__
        return {name: mine[name] for name in self.NAMES}


@dataclass(kw_only=True)
class DeliveryCounts(_Counts):
    events_delivered: int = 0  # accepted by the destination
    events_rejected_too_old: int = 0  # over 14 days old: held back, or refused by CloudWatch
    events_rejected_too_new: int = 0  # over 2 h ahead
    events_rejected_expired: int = 0  # older than the group's retention
    events_filtered: int = 0  # outside the requested time window
    events_already_delivered: int = 0  # inside it, but an earlier run delivered them (the ledger's coverage)
    events_split: int = 0  # over the one-event limit, each sent as several parts
    bytes_delivered: int = 0  # object sinks: bytes stored; event sinks: the decoded object
    requests: int = 0  # calls that carried data and were accepted: PutLogEvents, PutObject, Vector writes
    # The same calls refused (throttled, 5xx, stream missing, credentials expired) or left unanswered: with
    # `requests`, every data call that went on the wire.
    requests_refused: int = 0
    creates: int = 0  # CreateLogStream and CreateLogGroup calls made
    requests_minimum: int = 0  # the fewest PutLogEvents calls the events needed (limits.min_put_requests)
    retries: int = 0
    # The part of events_filtered that the delivery's own include/exclude patterns dropped (CONTRACTS.md §3); the
    # rest of events_filtered is outside the requested time window.
    events_filtered_content: int = 0

    @property
    def events_rejected(self) -> int:
        return self.events_rejected_too_old + self.events_rejected_too_new + self.events_rejected_expired


@dataclass(kw_only=True)
class DecodeCounts(_Counts):
    bytes_read: int = 0  # as stored (gzip)
    events_decoded: int = 0
    lines_malformed: int = 0
    lines_repaired_utf8: int = 0
    messages_empty: int = 0
    timestamps_defaulted: int = 0


DeliveryCounts.NAMES = tuple(f.name for f in fields(DeliveryCounts))
DecodeCounts.NAMES = tuple(f.name for f in fields(DecodeCounts))


def add_ints(into: object, other: object) -> None:
    """Add every int field of the dataclass `other` into `into`, of the same type; a bool is not a count, and
    other fields are left alone. The sum of figures that are not one of the families above (the status's
    figures, the replay plan's), whose counters are simply their int fields."""
    # Through the instance dicts, as `_Counts.add`: the status adds one object's figures per delivery.
    mine = into.__dict__
    for name, value in other.__dict__.items():
        if type(value) is int:
            mine[name] += value
