"""The 2030.5 client's state file: a restarted client neither re-sends a Response nor
re-creates its MirrorUsagePoint, and still sends what it owed.

Server and clients share the simulated clock of ``test_loopback`` (moved by hand).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.ieee2030_5.client import Sep2Client, SiteTelemetry
from adapters.ieee2030_5.config import ClientConfig, Sep2ConfigError
from adapters.ieee2030_5.controls import ResponseLog, ResponseStatus
from adapters.ieee2030_5.loopback import LoopbackServer, site_lfdi
from adapters.ieee2030_5.state import FORMAT, SavedSite, Sep2StateError, decode, encode, load
from adapters.state_file import read_json, write_json
from aggregator.constraints import ConstraintBook

from .test_loopback import SIM_START, SITES, SimClock
from .test_loopback import responses as sent

R = ResponseStatus


def rsp_path(server: LoopbackServer, site: str) -> str:
    return f"{server.end_device(site)}/rsps/site_control/rsp"


def test_a_restarted_client_resumes_from_its_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "state" / "sep2.json"
    clock = SimClock()
    samples: dict[str, SiteTelemetry] = {}

    async def main() -> None:
        server = LoopbackServer(clock=clock)
        await server.start()
        config = ClientConfig.from_mapping(server.client_settings(
            SITES, min_poll_s=1, post_rate_s=60, state_file=str(state_file)))

        clients: list[Sep2Client] = []

        def client() -> Sep2Client:
            clients.append(Sep2Client(config, ConstraintBook(started_at=clock.now),
                                      clock=clock, telemetry=samples.get))
            return clients[-1]

        try:
            first = client()
            running = server.set_import_limit("depot", clock.now, 600, 9_000)
            assert (await first.poll_once()).ok
            assert sent(server, "depot") == [(running, R.RECEIVED), (running, R.STARTED)]
            samples["depot"] = SiteTelemetry(power_w=4200, import_wh=10, export_wh=0,
                                             at=clock.now)
            assert await first.post_readings_once() == {"depot": True}
            assert len(server.posts("/mup")) == 1
            mup_href = first.sites["depot"].mup_href
            assert mup_href is not None
            # a second control, after the first, whose Responses the server refuses
            start = clock.now
            clock.advance(10)
            owed = server.set_import_limit("depot", start + timedelta(seconds=630), 60,
                                           5_000)
            server.faults[rsp_path(server, "depot")] = "error"  # 400 with an <Error>
            assert (await first.poll_once()).responses_sent == 0
            refused = len(server.posts(rsp_path(server, "depot")))
            assert refused == 3
            saved = json.loads(state_file.read_text())
            depot = saved["sites"]["depot"]
            assert depot["mup_href"] == mup_href and depot["lfdi"] == site_lfdi("depot")
            assert sorted(map(tuple, depot["responses_sent"])) == sorted(
                [(running, R.RECEIVED), (running, R.STARTED)])
            assert set(depot["first_seen"]) == {running, owed}
            await first.close()  # the process ends

            # restarted after both ended
            del server.faults[rsp_path(server, "depot")]
            clock.advance(700)
            second = client()
            assert second.sites["depot"].mup_href == mup_href
            assert (await second.poll_once()).ok
            after = sent(server, "depot", refused)
            assert sorted(after) == sorted([(running, R.COMPLETED), (owed, R.RECEIVED),
                                            (owed, R.STARTED), (owed, R.COMPLETED)])
            # (without the file: "received late" for both, and no Started / Completed)
            samples["depot"] = SiteTelemetry(power_w=3900, import_wh=20, export_wh=0,
                                             at=clock.now)
            assert await second.post_readings_once() == {"depot": True}
            assert len(server.posts("/mup")) == 1  # not created again
            assert len(server.posts(mup_href)) == 1  # the readings went to the saved one
            before = len(server.requests)
            assert (await second.poll_once()).responses_sent == 0
            assert [seen for seen in server.requests[before:] if seen.method == "POST"] == []
        finally:
            for each in clients:
                await each.close()
            await server.stop()
    asyncio.run(main())


@pytest.mark.parametrize(("content", "field"), [
    (b"{not json", None),
    (b'{"format": "other/1"}', "format"),
    (json.dumps({"format": FORMAT, "server_url": "", "sites": {}}).encode(), "server_url"),
    (json.dumps({"format": FORMAT, "server_url": "URL", "sites": []}).encode(), "sites"),
    (json.dumps({"format": FORMAT, "server_url": "URL", "sites": {"depot": {
        "lfdi": "LFDI", "responses_sent": [["A" * 32, "one"]]}}}).encode(),
     "sites.depot.responses_sent[0]"),
    (json.dumps({"format": FORMAT, "server_url": "URL", "sites": {"depot": {
        "lfdi": "LFDI", "first_seen": {"A" * 32: "yesterday"}}}}).encode(),
     f"sites.depot.first_seen.{'A' * 32}"),
    (json.dumps({"format": FORMAT, "server_url": "URL", "sites": {"depot": {
        "lfdi": "LFDI", "mup_href": 5}}}).encode(), "sites.depot.mup_href"),
    (json.dumps({"format": FORMAT, "server_url": "URL", "sites": {"depot": {
        "lfdi": "xyz"}}}).encode(), "sites.depot.lfdi"),
])
def test_a_bad_state_file_is_logged_by_field_and_the_client_starts_clean(
        content: bytes, field: str | None, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state_file = tmp_path / "sep2.json"
    clock = SimClock()

    async def main() -> None:
        server = LoopbackServer(clock=clock)
        url = await server.start()
        lfdi = site_lfdi("depot")
        state_file.write_bytes(content.replace(b'"URL"', json.dumps(url).encode())
                               .replace(b'"LFDI"', json.dumps(lfdi).encode()))
        config = ClientConfig.from_mapping(server.client_settings(
            {"depot": SITES["depot"]}, min_poll_s=1, state_file=str(state_file)))
        try:
            with caplog.at_level(logging.ERROR, logger="adapters.ieee2030_5.state"):
                client = Sep2Client(config, ConstraintBook(started_at=clock.now), clock=clock)
            (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert str(state_file) in record.getMessage()
            if field is not None:
                assert f": {field}: " in record.getMessage(), record.getMessage()
            assert client.sites["depot"].response_log == ResponseLog()
            mrid = server.set_import_limit("depot", clock.now, 600, 9_000)
            assert (await client.poll_once()).ok  # it runs, and writes a good file
            assert sent(server, "depot") == [(mrid, R.RECEIVED), (mrid, R.STARTED)]
            _, saved = decode(read_json(state_file))
            assert saved["depot"].response_log.sent == {(mrid, R.RECEIVED), (mrid, R.STARTED)}
            await client.close()
        finally:
            await server.stop()
    asyncio.run(main())


def test_state_of_another_server_or_site_is_not_applied(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sep2.json"
    log = ResponseLog(frozenset({("A" * 32, 1)}), {"A" * 32: SIM_START})
    lfdis = {"depot": site_lfdi("depot"), "fleet": site_lfdi("fleet")}
    write_json(path, encode("https://dso.example", {
        "depot": SavedSite(lfdis["depot"], log, "/mup/2"),
        "fleet": SavedSite("0" * 40, log, "/mup/3"),
        "gone": SavedSite("1" * 40, log, None)}))
    assert load(path, "https://dso.example", lfdis) == {
        "depot": SavedSite(lfdis["depot"], log, "/mup/2")}  # fleet's LFDI changed
    with caplog.at_level(logging.WARNING, logger="adapters.ieee2030_5.state"):
        assert load(path, "https://other.example", lfdis) == {}
    assert "is for server https://dso.example" in caplog.text
    assert load(tmp_path / "missing.json", "https://dso.example", lfdis) == {}
    url, decoded = decode(encode("https://dso.example",
                                 {"depot": SavedSite(lfdis["depot"], log, None)}))
    assert url == "https://dso.example" and decoded["depot"].response_log == log
    with pytest.raises(Sep2StateError) as caught:
        decode([])
    assert caught.value.field == "(root)"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json(path, {"n": 1})
    with pytest.raises(TypeError):
        write_json(path, {"n": object()})  # not JSON: fails half-way through the dump
    assert read_json(path) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert read_json(tmp_path / "none.json") is None


def test_state_file_and_concurrency_settings_name_their_field() -> None:
    base: dict[str, Any] = {"server_url": "http://127.0.0.1:1", "allow_plain_http": True,
                            "sites": {"a": {"node_id": "n", "lfdi": "a" * 40}}}
    config = ClientConfig.from_mapping(base)
    assert config.state_file is None and config.max_concurrency == 8
    assert ClientConfig.from_mapping({**base, "state_file": "x/s.json"}).state_file == \
        Path("x/s.json")
    for key, value in (("state_file", 5), ("state_file", ""), ("max_concurrency", 0),
                       ("max_concurrency", 65), ("max_concurrency", True)):
        with pytest.raises(Sep2ConfigError) as caught:
            ClientConfig.from_mapping({**base, key: value})
        assert caught.value.field == f"ieee2030_5.{key}"
