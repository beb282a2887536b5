"""`Lab(..., certificate_fault=...)`: the front ends serve the faulty certificate asked for."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from lab.errors import PKIError
from lab.net.config import LabConfig
from lab.ops.runner import Lab

INSIDE = "127.10.1.90"


async def served_names(lab: Lab, fe: str, name: str | None = None) -> list[str]:
    """The DNS names on the certificate front end ``fe`` presents as ``name`` (its FQDN)."""
    front_end = lab.config.front_end(fe)
    _, writer = await asyncio.open_connection(
        str(front_end.address),
        lab.pool.https_port,
        ssl=lab.pki.client_context(),  # checks the name strictly, as a phone does
        server_hostname=name or front_end.fqdn,
        local_addr=(INSIDE, 0),
    )
    try:
        cert = writer.get_extra_info("peercert")
        return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("fault", [None, "no-ucupdates-name"])
async def test_the_front_ends_serve_the_certificate_with_the_fault_asked_for(
    lab_config: LabConfig, tmp_path: Path, fault: str | None
) -> None:
    async with Lab(lab_config, tmp_path / "state", certificate_fault=fault) as lab:  # type: ignore[arg-type]
        # The front ends of the pool ucupdates-r2 names (the others never carry the name).
        for fe in lab.config.discovery_pool.front_ends:
            names = await served_names(lab, fe.name)
            assert names[0] == fe.fqdn
            # Only the faulty certificate lacks the name never-signed-in phones look up.
            assert ("ucupdates-r2.contoso.test" in names) is (fault is None)
            if fault is not None:
                with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                    await served_names(lab, fe.name, "ucupdates-r2.contoso.test")


async def test_an_unknown_certificate_fault_is_refused_before_anything_starts(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    with pytest.raises(PKIError, match=r"no certificate fault 'self-signed' \(known: "):
        Lab(lab_config, tmp_path / "state", certificate_fault="self-signed")  # type: ignore[arg-type]
    assert not (tmp_path / "state").exists()
