"""OCMF signed meter values and the meter key registry, with real ECDSA signatures made by
the tests; the per-session checks run on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pyocmf import PublicKey, SignatureMethod

from aggregator.export import read_table, verify_table, write_table
from aggregator.ledger import Ledger, settle_sessions
from aggregator.model import Measurand, MeterSample
from aggregator.signed_meter import (
    SIGNED_SESSION_COLUMNS,
    SIGNED_SESSION_TEXT_COLUMNS,
    MeterKeyError,
    check_sessions,
    check_signed,
    load_meter_keys,
    meter_keys_from_mapping,
    page_gaps,
    signed_session_table,
)

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def ocmf(page: str, kwh: float, serial: str = "MS-001") -> str:
    payload = json.dumps({
        "FV": "1.0", "GI": "GRIDFLEX TEST", "GS": "GS1", "GV": "1.0", "PG": page, "MV": "Acme",
        "MM": "M1", "MS": serial, "MF": "1.0", "IS": False, "IF": [], "IT": "NONE", "ID": "",
        "RD": [{"TM": "2026-11-20T16:00:00,000+0000 S", "TX": "B", "RV": kwh,
                "RI": "01-00:B0.08.00*FF", "RU": "kWh", "RT": "AC", "EF": "", "ST": "G"}]},
        separators=(",", ":"))
    signature = KEY.sign(payload.encode(), ec.ECDSA(hashes.SHA256())).hex()
    return f'OCMF|{payload}|{{"SA":"ECDSA-secp256r1-SHA256","SD":"{signature}"}}'


def sample(signed: str | None, value_wh: float, minute: int = 0) -> MeterSample:
    return MeterSample(station_id="CS1", evse_number=1, transaction_id="t",
                       measured_at=T0.replace(minute=minute), measurand=Measurand.ENERGY_IMPORT,
                       value=value_wh, received_at=T0, signed_data=signed)


def test_good_tampered_mismatched_and_unknown_values() -> None:
    good = sample(ocmf("T1", 2.935), 2935.0)
    tampered = sample(ocmf("T2", 3.5).replace('"RV":3.5', '"RV":3.9'), 3900.0, 1)
    mismatch = sample(ocmf("T3", 4.0), 4500.0, 2)  # stored value is not the signed one
    stranger = sample(ocmf("T1", 1.0, serial="MS-999"), 1000.0, 3)
    garbage = sample("OCMF|not json|{}", 1.0, 4)
    plain = sample(None, 5000.0, 5)  # unsigned: nothing to check
    checks = check_signed([good, tampered, mismatch, stranger, garbage, plain],
                          {"MS-001": PUBLIC})
    verdicts = [(c.valid, c.reason.split(":")[0]) for c in checks]
    assert verdicts[0] == (True, "ok")
    assert verdicts[1] == (False, "signature does not match the payload")
    assert checks[2].valid is False and "differs from the stored 4500.0 Wh" in checks[2].reason
    assert checks[3].valid is None and "no public key for meter 'MS-999'" in checks[3].reason
    assert verdicts[4] == (False, "not parseable as OCMF")
    assert len(checks) == 5
    assert checks[0].sample.signed_data == good.signed_data  # kept verbatim


def test_page_counter_gaps_are_flagged_per_meter() -> None:
    samples = [sample(ocmf(page, 1.0 + i), 1000.0 * (1.0 + i), i)
               for i, page in enumerate(["T1", "T2", "T4", "T7"])]
    checks = check_signed(samples, {"MS-001": PUBLIC})
    assert all(c.valid for c in checks)
    assert page_gaps(checks) == ["meter MS-001: pages T3, T5, T6 missing"]
    assert page_gaps(checks[:2]) == []


def key_file(tmp_path: Path, body: str, name: str = "meter_keys.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def der_hex(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def stored(signed: str | None, value_wh: float, minute: int, *, evse_number: int = 1,
           transaction_id: str = "t1") -> MeterSample:
    return dataclasses.replace(sample(signed, value_wh, minute), evse_number=evse_number,
                               transaction_id=transaction_id)


def test_registered_keys_check_every_stored_value_per_session(ledger: Ledger,
                                                              tmp_path: Path) -> None:
    registry = load_meter_keys(key_file(tmp_path, f'[meters."MS-001"]\npublic_key = '
                                                  f'"{PUBLIC}"\n'))
    assert registry["MS-001"].algorithm is SignatureMethod.SECP256R1_SHA256
    session_a = [stored(ocmf(page, kwh), kwh * 1000, minute) for page, kwh, minute in
                 [("T1", 1.0, 0), ("T2", 2.0, 1), ("T4", 3.0, 2)]]
    tampered = ocmf("T5", 4.0).replace('"RV":4.0', '"RV":4.5')
    session_a += [stored(tampered, 4500.0, 3), stored(None, 5000.0, 4)]
    session_b = [stored(ocmf("T1", 1.0, serial="MS-999"), 1000.0, 0, evse_number=2,
                        transaction_id="t2")]
    ledger.add_samples(session_a + session_b)
    a, b = check_sessions(ledger, T0, T0 + timedelta(hours=1), registry)
    assert (a.transaction_id, a.signed_readings, a.verified) == ("t1", 4, 3)
    assert a.failed == ("2026-11-20T16:03:00Z Energy.Active.Import.Register: signature does "
                        "not match the payload",)
    assert a.page_gaps == ("meter MS-001: pages T3 missing",) and a.unknown_meters == ()
    assert (b.signed_readings, b.verified, b.failed, b.unknown_meters) == (1, 0, (), ("MS-999",))
    assert not a.ok and not b.ok
    stored_data = {s.signed_data for s in ledger.samples()} - {None}
    assert stored_data == {s.signed_data for s in session_a + session_b} - {None}  # verbatim
    assert check_sessions(ledger, T0 + timedelta(hours=1), T0 + timedelta(hours=2),
                          registry) == []


def test_a_value_signed_with_another_algorithm_than_registered_fails(tmp_path: Path) -> None:
    registry = load_meter_keys(key_file(tmp_path, json.dumps({"meters": {"MS-001": {
        "public_key": PUBLIC, "algorithm": "ECDSA-secp256r1-SHA512"}}}), "keys.json"))
    [check] = check_signed([sample(ocmf("T1", 1.0), 1000.0)], registry)
    assert check.valid is False
    assert check.reason == ("signed with ECDSA-secp256r1-SHA256, meter registered for "
                            "ECDSA-secp256r1-SHA512")


def test_the_signed_session_table_is_hash_chained_over_the_verdicts(
        ledger: Ledger, tmp_path: Path) -> None:
    registry = meter_keys_from_mapping({"meters": {"MS-001": {"public_key": PUBLIC}}})
    ledger.add_samples([stored(ocmf("T1", 1.0), 1000.0, 0), stored(ocmf("T3", 2.0), 2000.0, 5),
                        stored(None, 700.0, 0, evse_number=2, transaction_id="t2"),
                        stored(None, 900.0, 5, evse_number=2, transaction_id="t2")])
    end = T0 + timedelta(hours=1)
    table = signed_session_table(settle_sessions(ledger, T0, end),
                                 check_sessions(ledger, T0, end, registry))
    assert list(table["signed_readings"]) == [2, 0] and list(table["verified"]) == [2, 0]
    assert list(table["page_gaps"]) == ["meter MS-001: pages T2 missing", ""]
    for name in ("sessions.csv", "sessions.parquet"):
        write_table(table, tmp_path / name)
        back = read_table(tmp_path / name, SIGNED_SESSION_TEXT_COLUMNS)
        assert verify_table(back, SIGNED_SESSION_COLUMNS) is None
        back.loc[1, "verified"] = 1
        assert verify_table(back, SIGNED_SESSION_COLUMNS) == 1


OTHER_CURVE = der_hex(ec.generate_private_key(ec.SECP384R1()))
RSA_KEY = der_hex(rsa.generate_private_key(public_exponent=65537, key_size=1024))


@pytest.mark.parametrize(("body", "field"), [
    ("meters = 3", "meters"),
    ("[keys]\nx = 1", "meter_keys.keys"),
    ('[meters."MS-1"]\nalgorithm = "ECDSA-secp256r1-SHA256"', 'meters."MS-1".public_key'),
    ('[meters."MS-1"]\npublic_key = "zz-not-a-key"', 'meters."MS-1".public_key'),
    (f'[meters."MS-1"]\npublic_key = "{RSA_KEY}"', 'meters."MS-1".public_key'),
    (f'[meters."MS-1"]\npublic_key = "{PUBLIC}"\nalgorithm = "RSA"', 'meters."MS-1".algorithm'),
    (f'[meters."MS-1"]\npublic_key = "{OTHER_CURVE}"', 'meters."MS-1".algorithm'),
    (f'[meters."MS-1"]\npublic_key = "{PUBLIC}"\ncolour = "red"', 'meters."MS-1".colour'),
    ('meters = {" " = {}}', 'meters." "'),
    ("meters = [", "meter_keys"),
])
def test_a_bad_registry_file_is_rejected_naming_the_field(tmp_path: Path, body: str,
                                                          field: str) -> None:
    with pytest.raises(MeterKeyError) as caught:
        load_meter_keys(key_file(tmp_path, body))
    assert caught.value.field == field


def test_a_missing_registry_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeterKeyError, match="meter_keys: cannot read"):
        load_meter_keys(tmp_path / "absent.toml")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([PUBLIC, OTHER_CURVE, "ECDSA-secp256r1-SHA256", "public_key", "meters"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["meters", "public_key", "algorithm", "MS-1", ""]) | st.text(max_size=5),
        inner, max_size=3), max_leaves=12)
KEY_TEXT = st.text(alphabet="0123456789abcdefABCDEF+/=", max_size=200) | st.sampled_from(
    [PUBLIC, PUBLIC[:-2], OTHER_CURVE, RSA_KEY, base64.b64encode(bytes.fromhex(PUBLIC)).decode()])


@settings(max_examples=300, deadline=None)
@given(data=JSON_VALUES | st.fixed_dictionaries({"meters": st.dictionaries(
    st.text(max_size=8), st.fixed_dictionaries({"public_key": KEY_TEXT}, optional={
        "algorithm": st.sampled_from([m.value for m in SignatureMethod]) | st.text(max_size=8)}),
    max_size=3)}))
def test_any_registry_table_is_accepted_or_refused_naming_a_field(data: object) -> None:
    try:
        keys = meter_keys_from_mapping(data)
    except MeterKeyError as err:
        assert err.field.startswith(("meter_keys", "meters"))
        return
    for serial, key in keys.items():
        assert key.meter_serial == serial and PublicKey.from_string(key.public_key).curve \
            is key.algorithm.curve


@settings(max_examples=200, deadline=None)
@given(body=st.text(max_size=200))
def test_any_registry_file_text_is_accepted_or_refused_naming_a_field(body: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "meter_keys.toml"
        path.write_text(body)
        try:
            load_meter_keys(path)
        except MeterKeyError as err:
            assert err.field.startswith(("meter_keys", "meters"))


def test_gridflex_settle_with_meter_keys(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from aggregator.cli import main
    from aggregator.signed_meter import SIGNED_SESSION_COLUMNS, SIGNED_SESSION_TEXT_COLUMNS

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.add_samples([stored(ocmf(page, kwh), kwh * 1000, minute) for page, kwh, minute in
                        [("T1", 1.0, 0), ("T2", 2.0, 1), ("T4", 3.0, 2)]])
    keys = key_file(tmp_path, f'[meters."MS-001"]\npublic_key = "{PUBLIC}"\n')
    out = tmp_path / "signed.csv"
    assert main(["settle", "--ledger", url, "--from", "2026-11-20T16:00:00Z", "--to",
                 "2026-11-20T17:00:00Z", "--meter-keys", str(keys), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["signed_readings"], summary["verified"], summary["failed"]) == (3, 3, 0)
    assert summary["sessions_with_page_gaps"] == 1 and summary["unknown_meters"] == []
    back = read_table(out, SIGNED_SESSION_TEXT_COLUMNS)
    assert verify_table(back, SIGNED_SESSION_COLUMNS) is None
    assert back["page_gaps"].iloc[0] == "meter MS-001: pages T3 missing"
    (tmp_path / "bad.toml").write_text('[meters."MS-001"]\npublic_key = "zz"\n')
    with pytest.raises(SystemExit):
        main(["settle", "--ledger", url, "--from", "2026-11-20T16:00:00Z", "--to",
              "2026-11-20T17:00:00Z", "--meter-keys", str(tmp_path / "bad.toml")])
    assert 'meters."MS-001".public_key' in capsys.readouterr().err
