"""The record shape the collector writes (CONTRACTS.md §2), and decoding an object body into events."""

from __future__ import annotations

from typing import Any

# The fields of a Vector record that delivery reads; everything else is Vector's envelope.
MESSAGE_FIELD = "message"
TIMESTAMP_FIELD = "timestamp"


def vector_record(
    message: Any,
    timestamp: str,
    cluster: str,
    tenant: str,
    application: str,
    pod: str,
    container: str = "app",
    stream: str = "stdout",
) -> dict[str, Any]:
    """One record as the collector's kubernetes_logs source plus enrichment transform writes it."""
    return {
        MESSAGE_FIELD: message,
        TIMESTAMP_FIELD: timestamp,
        "stream": stream,
        "source_type": "kubernetes_logs",
        "file": f"/var/log/pods/{tenant}_{pod}_0/{container}/0.log",
        "kubernetes": {
            "pod_namespace": tenant,
            "pod_name": pod,
            "container_name": container,
            "pod_labels": {"app": application},
        },
        "cluster_id": cluster,
        "namespace": tenant,
        "application": application,
        "pod_name": pod,
    }
