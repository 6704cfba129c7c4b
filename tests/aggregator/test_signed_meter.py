"""OCMF signed meter values: verified with real ECDSA signatures made by the tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aggregator.model import Measurand, MeterSample
from aggregator.signed_meter import check_signed, page_gaps

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
