"""Delivery options (CONTRACTS.md §3) without AWS: validation words, group expansion, content filters in prepare()."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.filters import content_filter, pattern_problem
from pipeline.sinks.cloudwatch.limits import prepare
from pipeline.tenants import APPLICATION_GROUPS, TenantConfigError, delivery_item, parse_delivery

BASE = {
    "tenant_id": "acme",
    "delivery_id": "cw",
    "type": "cloudwatch",
    "log_distribution_role_arn": "arn:aws:iam::111111111111:role/r",
    "target_region": "us-east-1",
    "log_group_name": "/logs/acme",
    "clusters": ["prod-1"],
}


def refused(**changes: Any) -> dict[str, str]:
    with pytest.raises(TenantConfigError) as info:
        parse_delivery({**BASE, **changes}, strict=True)
    return info.value.fields


def test_defaults_keep_todays_behaviour() -> None:
    d = parse_delivery(BASE)
    assert (d.format, d.include, d.exclude, d.retention_days, d.groups) == ("original", (), (), None, ())
    assert d.content_filter is None and not d.decodes and d.applications is None
    assert delivery_item(d) == {**BASE, "enabled": True}


def test_groups_expand_with_desired_logs_and_round_trip() -> None:
    d = parse_delivery({**BASE, "groups": ["controller manager", "API"], "desired_logs": ["Web"]})
    assert d.groups == ("API", "Controller Manager")
    assert d.applications == {"web", *APPLICATION_GROUPS["API"], *APPLICATION_GROUPS["Controller Manager"]}
    assert d.wants("KUBE-APISERVER") and d.wants("web") and not d.wants("kube-scheduler")
    again = parse_delivery(delivery_item(d))
    assert again == d and again.applications == d.applications


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"groups": ["Databases"]}, "groups", "unknown group 'Databases'"),
        ({"groups": 3}, "groups", "must be a list of names"),
        ({"retention_days": 8}, "retention_days", "is not a retention CloudWatch accepts"),
        ({"retention_days": 7.5}, "retention_days", "is not a retention CloudWatch accepts"),
        ({"format": "parquet"}, "format", "only s3 deliveries have a format"),
        ({"include": ["(a)\\1"]}, "include", "backreferences and lookaround"),
        ({"exclude": ["(?!x)"]}, "exclude", "unbounded"),
        ({"include": ["["]}, "include", "missing ]"),
        ({"include": ["x"] * 33}, "include", "at most 32"),
        ({"include": {"a": 1}}, "include", "must be a list of regular expressions"),
    ],
)
def test_hostile_options_are_refused_naming_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    assert words in refused(**changes)[field]


def test_s3_only_and_cloudwatch_only_options() -> None:
    s3 = {**BASE, "type": "s3", "bucket_name": "acme-logs"}
    del s3["log_group_name"]
    assert parse_delivery({**s3, "format": "parquet"}).decodes
    with pytest.raises(TenantConfigError) as info:
        parse_delivery({**s3, "retention_days": 7})
    assert "only cloudwatch deliveries have a retention" in info.value.fields["retention_days"]
    assert parse_delivery({**BASE, "retention_days": 3653}).retention_days == 3653


def test_nested_quantifiers_run_in_linear_time_under_re2() -> None:
    assert pattern_problem("(a+)+$") == ""
    keep = content_filter(("(a+)+$",), ())
    assert keep is not None and not keep.keeps("a" * 200_000 + "!")  # Python's re would not return


WORDS = st.sampled_from(["ERROR", "WARN", "info", "debug", "took 5ms", "GET /healthz", "ünïcode", ""])
MESSAGES = st.lists(st.lists(WORDS, max_size=4).map(" ".join), max_size=40)
PATTERNS = st.lists(
    st.sampled_from(["ERROR", "WARN|ERROR", "^GET", r"\d+ms", "(?i)debug", "healthz$", "ü"]), max_size=3
)


@settings(max_examples=200, deadline=None)
@given(MESSAGES, PATTERNS, PATTERNS)
def test_prepare_keeps_exactly_what_the_patterns_keep_and_counts_the_rest(
    messages: list[str], include: list[str], exclude: list[str]
) -> None:
    now = 1_700_000_000_000
    events = [(now - i, m) for i, m in enumerate(messages)]
    keep = content_filter(tuple(include), tuple(exclude))

    def kept(m: str) -> bool:  # Python's engine agrees with RE2 on these patterns
        return (not include or any(re.search(p, m) for p in include)) and not any(re.search(p, m) for p in exclude)

    out = prepare(list(events), now, keep=keep)
    want = sorted(e for e in events if kept(e[1]))
    assert sorted(out.events) == want
    assert out.events_filtered == out.events_filtered_content == len(events) - len(want)
