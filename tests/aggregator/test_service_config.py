"""The service configuration: the shipped example loads; every bad value names its field."""

from __future__ import annotations

import contextlib
import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.model import ModelError, OcppVersion
from aggregator.service_config import (
    ServiceConfigError,
    load_service_config,
    service_config_from_mapping,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "scenarios" / "service.example.toml"


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_shipped_example_loads_with_its_stations_evses_and_adapters() -> None:
    config = load_service_config(EXAMPLE)
    assert [s.station_id for s in config.stations] == ["office-cs1", "office-v2g"]
    assert config.station_versions["office-v2g"] is OcppVersion.V21
    v2g = config.tree.evse("office-3")
    assert v2g.v2g_capable and v2g.max_export_kw == 11 and v2g.ocpp_version is OcppVersion.V21
    assert config.evses[("office-cs1", 2)].evse_id == "office-2"
    assert config.controller.interval.total_seconds() == 900
    assert config.openadr is not None and config.openadr.default_nodes == ("office",)
    assert config.safe_defaults[0].import_max_kw == 22


def edit(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(example())
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "field"), [
    (("controller", "debounce_s"), -1, "controller.debounce_s"),
    (("controller", "method"), "fastest", "controller.method"),
    (("controller", "colour"), "red", "controller.colour"),
    (("ocpp", "stations", 0, "version"), "3.0", "ocpp.stations[0].version"),
    (("ocpp", "stations", 0, "evses", 0, "max_import_kw"), "eleven",
     "ocpp.stations[0].evses[0].max_import_kw"),
    (("ocpp", "stations", 0, "evses", 1, "number"), 1, "ocpp.stations[0].evses[1].number"),
    (("ocpp", "stations", 0, "evses", 0, "v2g"), True, "ocpp.stations[0].evses[0].v2g_capable"),
    (("ocpp", "stations", 0, "evses", 0, "node"), "nowhere", "nodes.node_id"),
    (("safe_defaults", 0, "node"), "nowhere", "safe_defaults[0].node"),
    (("safe_defaults", 0, "import_max_kw"), KeyError, "safe_defaults[0].import_max_kw"),
    (("openadr", "default_nodes"), ["nowhere"], "openadr"),
    (("openadr", "vtn_url"), "ftp://x", "openadr.vtn_url"),
    (("service", "api_port"), 70000, "service.api_port"),
    (("nodes",), [], "nodes"),
])
def test_a_bad_value_is_refused_naming_its_field(path: tuple[Any, ...], value: Any,
                                                 field: str) -> None:
    with pytest.raises(ModelError) as caught:
        service_config_from_mapping(edit(path, value))
    assert str(caught.value).startswith(field), str(caught.value)


def test_an_unreadable_or_broken_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[service\nledger_url = 1")
    with pytest.raises(ServiceConfigError, match="not valid TOML"):
        load_service_config(broken)
    with pytest.raises(ServiceConfigError, match="cannot read"):
        load_service_config(tmp_path / "missing.toml")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["service", "nodes", "ocpp", "stations", "evses", "id",
                                         "controller", "number", "node", "kind", "x"]),
                        inner, max_size=4), max_leaves=12))
def test_arbitrary_tables_are_refused_with_a_model_error_never_a_crash(data: Any) -> None:
    if not isinstance(data, dict):
        data = {"nodes": data}
    with contextlib.suppress(ModelError):
        service_config_from_mapping(data)


def test_an_ied_takes_its_references_from_an_scl_file_next_to_the_config(
        tmp_path: Path) -> None:
    import shutil

    import tomli_w

    cid = Path(__file__).resolve().parents[1] / "peers" / "iec61850" / "gateway.cid"
    shutil.copy(cid, tmp_path / "gateway.cid")
    data = example()
    data["iec61850"] = {"ieds": [{"name": "gw", "port": 10102, "node_id": "office",
                                  "scl": "gateway.cid", "ied_name": "GW"}]}
    path = tmp_path / "service.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_service_config(path)
    assert config.iec61850 is not None
    (ied,) = config.iec61850.ieds
    assert (ied.host, ied.domain) == ("127.0.0.1", "GWEVSE1")
    assert str(ied.limit.value) == "DESE1.ChaPwrLim.setMag.f[SP]"
    shutil.move(str(path), str(tmp_path.parent / f"{tmp_path.name}-moved.toml"))
    with pytest.raises(ModelError, match="scl"):  # relative to the file, not to the cwd
        load_service_config(tmp_path.parent / f"{tmp_path.name}-moved.toml")
