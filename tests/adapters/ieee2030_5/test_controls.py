"""The DER event engine: event rules, Responses owed, and translation into grid constraints."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlListResponse,
    DERControlResponse,
    DERProgramResponse,
)
from envoy_schema.server.schema.sep2.response import DERControlResponse as DERControlReply
from envoy_schema.server.schema.sep2.time import TimeResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from sep2tools.events import condense_events
from sep2tools.models import DateTimeInterval, ProgramInfo
from sep2tools.models import DERControl as ToolsControl
from sep2tools.models import DERControlBase as ToolsBase
from sep2tools.models import EventStatus as ToolsStatus

from adapters.ieee2030_5.controls import (
    SOURCE,
    Control,
    DefaultControl,
    Evaluation,
    Program,
    Quantity,
    ResponseStatus,
    SiteNodes,
    control_from_model,
    evaluate,
    program_from_models,
    publish,
    scope_for,
    to_constraints,
)
from adapters.ieee2030_5.loopback import RECORDED
from adapters.ieee2030_5.xml import parse, serialise
from aggregator.constraints import ConstraintBook

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
IMP, EXP, LOAD, GEN = (Quantity.IMPORT_LIMIT, Quantity.EXPORT_LIMIT, Quantity.LOAD_LIMIT,
                       Quantity.GENERATION_LIMIT)
FIXTURES = RECORDED  # the recorded envoy walks shipped with the loopback server
T0 = datetime.fromtimestamp(1795240200, UTC)  # README: the slot in which controls were loaded
R = ResponseStatus


def minutes(value: float) -> datetime:
    return NOW + timedelta(minutes=value)


def control(n: int, start_min: float, duration_min: float, values: dict[Quantity, Any], *,
            created_min: float = -60, status: int = 0, required: int = 3,
            **extra: Any) -> Control:
    """A DERControl with mRID ``n``, times in minutes relative to NOW."""
    fields: dict[str, Any] = dict(
        mrid=f"{n:032X}", creation_time=minutes(created_min), start=minutes(start_min),
        duration_s=int(duration_min * 60), values=values, status=status,
        response_required=required, reply_to="/edev/1/rsps/site_control/rsp",
        href=f"/edev/1/derp/1/derc/{n}")
    fields.update(extra)
    return Control(**fields)


def program(controls: list[Control], *, primacy: int = 2, ident: str = "/edev/1/derp/1",
            default: dict[Quantity, Any] | None = None) -> Program:
    dderc = None if default is None else DefaultControl(default, href=f"{ident}/dderc")
    return Program(ident, primacy, tuple(controls), dderc, "envelopes")


def spans(evaluation: Evaluation, quantity: Quantity) -> list[tuple[float, float, Any, str]]:
    """(start min, end min, value, origin) per piece; origin is the mRID number or "default"."""
    return [((piece.start - NOW) / timedelta(minutes=1), (piece.end - NOW) / timedelta(minutes=1),
             piece.value, "default" if piece.default else str(int(piece.mrid or "0", 16)))
            for piece in evaluation.timeline(quantity)]


def owed(evaluation: Evaluation) -> list[tuple[int, int]]:
    return [(int(response.subject, 16), int(response.status)) for response in evaluation.responses]


# -- event rules ----------------------------------------------------------------------------

def test_scheduled_and_active_events_with_the_default_filling_the_gaps() -> None:
    active = control(1, -10, 60, {IMP: 7000.0})
    scheduled = control(2, 120, 30, {EXP: 1500.0})
    result = evaluate([program([active, scheduled], default={IMP: 15000.0, EXP: 5000.0})],
                      NOW, 4 * HOUR, seed="site-a")
    assert spans(result, IMP) == [(0, 50, 7000.0, "1"), (50, 240, 15000.0, "default")]
    assert spans(result, EXP) == [(0, 120, 5000.0, "default"), (120, 150, 1500.0, "2"),
                                  (150, 240, 5000.0, "default")]
    assert result.value_at(IMP, minutes(49)) == 7000.0
    assert result.value_at(IMP, minutes(240)) is None  # past the horizon
    assert owed(result) == [(1, R.RECEIVED), (1, R.STARTED), (2, R.RECEIVED)]
    assert result.problems == ()


def test_without_a_default_gaps_stay_empty() -> None:
    result = evaluate([program([control(1, 30, 30, {IMP: 7000.0})])], NOW, 2 * HOUR, seed=1)
    assert spans(result, IMP) == [(30, 60, 7000.0, "1")]
    assert spans(result, EXP) == []


def test_a_cancelled_event_stops_at_once() -> None:
    cancelled = control(1, -10, 60, {IMP: 7000.0}, status=2, status_time=minutes(-1))
    result = evaluate([program([cancelled], default={IMP: 15000.0})], NOW, HOUR, seed="s")
    assert spans(result, IMP) == [(0, 60, 15000.0, "default")]
    assert owed(result) == [(1, R.RECEIVED), (1, R.CANCELLED)]


def test_cancelled_with_randomisation_ends_within_the_randomisation_window() -> None:
    running = control(1, -10, 60, {IMP: 7000.0}, status=3, status_time=NOW,
                      randomize_start_s=-120, randomize_duration_s=300)
    not_started = control(2, 30, 60, {EXP: 10.0}, status=3, status_time=NOW,
                          randomize_start_s=120)
    ends = []
    for seed in range(12):
        programs = [program([running, not_started], default={IMP: 15000.0})]
        result = evaluate(programs, NOW, HOUR, seed=seed)
        first = result.timeline(IMP)[0]
        if first.default:  # a draw of 0 s: the cancellation took effect at once
            ends.append(NOW)
        else:
            assert first.mrid == running.mrid and first.start == NOW
            assert NOW < first.end <= NOW + timedelta(seconds=300)  # max(|-120|, |300|)
            assert result.timeline(IMP)[1].default
            ends.append(first.end)
        assert result.timeline(EXP) == ()  # cancelled before it started: never runs
        assert owed(result) == [(1, R.RECEIVED), (1, R.CANCELLED), (2, R.RECEIVED),
                                (2, R.CANCELLED)]
        assert evaluate(programs, NOW, HOUR, seed=seed).timeline(IMP) == result.timeline(IMP)
    assert len(set(ends)) > 6  # the seed matters
    assert ends[:3] == [NOW + timedelta(seconds=240), NOW + timedelta(seconds=195),
                        NOW + timedelta(seconds=224)]  # fixed by the seeds, run after run


def test_an_event_superseded_by_the_server_never_runs() -> None:
    superseded = control(1, -10, 60, {IMP: 6000.0, EXP: 3000.0}, status=4)
    result = evaluate([program([superseded], default={IMP: 15000.0})], NOW, HOUR, seed="s")
    assert spans(result, IMP) == [(0, 60, 15000.0, "default")]
    assert owed(result) == [(1, R.RECEIVED), (1, R.SUPERSEDED)]


def test_a_newer_overlapping_event_with_the_same_controls_supersedes_the_older() -> None:
    older = control(1, 0, 120, {IMP: 7000.0, EXP: 2000.0}, created_min=-60)
    newer = control(2, 60, 30, {IMP: 5000.0, EXP: 1000.0}, created_min=-30)
    programs = [program([older, newer], default={IMP: 15000.0, EXP: 5000.0})]
    result = evaluate(programs, NOW, 3 * HOUR, seed="s")
    assert spans(result, IMP) == [(0, 60, 7000.0, "1"), (60, 90, 5000.0, "2"),
                                  (90, 180, 15000.0, "default")]  # the older does not resume
    assert owed(result) == [(1, R.RECEIVED), (1, R.STARTED), (2, R.RECEIVED)]
    later = evaluate(programs, minutes(61), HOUR, seed="s", log=result.log.with_sent(
        *result.responses))
    assert owed(later) == [(1, R.SUPERSEDED), (2, R.STARTED)]


def test_a_newer_event_fully_covering_an_older_one_replaces_it_entirely() -> None:
    older = control(1, 30, 30, {IMP: 7000.0}, created_min=-60)
    newer = control(2, 0, 120, {IMP: 5000.0, EXP: 0.0}, created_min=-10)
    result = evaluate([program([older, newer])], NOW, 3 * HOUR, seed="s")
    assert spans(result, IMP) == [(0, 120, 5000.0, "2")]
    assert (1, R.STARTED) not in owed(result)
    at_start = evaluate([program([older, newer])], minutes(30), HOUR, seed="s",
                        log=result.log.with_sent(*result.responses))
    assert owed(at_start) == [(1, R.SUPERSEDED)]


def test_an_overlap_with_fewer_controls_overrides_only_its_own() -> None:
    wide = control(1, 0, 120, {IMP: 7000.0, EXP: 2000.0}, created_min=-60)
    narrow = control(2, 30, 30, {EXP: 500.0}, created_min=-30)
    result = evaluate([program([wide, narrow])], NOW, 3 * HOUR, seed="s")
    assert spans(result, IMP) == [(0, 120, 7000.0, "1")]
    assert spans(result, EXP) == [(0, 30, 2000.0, "1"), (30, 60, 500.0, "2"),
                                  (60, 120, 2000.0, "1")]
    done = evaluate([program([wide, narrow])], minutes(121), HOUR, seed="s",
                    log=result.log.with_sent(*result.responses))
    assert owed(done) == [(1, R.COMPLETED), (2, R.STARTED), (2, R.COMPLETED)]


def test_lower_primacy_wins_across_programs_and_events_beat_defaults() -> None:
    envelopes = program([control(1, 0, 120, {IMP: 7000.0, EXP: 2000.0})], primacy=2,
                        default={IMP: 15000.0, EXP: 5000.0})
    backstop = program([control(2, 30, 30, {EXP: 0.0, GEN: 0.0}, created_min=-120)],
                       primacy=1, ident="/edev/1/derp/2", default={EXP: 1000.0})
    result = evaluate([envelopes, backstop], NOW, 3 * HOUR, seed="s")
    assert spans(result, EXP) == [(0, 30, 2000.0, "1"), (30, 60, 0.0, "2"),
                                  (60, 120, 2000.0, "1"), (120, 180, 1000.0, "default")]
    assert spans(result, IMP) == [(0, 120, 7000.0, "1"), (120, 180, 15000.0, "default")]
    assert spans(result, GEN) == [(30, 60, 0.0, "2")]
    exports = result.timeline(EXP)
    assert exports[1].primacy == 1 and exports[-1].program_id == "/edev/1/derp/2"
    assert result.timeline(IMP)[-1].program_id == "/edev/1/derp/1"


def test_randomisation_is_deterministic_per_seed_and_independent_of_global_random() -> None:
    event = control(1, 60, 30, {IMP: 7000.0}, randomize_start_s=600, randomize_duration_s=-300)
    early = control(2, 60, 30, {EXP: 100.0}, randomize_start_s=-600)

    def window(seed: str, quantity: Quantity) -> tuple[datetime, datetime]:
        random.seed(seed + "noise")  # the engine must not use the global generator
        piece = evaluate([program([event, early])], NOW, 3 * HOUR, seed=seed).timeline(
            quantity)[0]
        return piece.start, piece.end

    starts = set()
    for seed in ("a", "b", "c", "d", "e", "f"):
        start, end = window(seed, IMP)
        assert (start, end) == window(seed, IMP)
        assert minutes(60) <= start <= minutes(70)
        assert timedelta(minutes=25) <= end - start <= timedelta(minutes=30)
        early_start, early_end = window(seed, EXP)
        assert minutes(50) <= early_start <= minutes(60)
        assert early_end - early_start == timedelta(minutes=30)
        starts.add(start)
    assert len(starts) > 1


# -- Responses ------------------------------------------------------------------------------

def test_responses_are_never_repeated() -> None:
    programs = [program([control(1, 10, 30, {IMP: 7000.0}), control(2, -5, 60, {EXP: 0.0})])]
    first = evaluate(programs, NOW, HOUR, seed="s")
    assert owed(first) == [(1, R.RECEIVED), (2, R.RECEIVED), (2, R.STARTED)]
    log = first.log.with_sent(*first.responses)
    assert owed(evaluate(programs, NOW, HOUR, seed="s", log=log)) == []
    started = evaluate(programs, minutes(15), HOUR, seed="s", log=log)
    assert owed(started) == [(1, R.STARTED)]
    log = started.log.with_sent(*started.responses)
    ended = evaluate(programs, minutes(70), HOUR, seed="s", log=log)
    assert owed(ended) == [(1, R.COMPLETED), (2, R.COMPLETED)]
    log = ended.log.with_sent(*ended.responses)
    assert owed(evaluate(programs, minutes(200), HOUR, seed="s", log=log)) == []
    assert log.was_sent(f"{1:032X}", 3)
    assert log.pruned({f"{2:032X}"}).sent == {(f"{2:032X}", s) for s in (1, 2, 3)}


def test_an_event_that_ran_between_two_polls_is_started_and_completed() -> None:
    programs = [program([control(1, 10, 5, {IMP: 7000.0})])]
    first = evaluate(programs, NOW, HOUR, seed="s")
    later = evaluate(programs, minutes(30), HOUR, seed="s",
                     log=first.log.with_sent(*first.responses))
    assert owed(later) == [(1, R.STARTED), (1, R.COMPLETED)]


@pytest.mark.parametrize(("required", "expected"), [
    (0x00, []), (0x01, [(1, R.RECEIVED)]), (0x02, [(1, R.STARTED)]),
    (0x03, [(1, R.RECEIVED), (1, R.STARTED)]), (0x04, [])])
def test_response_required_bits_decide(required: int, expected: list[tuple[int, int]]) -> None:
    result = evaluate([program([control(1, -5, 30, {IMP: 1.0}, required=required)])], NOW, HOUR,
                      seed="s")
    assert owed(result) == expected


def test_an_event_first_seen_after_its_end_is_received_late() -> None:
    programs = [program([control(1, -90, 30, {IMP: 7000.0})])]
    result = evaluate(programs, NOW, HOUR, seed="s")
    assert owed(result) == [(1, R.RECEIVED_LATE)]
    assert result.responses[0].reason == "first seen after the event had ended"
    assert spans(result, IMP) == []
    log = result.log.with_sent(*result.responses)
    assert owed(evaluate(programs, minutes(5), HOUR, seed="s", log=log)) == []


@pytest.mark.parametrize(("bad", "reason"), [
    (dict(duration_s=-60), "duration -60 s is negative"),
    (dict(status=7), "currentStatus 7 is not 0..4"),
    (dict(randomize_start_s=4000), "randomizeStart 4000 s"),
    (dict(values={IMP: -5.0}), "opModImpLimW -5.0 must be a non-negative"),
    (dict(values={Quantity.FIXED_W: 150.0}), "outside -100..100"),
    (dict(values={Quantity.CONNECT: 1.0}), "must be true or false"),
    (dict(invalid_reason="opModExpLimW: multiplier 99 is outside -9..9"), "multiplier 99"),
])
def test_invalid_events_are_rejected_and_ignored(bad: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = dict(values={IMP: 7000.0})
    fields.update(bad)
    values = fields.pop("values")
    invalid = control(1, -5, 30, values, **fields)
    result = evaluate([program([invalid], default={IMP: 15000.0})], NOW, HOUR, seed="s")
    assert owed(result) == [(1, R.INVALID)]
    assert reason in result.responses[0].reason
    assert spans(result, IMP) == [(0, 60, 15000.0, "default")]
    assert any(reason in problem for problem in result.problems)


def test_events_with_nothing_gridflex_can_execute_are_not_applicable() -> None:
    fixed_only = control(1, -5, 30, {Quantity.FIXED_W: -50.0})
    nodes = SiteNodes("site-a", ("A-01",))  # no ratings: opModFixedW cannot be executed
    result = evaluate([program([fixed_only])], NOW, HOUR, seed="s", supported=nodes.supported())
    assert owed(result) == [(1, R.NOT_APPLICABLE)]
    assert "opModFixedW" in result.responses[0].reason
    data = (FIXTURES / "envoy-v2.2.0" / "38_edev1_derp1_derc1_active.xml").read_bytes()
    target_only = parse(data.replace(
        b"<DERControlBase>", b"<DERControlBase><opModTargetW><multiplier>0</multiplier>"
                             b"<value>5</value></opModTargetW>").replace(
        b"<csipaus:opModImpLimW><multiplier>1</multiplier><value>700</value>"
        b"</csipaus:opModImpLimW>", b""), DERControlResponse)
    converted = control_from_model(target_only)
    assert converted.ignored == ("opModTargetW",)
    result = evaluate([program([converted])], datetime.fromtimestamp(1795240392, UTC), HOUR,
                      seed="s", supported={IMP})
    assert [(r.subject, r.status) for r in result.responses] == [
        ("30000000000000000000000100000000", R.NOT_APPLICABLE)]
    assert "opModTargetW" in result.responses[0].reason
    assert "opModTargetW is not executed by gridflex (ignored)" in result.problems[0]


def test_events_for_other_device_categories_are_skipped_silently() -> None:
    thermostat = control(1, -5, 30, {IMP: 1.0}, device_category=0x1)
    evse = control(2, -5, 30, {EXP: 2.0}, device_category=0x20000)
    result = evaluate([program([thermostat, evse])], NOW, HOUR, seed="s",
                      device_category=0x20000)
    assert spans(result, IMP) == [] and spans(result, EXP) == [(0, 25, 2.0, "2")]
    assert {subject for subject, _ in owed(result)} == {2}


def test_a_reused_mrid_keeps_the_newest_version() -> None:
    first = control(1, -5, 30, {IMP: 7000.0}, version=1)
    second = control(1, -5, 30, {IMP: 6000.0}, version=2)
    result = evaluate([program([second, first])], NOW, HOUR, seed="s")
    assert spans(result, IMP) == [(0, 25, 6000.0, "1")]
    assert "appears more than once" in result.problems[0]
    assert owed(result) == [(1, R.RECEIVED), (1, R.STARTED)]


def test_the_engine_agrees_with_sep2tools_on_plain_overlaps() -> None:
    ours = [program([control(1, 0, 120, {IMP: 7000.0, EXP: 2000.0}, created_min=-100),
                     control(2, 30, 30, {EXP: 500.0}, created_min=-50)]),
            program([control(3, 90, 60, {IMP: 3000.0}, created_min=-200)], primacy=1,
                    ident="/edev/1/derp/2")]
    result = evaluate(ours, NOW, 4 * HOUR, seed="s")

    def tools(event: Control, primacy: int) -> ToolsControl:
        return ToolsControl(
            mRID=event.mrid, creationTime=int(event.creation_time.timestamp()),
            EventStatus=ToolsStatus(currentStatus=event.status),
            interval=DateTimeInterval(start=int(event.start.timestamp()),
                                      duration=event.duration_s),
            controls=[ToolsBase(mode=quantity.value, value=int(value), multiplier=0)
                      for quantity, value in event.values.items()],
            ProgramInfo=ProgramInfo(primacy=primacy))

    theirs = condense_events([tools(event, item.primacy) for item in ours
                              for event in item.controls])
    for quantity in (IMP, EXP):
        expected = [(int(e.start), int(e.end), float(e.value), e.mrid)
                    for e in theirs[quantity.value]]
        assert [(int(p.start.timestamp()), int(p.end.timestamp()), p.value, p.mrid)
                for p in result.timeline(quantity)] == expected


# -- grid constraints -----------------------------------------------------------------------

NODES = SiteNodes("site-a", ("A-01", "A-02"), fixed_w_charge_basis_kw=11.0,
                  fixed_w_discharge_basis_kw=10.0)


def test_every_quantity_becomes_constraints_on_the_right_nodes() -> None:
    full = control(1, 0, 30, {IMP: 7000.0, EXP: 2000.0, LOAD: 6000.0, GEN: 10000.0,
                              Quantity.FIXED_W: -50.0, Quantity.CONNECT: False,
                              Quantity.ENERGIZE: True})
    discharge = control(2, 30, 30, {Quantity.FIXED_W: 20.0, Quantity.ENERGIZE: False})
    result = evaluate([program([full, discharge])], NOW, HOUR, seed="s",
                      supported=NODES.supported())
    received = NOW + timedelta(seconds=3)
    found = to_constraints(result, NODES, received_at=received, priority=5)
    table = sorted(((c.node_id, (c.start - NOW).seconds // 60, c.import_max_kw, c.export_max_kw,
                     c.setpoint_kw) for c in found), key=repr)
    assert table == sorted([
        ("site-a", 0, 7.0, None, None), ("site-a", 0, None, 2.0, None),
        ("A-01", 0, 6.0, None, None), ("A-02", 0, 6.0, None, None),
        ("A-01", 0, None, 10.0, None), ("A-02", 0, None, 10.0, None),
        ("site-a", 0, None, None, 5.5),  # -50 % of the 11 kW charge rating: import 5.5 kW
        ("A-01", 0, 0.0, 0.0, None), ("A-02", 0, 0.0, 0.0, None),  # opModConnect false
        ("site-a", 30, None, None, -2.0),  # +20 % of the 10 kW discharge rating
        ("A-01", 30, 0.0, 0.0, None), ("A-02", 30, 0.0, 0.0, None)],  # opModEnergize false
        key=repr)
    assert {c.source for c in found} == {SOURCE}
    assert {c.received_at for c in found} == {received} and {c.priority for c in found} == {5}
    load = next(c for c in found if c.node_id == "A-02" and c.import_max_kw == 6.0)
    assert load.source_ref == (
        f"DERControl {1:032X} (/edev/1/derp/1/derc/1) of DERProgram /edev/1/derp/1 "
        "'envelopes' (primacy 2): opModLoadLimW 6000 W -> EVSE A-02 import cap")
    assert (load.start, load.end) == (NOW, minutes(30))


def test_default_provenance_names_the_default_and_why() -> None:
    result = evaluate([program([], default={EXP: 5000.0})], NOW, HOUR, seed="s")
    (constraint,) = to_constraints(result, NODES, received_at=NOW)
    assert constraint.source_ref.startswith(
        "DefaultDERControl /edev/1/derp/1/dderc of DERProgram /edev/1/derp/1 'envelopes' "
        "(primacy 2), no DERControl active: opModExpLimW 5000 W -> site site-a export cap")
    assert (constraint.export_max_kw, constraint.end) == (5.0, NOW + HOUR)


def test_a_quantity_without_a_node_is_refused() -> None:
    result = evaluate([program([control(1, 0, 30, {GEN: 1.0})])], NOW, HOUR, seed="s")
    with pytest.raises(ValueError, match="opModGenLimW: site 'site-b' has no node mapping"):
        to_constraints(result, SiteNodes("site-b"), received_at=NOW)
    assert SiteNodes("site-b").supported() == {IMP, EXP}


def test_a_response_becomes_the_recorded_post_body() -> None:
    result = evaluate([program([control(1, -5, 30, {IMP: 1.0})])], NOW, HOUR, seed="s")
    reply = result.responses[1].to_model("D1BAE45AEABC08255827C6C778D71883EB3F59DE", NOW)
    assert result.responses[1].reply_to == "/edev/1/rsps/site_control/rsp"
    data = serialise(reply)
    assert parse(data, DERControlReply) == reply
    assert b"<status>2</status>" in data and f"<subject>{1:032X}</subject>".encode() in data
    assert f"<createdDateTime>{int(NOW.timestamp())}</createdDateTime>".encode() in data


# -- the recorded server, end to end ----------------------------------------------------------

def _load(version: str, step: str, model: type[Any]) -> Any:
    (path,) = (FIXTURES / version).glob(f"{step}_*.xml")
    return parse(path.read_bytes(), model, "application/sep+xml")


def _site_programs(version: str, site: int) -> list[Program]:
    steps = {1: [("32", "37", "45"), ("28", "29", "31")],
             2: [("56", "57", "59"), ("52", "53", "55")]}[site]
    return [program_from_models(_load(version, p, DERProgramResponse),
                                _load(version, c, DERControlListResponse).DERControl or [],
                                _load(version, d, DefaultDERControl))
            for p, c, d in steps]


def _t0(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("version", ["envoy-v1.5.0", "envoy-v2.2.0"])
def test_recorded_controls_through_the_engine_into_the_constraint_book(version: str) -> None:
    now = datetime.fromtimestamp(_load(version, "09", TimeResponse).currentTime, UTC)
    nodes = SiteNodes("site-a", ("A-01",))
    result = evaluate(_site_programs(version, 1), now, timedelta(hours=9),
                      seed="d1bae45aeabc08255827c6c778d71883eb3f59de",
                      supported=nodes.supported())
    assert result.problems == ()
    book = ConstraintBook(started_at=now)
    publish(book, nodes, to_constraints(result, nodes, received_at=now), now)
    assert scope_for(nodes) == "site:site-a"

    def caps(moment: datetime) -> tuple[float | None, ...]:
        return (book.limit_kw("site-a", "import", moment),
                book.limit_kw("site-a", "export", moment),
                book.limit_kw("A-01", "import", moment), book.limit_kw("A-01", "export", moment))

    assert caps(now) == (7.0, 2.0, 6.0, 10.0)  # derc 1, active
    assert caps(_t0(3400)) == (15.0, 5.0, 15.0, 20.0)  # DefaultDERControl of program 1
    assert caps(_t0(7200 + 120)) == (5.0, 1.5, 4.0, 8.0)  # derc 2 (randomizeStart 60)
    assert caps(_t0(10800 + 60)) == (15.0, 0.0, 15.0, 0.0)  # derc 9: backstop, primacy 1
    assert caps(_t0(14400 + 60)) == (15.0, 5.0, 15.0, 20.0)  # derc 3 superseded by the server
    assert caps(_t0(16200 + 60)) == (6.0, 1.0, 15.0, 20.0)  # derc 8
    assert caps(_t0(21600 + 60)) == (15.0, 5.0, 15.0, 20.0)  # derc 4 cancelled
    assert caps(_t0(25200 + 60)) == (15.0, 5.0, 15.0, 20.0)  # derc 5 cancelled, not started
    (why,) = [r for r in book.why("site-a", now) if r.direction == "import"]
    assert why.constraint.source_ref.startswith(
        "DERControl 30000000000000000000000100000000 (/edev/1/derp/1/derc/1) of DERProgram "
        "/edev/1/derp/1 'DNSP Dynamic Operating Envelopes' (primacy 2): opModImpLimW 7000 W")
    assert {(int(r.subject[22:24]), int(r.status)) for r in result.responses} == {
        (1, 1), (1, 2), (2, 1), (3, 1), (3, 7), (8, 1), (4, 1), (4, 6), (5, 1), (5, 6), (9, 1)}
    assert {r.reply_to for r in result.responses} == {"/edev/1/rsps/site_control/rsp"}


@pytest.mark.parametrize("version", ["envoy-v1.5.0", "envoy-v2.2.0"])
def test_recorded_site_b_uses_the_power_of_ten_multiplier(version: str) -> None:
    now = datetime.fromtimestamp(_load(version, "09", TimeResponse).currentTime, UTC)
    nodes = SiteNodes("site-b", ("B-01", "B-02"))
    result = evaluate(_site_programs(version, 2), now, 2 * HOUR, seed="38b05bc4",
                      supported=nodes.supported())
    found = to_constraints(result, nodes, received_at=now)
    book = ConstraintBook(started_at=now)
    publish(book, nodes, found, now)
    assert book.limit_kw("site-b", "import", now) == 120.0  # derc 6: 12000 x 10^1 W
    assert book.limit_kw("site-b", "export", now) == 0.0
    inside = _t0(3600 + 60)  # derc 7
    assert book.limit_kw("site-b", "export", inside) == 25.0
    assert book.limit_kw("B-02", "export", inside) == 500.0  # 5000 x 10^2 W
    assert book.limit_kw("B-01", "import", inside) == 150.0


# -- property: the engine never breaks its own invariants -------------------------------------

EVENT = st.builds(
    lambda n, start, duration, created, status, rs, rd, required, values: control(
        n, start, duration, values, created_min=created, status=status, required=required,
        randomize_start_s=rs, randomize_duration_s=rd, status_time=NOW),
    st.integers(1, 6), st.integers(-180, 240), st.integers(-10, 180), st.integers(-300, 0),
    st.integers(-1, 5), st.integers(-4000, 4000), st.integers(-4000, 4000), st.integers(0, 7),
    st.dictionaries(st.sampled_from(list(Quantity)),
                    st.one_of(st.floats(-1e6, 1e7, allow_nan=False), st.booleans()),
                    max_size=4))
PROGRAM = st.builds(
    lambda primacy, n, events, default: program(events, primacy=primacy,
                                                ident=f"/derp/{n}", default=default),
    st.integers(0, 3), st.integers(1, 9), st.lists(EVENT, max_size=6),
    st.one_of(st.none(), st.dictionaries(st.sampled_from([IMP, EXP, LOAD]),
                                         st.floats(0, 1e5), max_size=3)))


@settings(max_examples=120, deadline=2000, derandomize=True)
@given(st.lists(PROGRAM, max_size=3), st.integers(0, 300), st.text(max_size=5))
def test_engine_invariants(programs: list[Program], later_min: int, seed: str) -> None:
    result = evaluate(programs, NOW, 4 * HOUR, seed=seed, supported=NODES.supported())
    for quantity in Quantity:
        timeline = result.timeline(quantity)
        for before, after in pairwise(timeline):
            assert before.end <= after.start  # ordered, never overlapping
        for piece in timeline:
            assert NOW <= piece.start < piece.end <= NOW + 4 * HOUR
    pairs = [(r.subject, int(r.status)) for r in result.responses]
    assert len(pairs) == len(set(pairs))
    log = result.log.with_sent(*result.responses)
    assert evaluate(programs, NOW, 4 * HOUR, seed=seed, log=log,
                    supported=NODES.supported()).responses == ()
    later = evaluate(programs, minutes(later_min), HOUR, seed=seed, log=log,
                     supported=NODES.supported())
    assert not {(r.subject, int(r.status)) for r in later.responses} & log.sent
    for constraint in to_constraints(result, NODES, received_at=NOW):
        assert constraint.source == SOURCE and constraint.source_ref


def test_a_program_reached_through_two_lists_counts_once() -> None:
    # the walk reaches /edev/1/derp/1 through /edev/1/fsa/1/derp and /edev/1/derp
    envelopes = program([control(1, -5, 30, {IMP: 7000.0})], default={IMP: 15000.0})
    result = evaluate([envelopes, envelopes], NOW, HOUR, seed="s")
    assert owed(result) == [(1, R.RECEIVED), (1, R.STARTED)]
    assert result.problems == ()
    moved = program([control(1, -5, 30, {IMP: 6000.0}, version=1)], ident="/edev/1/derp/3")
    result = evaluate([envelopes, moved], NOW, HOUR, seed="s")
    assert owed(result) == [(1, R.RECEIVED), (1, R.STARTED)]
    assert spans(result, IMP)[0] == (0, 25, 6000.0, "1")  # the newer version
    assert "appears more than once (/edev/1/derp/1, /edev/1/derp/3)" in result.problems[0]


@pytest.mark.parametrize("version", ["envoy-v1.5.0", "envoy-v2.2.0"])
def test_an_unmarked_overlap_is_superseded_by_the_client(version: str) -> None:
    # derc 3 and derc 8 share creationTime; without the server's status 4 the later-starting
    # derc 8 is the newer one: derc 3 runs until derc 8 starts, then owes "superseded"
    (path,) = (FIXTURES / version).glob("37_*.xml")
    data = path.read_bytes().replace(b"<currentStatus>4</currentStatus>",
                                     b"<currentStatus>0</currentStatus>")
    controls = parse(data, DERControlListResponse).DERControl
    envelopes = program_from_models(_load(version, "32", DERProgramResponse), controls,
                                    _load(version, "45", DefaultDERControl))
    now = _t0(14400 + 60)
    result = evaluate([envelopes], now, HOUR, seed="s", supported={IMP, EXP})
    assert [(p.value, int((p.end - T0).total_seconds())) for p in result.timeline(IMP)][:2] == [
        (6000.0, 16200), (6000.0, 18000)]
    assert [p.mrid[22:24] for p in result.timeline(IMP)[:2] if p.mrid] == ["03", "08"]
    assert [p.value for p in result.timeline(EXP)[:2]] == [3000.0, 1000.0]
    later = evaluate([envelopes], _t0(16200 + 1), HOUR, seed="s", supported={IMP, EXP},
                     log=result.log.with_sent(*result.responses))
    assert (f"3000000000000000000000{3:02d}00000000", R.SUPERSEDED) in [
        (r.subject, r.status) for r in later.responses]
