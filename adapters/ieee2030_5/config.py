"""The IEEE 2030.5 aggregator client's configuration: server, TLS files, sites and rates.

Built from a plain mapping (a TOML table of the service configuration); every problem is a
:class:`Sep2ConfigError` naming the dotted field, so an operator knows what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from adapters.ieee2030_5.controls import SiteNodes
from adapters.ieee2030_5.identity import IdentityError, lfdi, sfdi_from_lfdi, sfdi_is_valid
from adapters.ieee2030_5.xml import DEFAULT_MAX_BODY_BYTES
from aggregator.config_fields import FieldReader
from aggregator.model import ModelError

_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_HEX_CATEGORY = re.compile(r"[0-9a-fA-F]{1,8}")


class Sep2ConfigError(ModelError):
    """A configuration value is wrong; ``field`` is its dotted path."""


_fields = FieldReader(Sep2ConfigError)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One site the aggregator represents as an EndDevice of the utility server.

    ``lfdi`` is lower-case hex (from the config or the site's certificate); ``nmi`` is the
    connection point id PUT after registration; ``device_category`` the hex bitmap sent.
    """

    name: str
    nodes: SiteNodes
    lfdi: str
    sfdi: int
    nmi: str | None = None
    device_category: str = "0"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the client needs; see :meth:`from_mapping` for the accepted keys.

    ``dcap_path`` is the one entry point: every other resource is found by following hrefs.
    ``poll_rate_s`` / ``post_rate_s`` override the server's pollRate / postRate when set.
    ``default_ttl_s`` bounds how long DefaultDERControl-derived limits outlive a lost link.
    ``max_concurrency`` bounds the requests in flight (the sites are walked concurrently).
    ``state_file`` keeps the Responses sent and the MirrorUsagePoint hrefs across restarts
    (None: in memory only).
    """

    server_url: str
    sites: Mapping[str, SiteConfig]
    dcap_path: str = "/dcap"
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    allow_plain_http: bool = False
    request_timeout_s: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    page_size: int = 50
    max_list_items: int = 1000
    poll_rate_s: float | None = None
    post_rate_s: float | None = None
    min_poll_s: float = 10.0
    horizon_s: float = 86_400.0
    default_ttl_s: float = 900.0
    priority: int = 0
    max_concurrency: int = 8
    state_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return urlparse(self.server_url).scheme == "https"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *,
                     prefix: str = "ieee2030_5") -> ClientConfig:
        """Validate a configuration table and build the config (errors name the field)."""
        table = _fields.table(data, prefix)
        known = {"server_url", "dcap_path", "cert_file", "key_file", "ca_file",
                 "allow_plain_http", "request_timeout_s", "max_body_bytes", "page_size",
                 "max_list_items", "poll_rate_s", "post_rate_s", "min_poll_s", "horizon_s",
                 "default_ttl_s", "priority", "max_concurrency", "state_file", "sites"}
        _fields.no_unknown(table, known, prefix)
        url = _fields.text(table, "server_url", prefix).rstrip("/")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise Sep2ConfigError(f"{prefix}.server_url", f"must be an http(s) URL, got {url!r}")
        if parsed.query or parsed.fragment:
            raise Sep2ConfigError(f"{prefix}.server_url", "must not have a query or fragment")
        plain = _fields.flag(table, "allow_plain_http", prefix, False)
        cert, key, ca = (_fields.path(table, name, prefix) for name in ("cert_file", "key_file",
                                                                 "ca_file"))
        if parsed.scheme == "http" and not plain:
            raise Sep2ConfigError(f"{prefix}.server_url", "IEEE 2030.5 needs https (mutual "
                                                          "TLS); plain http only with "
                                                          "allow_plain_http = true (tests)")
        if parsed.scheme == "https":
            for name, value in (("cert_file", cert), ("key_file", key), ("ca_file", ca)):
                if value is None:
                    raise Sep2ConfigError(f"{prefix}.{name}", "required for https (mutual TLS "
                                                              "with the server's CA)")
        dcap = table.get("dcap_path", "/dcap")
        if not isinstance(dcap, str) or not dcap.startswith("/"):
            raise Sep2ConfigError(f"{prefix}.dcap_path", f"must be a path starting with '/', "
                                                         f"got {dcap!r}")
        sites = _sites(table.get("sites"), f"{prefix}.sites")
        return cls(
            server_url=url, sites=sites, dcap_path=dcap, cert_file=cert, key_file=key,
            ca_file=ca, allow_plain_http=plain,
            request_timeout_s=_number(table, "request_timeout_s", prefix, 30.0, minimum=0.1),
            max_body_bytes=_integer(table, "max_body_bytes", prefix, DEFAULT_MAX_BODY_BYTES,
                                    minimum=1024),
            page_size=_integer(table, "page_size", prefix, 50, minimum=1, maximum=255),
            max_list_items=_integer(table, "max_list_items", prefix, 1000, minimum=1),
            poll_rate_s=_optional_number(table, "poll_rate_s", prefix, minimum=1.0),
            post_rate_s=_optional_number(table, "post_rate_s", prefix, minimum=1.0),
            min_poll_s=_number(table, "min_poll_s", prefix, 10.0, minimum=0.0),
            horizon_s=_number(table, "horizon_s", prefix, 86_400.0, minimum=60.0),
            default_ttl_s=_number(table, "default_ttl_s", prefix, 900.0, minimum=1.0),
            priority=_integer(table, "priority", prefix, 0, minimum=-1_000_000),
            max_concurrency=_integer(table, "max_concurrency", prefix, 8, minimum=1,
                                     maximum=64),
            state_file=_fields.path(table, "state_file", prefix),
        )


def _sites(value: Any, where: str) -> dict[str, SiteConfig]:
    table = _fields.table(value, where)
    if not table:
        raise Sep2ConfigError(where, "configure at least one site")
    sites: dict[str, SiteConfig] = {}
    seen_lfdi: dict[str, str] = {}
    for name, raw in table.items():
        here = f"{where}.{name}"
        site = _site(str(name), _fields.table(raw, here), here)
        if site.lfdi in seen_lfdi:
            raise Sep2ConfigError(f"{here}.lfdi", f"same LFDI as site {seen_lfdi[site.lfdi]!r}")
        seen_lfdi[site.lfdi] = site.name
        sites[site.name] = site
    return sites


def _site(name: str, table: Mapping[str, Any], where: str) -> SiteConfig:
    _fields.no_unknown(table, {"node_id", "evses", "lfdi", "sfdi", "cert_file", "nmi",
                        "device_category", "fixed_w_charge_basis_kw",
                        "fixed_w_discharge_basis_kw"}, where)
    node_id = _fields.text(table, "node_id", where)
    evses = table.get("evses", [])
    if isinstance(evses, str) or not isinstance(evses, list | tuple):
        raise Sep2ConfigError(f"{where}.evses", "must be a list of EVSE node ids")
    for index, evse in enumerate(evses):
        if not isinstance(evse, str) or not evse:
            raise Sep2ConfigError(f"{where}.evses[{index}]", "must be a non-empty string")
    given_lfdi, cert = table.get("lfdi"), _fields.path(table, "cert_file", where)
    if (given_lfdi is None) == (cert is None):
        raise Sep2ConfigError(f"{where}.lfdi", "give exactly one of lfdi and cert_file")
    if given_lfdi is not None:
        if not isinstance(given_lfdi, str) or not _HEX40.fullmatch(given_lfdi):
            raise Sep2ConfigError(f"{where}.lfdi", f"must be 40 hex digits, got {given_lfdi!r}")
        site_lfdi = given_lfdi.lower()
    else:
        assert cert is not None
        try:
            site_lfdi = lfdi(cert.read_bytes())
        except (OSError, IdentityError) as exc:
            raise Sep2ConfigError(f"{where}.cert_file", str(exc)) from None
    site_sfdi = table.get("sfdi", sfdi_from_lfdi(site_lfdi))
    if isinstance(site_sfdi, bool) or not isinstance(site_sfdi, int) \
            or not sfdi_is_valid(site_sfdi) or site_sfdi != sfdi_from_lfdi(site_lfdi):
        raise Sep2ConfigError(f"{where}.sfdi", f"{site_sfdi!r} is not the SFDI of LFDI "
                                               f"{site_lfdi} ({sfdi_from_lfdi(site_lfdi)})")
    nmi = table.get("nmi")
    if nmi is not None and (not isinstance(nmi, str) or not 0 < len(nmi) <= 32):
        raise Sep2ConfigError(f"{where}.nmi", "must be a string of 1..32 characters")
    category = table.get("device_category", "0")
    if not isinstance(category, str) or not _HEX_CATEGORY.fullmatch(category):
        raise Sep2ConfigError(f"{where}.device_category", f"must be a hex bitmap (e.g. "
                                                          f"'200000'), got {category!r}")
    charge = _optional_number(table, "fixed_w_charge_basis_kw", where, minimum=0.0)
    discharge = _optional_number(table, "fixed_w_discharge_basis_kw", where, minimum=0.0)
    nodes = SiteNodes(site=node_id, evses=tuple(evses), fixed_w_charge_basis_kw=charge,
                      fixed_w_discharge_basis_kw=discharge)
    return SiteConfig(name=name, nodes=nodes, lfdi=site_lfdi, sfdi=site_sfdi, nmi=nmi,
                      device_category=category)


def _optional_number(table: Mapping[str, Any], key: str, where: str, *,
                     minimum: float) -> float | None:
    if table.get(key) is None:
        return None
    return _number(table, key, where, 0.0, minimum=minimum)


def _number(table: Mapping[str, Any], key: str, where: str, default: float, *,
            minimum: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < minimum:
        raise Sep2ConfigError(f"{where}.{key}", f"must be a finite number >= {minimum:g}, "
                                                f"got {value!r}")
    return float(value)


def _integer(table: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int,
             maximum: int | None = None) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise Sep2ConfigError(f"{where}.{key}", f"must be an integer {bound}, got {value!r}")
    return value
