"""What openssl sees of a running lab's front ends: the names phones rely on, and the firewall."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.net.config import LabConfig
from lab.ops.runner import Lab

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
async def lab(lab_config: LabConfig, tmp_path: Path) -> AsyncIterator[Lab]:
    async with Lab(lab_config, tmp_path / "state") as running:
        yield running


async def s_client(lab: Lab, source: str, address: str) -> tuple[int, str]:
    """Run ``openssl s_client`` from ``source`` without blocking the lab's loop."""
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"{address}:{lab.pool.https_port}",
        "-bind",
        f"{source}:0",
        "-servername",
        lab.config.ucupdates_names[0],
        "-CAfile",
        str(lab.pki.ca_cert),
        "-verify_return_error",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode(errors="replace")


async def subject_alt_names(pem: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(pem.encode())
    return out.decode()


async def test_s_client_inside_shows_the_names_phones_use(lab: Lab) -> None:
    config = lab.config
    assert [fe.name for fe in config.front_ends] == ["fe01", "fe02", "se01"]
    for fe in config.front_ends:
        code, out = await s_client(lab, "127.10.0.100", str(fe.address))
        assert code == 0, out
        assert "Verify return code: 0 (ok)" in out
        start = out.index("-----BEGIN CERTIFICATE-----")
        end = out.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        names = await subject_alt_names(out[start:end])
        assert f"DNS:{fe.fqdn}" in names
        assert f"DNS:{fe.pool}" in names
        # Discovery and the edge lead to pool01: only its front ends carry those names.
        published = fe.pool == config.discovery_pool.fqdn == config.edge_pool.fqdn
        for name in ("ucupdates-r2.contoso.test", config.edge.external_web):
            assert (f"DNS:{name}" in names) is published, (fe.name, names)


async def test_s_client_from_outside_gets_no_handshake_at_an_internal_site(lab: Lab) -> None:
    code, out = await s_client(lab, "127.20.0.100", str(lab.config.front_ends[0].address))
    assert code != 0
    assert "BEGIN CERTIFICATE" not in out


async def test_s_client_at_the_edge_meets_the_edge_certificate(lab: Lab) -> None:
    # The edge is a reverse proxy: it ends TLS with its own certificate, never a front end's.
    code, out = await s_client(lab, "127.20.0.100", str(lab.config.edge.address))
    assert code == 0, out
    assert "Verify return code: 0 (ok)" in out
    subject = next(line for line in out.splitlines() if line.startswith("subject="))
    assert lab.config.edge.fqdn in subject
    assert all(fe.fqdn not in subject for fe in lab.config.front_ends)
