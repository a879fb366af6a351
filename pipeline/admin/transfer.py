"""A whole v2 tenant table as one YAML document, and back: for review in git.

    tenants:
      acme:
        cloudwatch:            # delivery_id
          type: cloudwatch
          log_distribution_role_arn: arn:aws:iam::111111111111:role/CustomerLogDistribution-acme
          ...

Keys are sorted and the management stamps (`created_at`, `updated_at`) are left out, so an export changes
only when a delivery does. An import validates every delivery of the file first and writes nothing when
one is bad (each bad field named); then it creates or replaces each delivery that differs (keeping its
`created_at`), and with `prune` deletes the deliveries the file does not hold.

Tenant profiles (`_tenant`) are not part of the document: they hold the provider's ExternalIds and are
managed with `log-tenants profile`. An import checks each delivery against its tenant's profile as every
write does (`validate_write`: a tenant without one takes no new delivery, a role must be in the profile's
accounts, `clusters` is required), and `prune` never deletes a profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.admin import text
from pipeline.admin.store import MANAGED, TenantStore, same_delivery, validate, validate_write
from pipeline.tenants import TenantConfigError, TenantProfile


def export_doc(store: TenantStore) -> tuple[dict[str, Any], list[str]]:
    """(the document, ["tenant/delivery: reason"] of items that do not validate, exported as they are)."""
    tenants: dict[str, dict[str, Any]] = {}
    invalid: list[str] = []
    for raw in store.items():
        tenant_id, delivery_id = str(raw.get("tenant_id")), str(raw.get("delivery_id"))
        try:
            item = validate(tenant_id, delivery_id, raw)
        except TenantConfigError as exc:
            invalid.append(f"{tenant_id}/{delivery_id}: {exc.reason}")
            item = dict(raw)
        body = {k: v for k, v in sorted(item.items()) if k not in MANAGED and k not in ("tenant_id", "delivery_id")}
        tenants.setdefault(tenant_id, {})[delivery_id] = body
    return {"table": store.table, "tenants": tenants}, invalid


def dump(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=True, default_flow_style=False, allow_unicode=True)


def load(source: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(tenant_id, delivery_id) → delivery body, from an export document; TenantConfigError when the
    document does not have that shape."""
    try:
        doc = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise TenantConfigError(f"not YAML: {exc}", {"file": "not valid YAML"}) from None
    tenants = doc.get("tenants") if isinstance(doc, dict) else None
    if not isinstance(tenants, dict):
        raise TenantConfigError("the file has no `tenants:` mapping", {"tenants": "must map tenant ids to deliveries"})
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant_id, deliveries in tenants.items():
        if not isinstance(deliveries, dict):
            raise TenantConfigError(f"tenant {tenant_id!r}", {f"{tenant_id}": "must map delivery ids to deliveries"})
        for delivery_id, body in deliveries.items():
            out[(str(tenant_id), str(delivery_id))] = body if isinstance(body, dict) else {"__not_a_mapping__": body}
    return out


@dataclass
class ImportResult:
    dry_run: bool
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # tenant, delivery, action
    invalid: dict[str, dict[str, str]] = field(default_factory=dict)  # "tenant/delivery" → fields

    @property
    def ok(self) -> bool:
        return not self.invalid

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "deliveries": [{"tenant_id": t, "delivery_id": d, "action": a} for t, d, a in self.lines],
            "invalid": self.invalid,
        }

    def render(self) -> str:
        if self.invalid:
            rows = [
                (where, f"{name}: {problem}")
                for where, fs in sorted(self.invalid.items())
                for name, problem in fs.items()
            ]
            return "nothing written: the file has invalid deliveries\n" + text.table(("DELIVERY", "PROBLEM"), rows)
        head = "import (dry run: nothing written)" if self.dry_run else "import"
        counts: dict[str, int] = {}
        for *_, action in self.lines:
            counts[action] = counts.get(action, 0) + 1
        summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing to do"
        body = text.table(("TENANT", "DELIVERY", "ACTION"), self.lines) if self.lines else ""
        return "\n".join(p for p in (head, body, summary) if p)


def import_doc(
    store: TenantStore, wanted: Mapping[tuple[str, str], Mapping[str, Any]], dry_run: bool = False, prune: bool = False
) -> ImportResult:
    result = ImportResult(dry_run)
    items: dict[tuple[str, str], dict[str, Any]] = {}
    existing = {(str(i.get("tenant_id")), str(i.get("delivery_id"))): i for i in store.items()}
    profiles = store.profiles()
    for (tenant_id, delivery_id), body in sorted(wanted.items()):
        found = profiles.get(tenant_id)
        try:
            if isinstance(found, TenantConfigError):
                raise TenantConfigError(
                    found.reason, {"tenant_id": f"the tenant profile does not validate: {found.reason}"}
                )
            profile: TenantProfile | None = found
            items[(tenant_id, delivery_id)] = validate_write(
                tenant_id, delivery_id, body, profile, existing.get((tenant_id, delivery_id))
            )
        except TenantConfigError as exc:
            result.invalid[f"{tenant_id}/{delivery_id}"] = exc.fields or {"item": exc.reason}
    if result.invalid:
        return result
    for key, item in items.items():
        have = existing.get(key)
        if have is not None and same_delivery(have, item):
            action = "unchanged"
        elif dry_run:
            action = "would replace" if have is not None else "would create"
        else:
            action = store.put(*key, item).action
        result.lines.append((*key, action))
    if prune:
        for key in sorted(set(existing) - set(items)):
            if not dry_run:
                store.delete(*key)
            result.lines.append((*key, "would delete" if dry_run else "deleted"))
    return result
