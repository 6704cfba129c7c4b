"""What the 2030.5 client must remember across restarts: per site, the Responses already
sent (and when each event was first seen) and its MirrorUsagePoint href.

Without it a restarted client re-sends Responses, answers a running event "received late"
and POSTs a second MirrorUsagePoint.  The file is JSON, written atomically
(:mod:`adapters.state_file`); it belongs to one server (``server_url``) and each site entry
to one LFDI, so a changed configuration starts clean rather than applying a stale log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.ieee2030_5.controls import ResponseLog
from adapters.state_file import read_json, write_json
from aggregator.model import ModelError, parse_utc

log = logging.getLogger(__name__)

FORMAT = "gridflex-ieee2030_5-state/1"


class Sep2StateError(ModelError):
    """The state file holds a bad value; ``field`` is its path in the file."""


@dataclass(frozen=True, slots=True)
class SavedSite:
    """One site's durable state: keyed by its LFDI (lower-case hex)."""

    lfdi: str
    response_log: ResponseLog
    mup_href: str | None = None


def encode(server_url: str, sites: Mapping[str, SavedSite]) -> dict[str, Any]:
    """The JSON document for ``sites`` (site name -> state)."""
    return {"format": FORMAT, "server_url": server_url, "sites": {
        name: {"lfdi": site.lfdi, "mup_href": site.mup_href,
               "responses_sent": sorted([mrid, status]
                                        for mrid, status in site.response_log.sent),
               "first_seen": {mrid: at.isoformat() for mrid, at
                              in sorted(site.response_log.first_seen.items())}}
        for name, site in sorted(sites.items())}}


def decode(data: Any) -> tuple[str, dict[str, SavedSite]]:
    """``(server_url, sites)`` of a document; :class:`Sep2StateError` names a bad field."""
    if not isinstance(data, dict):
        raise Sep2StateError("(root)", f"expected an object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise Sep2StateError("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    server_url = data.get("server_url")
    if not isinstance(server_url, str) or not server_url:
        raise Sep2StateError("server_url", "required, a non-empty string")
    table = data.get("sites")
    if not isinstance(table, dict):
        raise Sep2StateError("sites", "expected an object of site name -> state")
    return server_url, {str(name): _site(raw, f"sites.{name}") for name, raw in table.items()}


def _site(raw: Any, where: str) -> SavedSite:
    if not isinstance(raw, dict):
        raise Sep2StateError(where, "expected an object")
    lfdi = raw.get("lfdi")
    if not isinstance(lfdi, str) or len(lfdi) != 40:
        raise Sep2StateError(f"{where}.lfdi", f"expected 40 hex digits, got {lfdi!r}")
    mup = raw.get("mup_href")
    if mup is not None and (not isinstance(mup, str) or not mup):
        raise Sep2StateError(f"{where}.mup_href", f"expected an href or null, got {mup!r}")
    sent_raw = raw.get("responses_sent", [])
    if not isinstance(sent_raw, list):
        raise Sep2StateError(f"{where}.responses_sent", "expected a list of [mRID, status]")
    sent: set[tuple[str, int]] = set()
    for index, item in enumerate(sent_raw):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and item[0] and isinstance(item[1], int) and not isinstance(item[1], bool)
                and 0 <= item[1] <= 255):
            raise Sep2StateError(f"{where}.responses_sent[{index}]",
                                 f"expected [mRID, status 0..255], got {item!r}")
        sent.add((item[0], item[1]))
    seen_raw = raw.get("first_seen", {})
    if not isinstance(seen_raw, dict):
        raise Sep2StateError(f"{where}.first_seen", "expected an object of mRID -> time")
    first_seen: dict[str, datetime] = {}
    for mrid, value in seen_raw.items():
        try:
            first_seen[str(mrid)] = parse_utc(value, f"{where}.first_seen.{mrid}")
        except ValueError as exc:
            raise Sep2StateError(f"{where}.first_seen.{mrid}", str(exc).split(": ", 1)[-1]) \
                from None
    return SavedSite(lfdi.lower(), ResponseLog(frozenset(sent), first_seen), mup)


def load(path: Path, server_url: str, lfdis: Mapping[str, str]) -> dict[str, SavedSite]:
    """The saved state of the configured sites (name -> LFDI); {} when there is none.

    A missing file is a first start.  An unreadable or bad file is logged as an error naming
    the field and the client starts clean (it must not stop the service); so is a file of
    another server.  A site whose LFDI changed starts clean on its own.
    """
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        log.error("ieee2030_5: state file %s unreadable (%s); starting without it: Responses "
                  "may be sent again and MirrorUsagePoints created again", path, exc)
        return {}
    if data is None:
        return {}
    try:
        saved_url, sites = decode(data)
    except Sep2StateError as exc:
        log.error("ieee2030_5: state file %s: %s; starting without it: Responses may be "
                  "sent again and MirrorUsagePoints created again", path, exc)
        return {}
    if saved_url != server_url:
        log.warning("ieee2030_5: state file %s is for server %s, not %s; starting without it",
                    path, saved_url, server_url)
        return {}
    found: dict[str, SavedSite] = {}
    for name, site in sites.items():
        if name not in lfdis:
            continue  # a site no longer configured
        if site.lfdi != lfdis[name].lower():
            log.warning("ieee2030_5: state file %s: site %s had LFDI %s, now %s; its saved "
                        "state is dropped", path, name, site.lfdi, lfdis[name])
            continue
        found[name] = site
    return found


def save(path: Path, server_url: str, sites: Mapping[str, SavedSite]) -> None:
    """Write the state of ``sites`` to ``path`` atomically."""
    write_json(path, encode(server_url, sites))
