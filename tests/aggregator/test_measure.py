"""Percentiles and free ports shared by the benchmarks and the demo."""

from __future__ import annotations

import math
import socket

import pytest

from aggregator.measure import free_port, percentile


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        assert server.getsockname()[1] == port
