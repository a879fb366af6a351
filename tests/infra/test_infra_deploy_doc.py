"""docs/DEPLOY.md (linked from the README) deploys in the order the files depend on."""

from __future__ import annotations

import re

import pytest
from infra_helpers import REPO

DOC = (REPO / "docs" / "DEPLOY.md").read_text()


def first(pattern: str) -> int:
    m = re.search(pattern, DOC)
    assert m, f"DEPLOY.md never does {pattern!r}"
    return m.start()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # the regional and customer stacks need the global role's ARN
        (r"deploy\.sh -t global", r"deploy\.sh -t regional"),
        (r"deploy\.sh -t global", r"deploy\.sh -t customer"),
        # the processor image copies Vector from the collector image; Lambda needs the pushed image
        (r"Containerfile\.collector -t", r"Containerfile\.processor -t"),
        (r"podman push", r"--include-lambda"),
        # the SQS stack reads the core stack's topic; Lambda reads the queue
        (r"deploy\.sh -t regional --central-role-arn \S+\n", r"--include-sqs\n"),
        (r"--include-sqs\n", r"--include-lambda"),
        # IRSA roles attach the core (and SQS) stacks' policies
        (r"--include-lambda", r"deploy\.sh -t cluster"),
        (r"deploy\.sh -t regional", r"deploy\.sh -t replay"),
        # workloads need their IRSA roles
        (r"deploy\.sh -t cluster", r"kubectl apply -k collector/vector/base"),
        (r"deploy\.sh -t cluster", r"kubectl apply -k k8s/consumer"),
        (r"deploy\.sh -t replay", r"kubectl apply -k k8s/kuberay"),
        (r"Containerfile\.ray -t", r"kubectl apply -k k8s/kuberay"),
    ],
)
def test_steps_come_in_dependency_order(before: str, after: str) -> None:
    assert first(before) < first(after)


def test_paths_in_the_doc_exist() -> None:
    paths = set(re.findall(r"\b((?:infra|collector|k8s|containers)/[\w./-]+[\w])", DOC))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing


def test_deploy_script_flags_in_the_doc_are_real() -> None:
    script = (REPO / "infra" / "cloudformation" / "deploy.sh").read_text()
    commands = re.findall(r"deploy\.sh (?:[^\n]*\\\n)*[^\n]*", DOC)
    flags = {f for c in commands for f in re.findall(r"(?<!\S)(-[a-z]|--[a-z-]+)\b", c)}
    assert {"-t", "--central-role-arn", "--include-sqs", "--include-lambda", "--cluster-name"} <= flags
    for flag in flags:
        assert re.search(rf"(\s|\|){re.escape(flag)}[|)]", script), f"deploy.sh has no {flag}"
