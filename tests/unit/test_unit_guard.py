"""The guard of tests/conftest.py: inside a unit test, starting a moto server or a Ray node fails at once."""

from __future__ import annotations

import pytest

from devstack.localray import LocalRay
from devstack.server import MotoServer


def test_a_unit_test_cannot_start_a_moto_server() -> None:
    with pytest.raises(AssertionError, match="must not start moto or Ray"):
        MotoServer().start()


def test_a_unit_test_cannot_start_a_ray_node() -> None:
    with pytest.raises(AssertionError, match="must not start moto or Ray"):
        LocalRay({}).start_head()


def test_unit_tests_carry_the_unit_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
