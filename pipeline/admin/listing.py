"""Every tenant of a table and its deliveries, as the reader sees them (either table shape).

Flags (the FLAGS column, and `legacy` / `unbound_clusters` in JSON): `legacy` for a tenant without a profile
(CONTRACTS.md §3: delivered with the shared ExternalId, refused new deliveries), `no-clusters` for a delivery
written before `clusters` was required (it takes the namespace from every cluster until it is migrated).
A profile's ExternalIds are not listed: `log-tenants profile show` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.admin import text
from pipeline.tenants import Delivery, InvalidDelivery, TableSchema, Tenant, TenantDirectory, delivery_item

HEADERS = ("TENANT", "DELIVERY", "TYPE", "ENABLED", "TARGET", "DESIRED_LOGS", "CLUSTERS", "FLAGS")


@dataclass(frozen=True)
class TenantListing:
    table: str
    schema: TableSchema
    tenants: tuple[Tenant, ...]

    @property
    def deliveries(self) -> int:
        return sum(len(t.deliveries) for t in self.tenants)

    @property
    def invalid(self) -> int:
        return sum(len(t.invalid) for t in self.tenants)

    @property
    def legacy(self) -> int:
        return sum(1 for t in self.tenants if t.legacy)

    def to_json(self) -> dict[str, Any]:
        """Each valid delivery as its v2 item (the §3 field names, defaults filled in: the shape `put` and
        `export` take), plus `target`; each invalid one with the reason that names every bad field."""
        return {
            "table": self.table,
            "schema": str(self.schema),
            "counts": {
                "tenants": len(self.tenants),
                "deliveries": self.deliveries,
                "invalid": self.invalid,
                "legacy": self.legacy,
            },
            "tenants": [
                {
                    "tenant_id": t.tenant_id,
                    "legacy": t.legacy,
                    "accounts": sorted(t.profile.accounts) if t.profile else None,
                    "profile_error": t.profile_error or None,
                    "unbound_clusters": list(t.unbound_clusters),
                    "deliveries": [delivery_json(d) for d in t.deliveries],
                    "invalid": [{"delivery_id": i.delivery_id, "reason": i.reason} for i in t.invalid],
                }
                for t in self.tenants
            ],
        }

    def render(self) -> str:
        summary = (
            f"table {self.table} ({self.schema}): {len(self.tenants)} tenants, {self.deliveries} deliveries, "
            f"{self.invalid} invalid, {self.legacy} legacy (no profile)"
        )
        if not self.tenants:
            return summary
        rows: list[tuple[str, ...]] = []
        for t in self.tenants:
            for d in t.deliveries:
                enabled = "yes" if d.enabled else "no"
                cells = (t.tenant_id, d.delivery_id, str(d.type), enabled, d.target)
                flags = ",".join(
                    f for f in ("legacy" if t.legacy else "", "" if d.clusters is not None else "no-clusters") if f
                )
                rows.append((*cells, text.names(d.desired_logs), text.names(d.clusters), flags or "-"))
            rows.extend((t.tenant_id, i.delivery_id, "INVALID", "-", _unprefixed(i)) for i in t.invalid)
            if t.profile is not None and not t.deliveries and not t.invalid:
                rows.append((t.tenant_id, "-", "-", "-", "(profile only: no deliveries yet)"))
        return text.table(HEADERS, rows) + "\n" + summary


def _unprefixed(i: InvalidDelivery) -> str:
    """The reason without the "tenant 'x' delivery 'y': " its row already shows."""
    for prefix in (f"tenant {i.tenant_id!r} delivery {i.delivery_id!r}: ", f"tenant {i.tenant_id!r}: "):
        if i.reason.startswith(prefix):
            return i.reason[len(prefix) :]
    return i.reason


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {**delivery_item(d, TableSchema.V2), "target": d.target}


def list_tenants(directory: TenantDirectory) -> TenantListing:
    """One consistent scan of the table; invalid deliveries are listed with their reason, not dropped."""
    return TenantListing(directory.table, directory.schema, tuple(directory.tenants()))
