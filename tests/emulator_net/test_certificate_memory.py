"""The phone's certificate check answers from memory only where a full check would pass."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from emulator.errors import CertificateError
from emulator.net.tls import CertificateChecker
from lab.net.config import LabConfig
from lab.net.pki import LabPKI


@pytest.fixture
def pki(lab_config: LabConfig) -> LabPKI:
    pki = LabPKI(lab_config)
    pki.ensure()
    return pki


def _chain(path: Path) -> tuple[x509.Certificate, list[bytes]]:
    leaf = x509.load_pem_x509_certificate(path.read_bytes())
    return leaf, [leaf.public_bytes(Encoding.DER)]


def test_a_chain_that_passed_is_judged_again_at_another_time_and_name(pki: LabPKI) -> None:
    pair = pki.server("fe01")
    host = pair.names[0]
    leaf, der = _chain(pair.cert)
    now = [leaf.not_valid_before_utc + timedelta(days=1)]
    checker = CertificateChecker.from_file(pki.ca_cert, lambda: now[0])

    checker.check(host, der)
    checker.check(host, der)  # the same time, name and chain: from memory
    now[0] = leaf.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CertificateError, match="expired by the phone's clock"):
        checker.check(host, der)
    now[0] = leaf.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(CertificateError, match="not yet valid by the phone's clock"):
        checker.check(host, der)
    now[0] = leaf.not_valid_before_utc + timedelta(days=2)
    checker.check(host, der)
    with pytest.raises(CertificateError, match="name not on the certificate"):
        checker.check("elsewhere.contoso.test", der)


def test_a_chain_refused_once_is_refused_again(pki: LabPKI) -> None:
    good = pki.server("fe01")
    _, good_der = _chain(good.cert)
    _, bad_der = _chain(pki.faulty("untrusted-ca", "fe01").cert)
    when: datetime = datetime.now().astimezone()
    checker = CertificateChecker.from_file(pki.ca_cert, lambda: when)
    checker.check(good.names[0], good_der)
    for _ in range(2):
        with pytest.raises(CertificateError, match="a CA the phone does not trust"):
            checker.check(good.names[0], bad_der)
