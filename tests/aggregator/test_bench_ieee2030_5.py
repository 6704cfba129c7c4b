"""``gridflex bench ieee2030_5``: one JSON line per size against the loopback server.

No timing is asserted: only that every line has its keys, that the walk did its work
(every site limited, every Response sent once) and that the ratios follow from the figures.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggregator.bench_ieee2030_5 import bench_ieee2030_5

KEYS = {"bench", "sites", "walk_s", "poll_s", "walk_cpu_s", "poll_cpu_s", "walk_s_per_site",
        "poll_s_per_site", "walk_requests", "poll_requests", "walk_connections",
        "poll_connections", "responses_walk", "responses_poll", "sites_limited",
        "server_share_walk", "server_share_poll", "baseline", "one_site_walk_s",
        "ratio_to_one_site", "raw_get_s", "ratio_to_raw_gets", "setup_s", "page_size",
        "max_concurrency", "state_file", "latency_ms"}


def rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_line_per_size_with_ratios_to_the_baselines(
        capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_ieee2030_5([2, 5], True, page_size=2, concurrency=2, raw_gets=5)
    out = capsys.readouterr().out
    assert status == 0, out
    lines = rows(out)
    assert [row["sites"] for row in lines] == [2, 5]
    assert "x 1 site" not in out  # json only: no table
    for row in lines:
        assert set(row) >= KEYS, sorted(KEYS - set(row))
        n = row["sites"]
        assert row["bench"] == "ieee2030_5" and row["sites_limited"] == n
        assert row["responses_walk"] == 2 * n and row["responses_poll"] == 0  # received,
        # started; nothing new on the second poll
        # dcap, tm, ceil((n)/2) EndDeviceList pages, then per site the same resources
        per_site = (row["poll_requests"] - 2 - -(-n // 2)) / n
        assert per_site == int(per_site) and per_site > 0
        assert row["walk_requests"] == row["poll_requests"] + 2 * n
        assert 1 <= row["walk_connections"] <= 2 and 1 <= row["poll_connections"] <= 2
        assert row["walk_s_per_site"] == pytest.approx(row["walk_s"] / n, rel=1e-3, abs=1e-6)
        assert row["ratio_to_one_site"] == pytest.approx(
            row["walk_s_per_site"] / row["one_site_walk_s"], rel=0.01, abs=0.002)
        assert row["ratio_to_raw_gets"] == pytest.approx(
            row["walk_s"] / (row["walk_requests"] * row["raw_get_s"]), rel=0.01, abs=0.002)
        assert 0 <= row["server_share_walk"] <= 1 and 0 <= row["server_share_poll"] <= 1
        assert row["state_file"] is True and row["max_concurrency"] == 2


def test_the_table_follows_the_lines_unless_json_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_ieee2030_5([1], False, state_file=False, raw_gets=3) == 0
    out = capsys.readouterr().out
    (row,) = rows(out)
    assert row["state_file"] is False and row["max_concurrency"] == 8  # the default
    assert "x 1 site" in out.splitlines()[-2]  # the table's header, after the line


@pytest.mark.parametrize("bad", [dict(sizes=[]), dict(sizes=[0]), dict(page_size=0),
                                 dict(concurrency=0), dict(latency_ms=-1)])
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"sizes": [1], **bad}
    sizes = kwargs.pop("sizes")
    with pytest.raises(ValueError):
        bench_ieee2030_5(sizes, True, **kwargs)
