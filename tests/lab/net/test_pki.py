"""The lab PKI: names, openssl checks, faulty variants, reuse and renewal, vendor keys, TLS."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.errors import PKIError
from lab.net.config import FrontEnd, LabConfig, default_config, default_text, parse_toml
from lab.net.pki import (
    FAULTS,
    VENDORS,
    CertPair,
    FaultKind,
    LabPKI,
    verify_vendor_signature,
)

OPENSSL = "/usr/bin/openssl"
FE01_NAMES = (
    "fe01.contoso.test",
    "pool01.contoso.test",
    "ucupdates-r2.contoso.test",
    "webext.contoso.test",
)
# The Standard Edition server: its pool's FQDN is its own, and it is neither the pool
# ucupdates-r2 names nor the one the edge publishes.
SE01_NAMES = ("se01.contoso.test",)
EDGE_NAMES = ("edge01.contoso.test", "webext.contoso.test", "ucupdates-r2.contoso.test")
SERVERS = ["servers/fe01", "servers/fe02", "servers/se01"]
PLAIN_ITEMS = ["ca", *SERVERS, "edge", *(f"vendors/{v}" for v in VENDORS)]

Snapshot = dict[str, tuple[int, int, bytes]]


# -- helpers ---------------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(path: Path) -> tuple[str, ...]:
    ext = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return tuple(ext.value.get_values_for_type(x509.DNSName))


def openssl_verify(ca: Path, cert: Path, *options: str) -> tuple[int, str]:
    """Run ``openssl verify`` as a TLS server check; returns exit code and all output."""
    done = subprocess.run(
        [OPENSSL, "verify", "-x509_strict", "-purpose", "sslserver", *options, "-CAfile", ca, cert],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def snapshot(directory: Path) -> Snapshot:
    """Every certificate, key and the manifest: (mtime, inode, bytes), to see what was rewritten."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in directory.rglob("*")
        if p.suffix in (".pem", ".key", ".json")
    }


def rewritten(before: Snapshot, after: Snapshot) -> set[str]:
    """The items (``servers/fe01``) whose certificate or key changed, appeared or vanished."""
    return {
        rel.rsplit(".", 1)[0]
        for rel in before.keys() | after.keys()
        if rel != "manifest.json" and before.get(rel) != after.get(rel)
    }


def key_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.key"))


def tls_fetch(pair: CertPair, client: ssl.SSLContext, hostname: str) -> bytes:
    """Serve ``pair`` on a loopback port, connect as ``hostname`` and read the greeting."""
    server_context = pair.server_context()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    with server_context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"hello")
                except (ssl.SSLError, OSError):
                    pass  # the client refused the certificate; it reports why

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname=hostname) as tls,
            ):
                return tls.recv(5)
        finally:
            thread.join(10)


def with_pki(config: LabConfig, **changes: object) -> LabConfig:
    return dataclasses.replace(config, pki=dataclasses.replace(config.pki, **changes))  # type: ignore[arg-type]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> LabConfig:
    return default_config()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, config: LabConfig) -> LabPKI:
    """The default lab's PKI with every faulty variant for fe01, made once for the module."""
    pki = LabPKI(config, tmp_path_factory.mktemp("pki"))
    pki.ensure()
    for fault in FAULTS:
        pki.faulty(fault, "fe01")
    return pki


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory, config: LabConfig) -> Path:
    """A PKI directory holding just what ensure() makes (no faulty variants)."""
    directory = tmp_path_factory.mktemp("plain")
    assert LabPKI(config, directory).ensure() == PLAIN_ITEMS
    return directory


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pki"
    shutil.copytree(source, target)  # copy2 keeps modes and mtimes
    return target


# -- names and openssl -----------------------------------------------------------------------


def test_server_and_edge_certificates_verify_and_carry_the_configured_names(
    pki: LabPKI, config: LabConfig
) -> None:
    assert pki.names_for("fe01") == FE01_NAMES
    assert pki.names_for("fe02.contoso.test") == ("fe02.contoso.test", *FE01_NAMES[1:])
    assert pki.names_for("se01") == SE01_NAMES
    pairs = [pki.server(fe.name) for fe in config.front_ends] + [pki.edge()]
    for pair, names in zip(
        pairs,
        [pki.names_for("fe01"), pki.names_for("fe02"), SE01_NAMES, EDGE_NAMES],
        strict=True,
    ):
        assert pair.names == names
        assert san(pair.cert) == names
        assert openssl_verify(pki.ca_cert, pair.cert) == (0, f"{pair.cert}: OK\n")
        cert = load(pair.cert)
        assert cert.issuer == load(pki.ca_cert).subject
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP256R1)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=397) <= lifetime <= timedelta(days=397, hours=1)


def test_ca_is_a_ca_that_may_sign_certificates(pki: LabPKI) -> None:
    ca = load(pki.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.issuer == ca.subject
    assert pki.ca_cert == pki.directory / "ca.pem"


def test_every_private_key_is_mode_0600(pki: LabPKI) -> None:
    keys = key_files(pki.directory)
    # ca, 3 front ends, edge, 3 vendors, 4 faulty variants and the rogue CA
    assert len(keys) == 13
    assert {oct(k.stat().st_mode & 0o777) for k in keys} == {"0o600"}


def test_certificate_names_follow_the_pool_of_the_front_end(config: LabConfig) -> None:
    # Moving discovery and the edge to se01 moves their names onto its certificate, and off
    # pool01's front ends.
    text = (
        default_text()
        .replace('ucupdates = "pool01.contoso.test"', 'ucupdates = "se01.contoso.test"')
        .replace(
            'pool = "pool01.contoso.test"   # the pool whose', 'pool = "se01"   # the pool whose'
        )
    )
    moved = parse_toml(text, "se01-published.toml")
    assert (moved.ucupdates_pool, moved.edge.pool) == ("se01.contoso.test", "se01.contoso.test")
    pki = LabPKI(moved, Path("unused"))
    assert pki.names_for("se01") == (
        "se01.contoso.test",
        "ucupdates-r2.contoso.test",
        "webext.contoso.test",
    )
    assert pki.names_for("fe01") == ("fe01.contoso.test", "pool01.contoso.test")
    assert pki.names_for("fe02") == ("fe02.contoso.test", "pool01.contoso.test")
    # Discovery and the edge may point at different pools: each name goes its own way.
    split = parse_toml(
        default_text().replace('ucupdates = "pool01.contoso.test"', 'ucupdates = "se01"'),
        "split.toml",
    )
    assert LabPKI(split, Path("unused")).names_for("se01") == (
        "se01.contoso.test",
        "ucupdates-r2.contoso.test",
    )
    assert LabPKI(split, Path("unused")).names_for("fe01") == (
        "fe01.contoso.test",
        "pool01.contoso.test",
        "webext.contoso.test",
    )


def test_both_ucupdates_names_when_dhcp_and_sip_domains_differ(config: LabConfig) -> None:
    text = default_text().replace('dhcp = "contoso.test"', 'dhcp = "branch.contoso.test"')
    two_zones = LabPKI(parse_toml(text, "two-zones.toml"), Path("unused"))
    assert two_zones.names_for("fe01") == (
        "fe01.contoso.test",
        "pool01.contoso.test",
        "ucupdates-r2.branch.contoso.test",
        "ucupdates-r2.contoso.test",
        "webext.contoso.test",
    )


# -- faulty variants -------------------------------------------------------------------------


def test_expired_variant_fails_only_on_its_dates(pki: LabPKI) -> None:
    pair = pki.faulty("expired", "fe01")
    assert pair.cert == pki.directory / "faulty/expired-fe01.pem"
    rc, out = openssl_verify(pki.ca_cert, pair.cert)
    assert rc != 0
    assert "error 10 at 0 depth lookup: certificate has expired" in out
    cert = load(pair.cert)
    assert cert.not_valid_after_utc < datetime.now(UTC)
    during = int(cert.not_valid_before_utc.timestamp()) + 3600
    assert openssl_verify(pki.ca_cert, pair.cert, "-attime", str(during))[0] == 0
    assert san(pair.cert) == pair.names == FE01_NAMES


def test_not_yet_valid_variant_fails_only_on_its_dates(pki: LabPKI) -> None:
    pair = pki.faulty("not-yet-valid", "fe01")
    rc, out = openssl_verify(pki.ca_cert, pair.cert)
    assert rc != 0
    assert "error 9 at 0 depth lookup: certificate is not yet valid" in out
    cert = load(pair.cert)
    assert cert.not_valid_before_utc > datetime.now(UTC)
    during = int(cert.not_valid_before_utc.timestamp()) + 3600
    assert openssl_verify(pki.ca_cert, pair.cert, "-attime", str(during))[0] == 0
    assert san(pair.cert) == pair.names == FE01_NAMES


def test_untrusted_ca_variant_fails_only_on_its_issuer(pki: LabPKI) -> None:
    pair = pki.faulty("untrusted-ca", "fe01")
    rc, out = openssl_verify(pki.ca_cert, pair.cert)
    assert rc != 0
    assert "error 20 at 0 depth lookup: unable to get local issuer certificate" in out
    rogue = pki.directory / "rogue-ca.pem"
    assert openssl_verify(rogue, pair.cert) == (0, f"{pair.cert}: OK\n")
    assert load(rogue).subject != load(pki.ca_cert).subject
    assert san(pair.cert) == pair.names == FE01_NAMES


def test_no_ucupdates_name_variant_verifies_but_lacks_only_those_names(pki: LabPKI) -> None:
    pair = pki.faulty("no-ucupdates-name", "fe01")
    assert openssl_verify(pki.ca_cert, pair.cert) == (0, f"{pair.cert}: OK\n")
    expected = tuple(n for n in FE01_NAMES if not n.startswith("ucupdates-r2."))
    assert san(pair.cert) == pair.names == expected
    rc, out = openssl_verify(
        pki.ca_cert, pair.cert, "-verify_hostname", "ucupdates-r2.contoso.test"
    )
    assert rc != 0
    assert "hostname mismatch" in out
    assert openssl_verify(pki.ca_cert, pair.cert, "-verify_hostname", "fe01.contoso.test")[0] == 0


def test_unknown_names_are_refused_naming_what_is_known(pki: LabPKI) -> None:
    with pytest.raises(PKIError, match=r"'fe09'.*fe01, fe02, se01"):
        pki.server("fe09")
    with pytest.raises(PKIError, match=r"'fe09'.*fe01, fe02, se01"):
        pki.names_for("fe09")
    with pytest.raises(PKIError, match=r"'revoked'.*no-ucupdates-name, expired"):
        pki.faulty("revoked", "fe01")  # type: ignore[arg-type]
    with pytest.raises(PKIError, match=r"'fe09'"):
        pki.faulty("expired", "fe09")
    with pytest.raises(PKIError, match=r"'Cisco'.*Polycom, Aastra, HP"):
        pki.vendor("Cisco")


# -- reuse, config changes, renewal ----------------------------------------------------------


def test_first_ensure_makes_everything_and_a_second_rewrites_nothing(
    tmp_path: Path, config: LabConfig
) -> None:
    pki = LabPKI(config.with_pki_dir(tmp_path / "certs"))
    assert pki.directory == tmp_path / "certs"
    assert pki.ensure() == PLAIN_ITEMS
    before = snapshot(pki.directory)
    assert pki.ensure() == []
    pki.server("fe01")
    pki.edge()
    pki.vendor("HP")
    assert snapshot(pki.directory) == before  # manifest.json included


def test_a_second_lab_object_on_the_same_directory_reuses(plain_dir: Path, tmp_path: Path) -> None:
    directory = copy_of(plain_dir, tmp_path)
    before = snapshot(directory)
    assert LabPKI(default_config(), directory).ensure() == []
    assert snapshot(directory) == before


def _with_first_pool(config: LabConfig, *front_ends: FrontEnd) -> LabConfig:
    """``config`` whose first pool (pool01) has ``front_ends``."""
    first = dataclasses.replace(config.pools[0], front_ends=front_ends)
    return dataclasses.replace(config, pools=(first, *config.pools[1:]))


def _third_front_end(config: LabConfig) -> LabConfig:
    pool = config.pools[0]
    address = ipaddress.IPv4Address("127.10.0.13")
    fe03 = FrontEnd("fe03", "fe03.contoso.test", address, pool.fqdn)
    return _with_first_pool(config, *pool.front_ends, fe03)


def _renamed_domain(config: LabConfig) -> LabConfig:
    return parse_toml(default_text().replace("contoso.test", "fabrikam.test"), "fabrikam.toml")


LEAVES = {*SERVERS, "edge"}


@pytest.mark.parametrize(
    ("change", "remade"),
    [
        pytest.param(_third_front_end, {"servers/fe03"}, id="third-front-end"),
        pytest.param(_renamed_domain, LEAVES, id="renamed-domain"),
        pytest.param(lambda c: with_pki(c, key_type="rsa-2048"), {"ca", *LEAVES}, id="rsa-2048"),
        pytest.param(lambda c: with_pki(c, validity_days=90), LEAVES, id="validity"),
        pytest.param(
            lambda c: dataclasses.replace(
                c, edge=dataclasses.replace(c.edge, external_web="phones.contoso.test")
            ),
            # se01 is not in the pool the edge publishes: its certificate has no such name.
            {"servers/fe01", "servers/fe02", "edge"},
            id="external-web-name",
        ),
        pytest.param(
            lambda c: dataclasses.replace(c, name="fabrikam"), {"ca", *LEAVES}, id="lab-name"
        ),
    ],
)
def test_a_config_change_remakes_exactly_what_no_longer_matches(
    plain_dir: Path,
    tmp_path: Path,
    config: LabConfig,
    change: Callable[[LabConfig], LabConfig],
    remade: set[str],
) -> None:
    directory = copy_of(plain_dir, tmp_path)
    changed = change(config)
    pki = LabPKI(changed, directory)
    before = snapshot(directory)
    made = pki.ensure()
    assert set(made) == remade
    assert rewritten(before, snapshot(directory)) == remade
    assert pki.ensure() == []
    for fe in changed.front_ends:
        pair = pki.server(fe.name)
        assert san(pair.cert) == pki.names_for(fe.name)
        assert openssl_verify(pki.ca_cert, pair.cert)[0] == 0
    assert san(pki.edge().cert) == pki.edge().names
    assert openssl_verify(pki.ca_cert, pki.edge().cert)[0] == 0


def test_renamed_domain_gives_the_new_names(plain_dir: Path, tmp_path: Path) -> None:
    pki = LabPKI(_renamed_domain(default_config()), copy_of(plain_dir, tmp_path))
    assert san(pki.server("fe02").cert) == (
        "fe02.fabrikam.test",
        "pool01.fabrikam.test",
        "ucupdates-r2.fabrikam.test",
        "webext.fabrikam.test",
    )
    assert san(pki.server("se01").cert) == ("se01.fabrikam.test",)
    assert san(pki.edge().cert) == (
        "edge01.fabrikam.test",
        "webext.fabrikam.test",
        "ucupdates-r2.fabrikam.test",
    )


def test_rsa_2048_makes_rsa_keys_everywhere_but_the_vendors(
    plain_dir: Path, tmp_path: Path, config: LabConfig
) -> None:
    pki = LabPKI(with_pki(config, key_type="rsa-2048"), copy_of(plain_dir, tmp_path))
    pki.ensure()
    for path in (pki.ca_cert, pki.server("fe01").cert, pki.edge().cert):
        key = load(path).public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == 2048
    assert isinstance(load(pki.vendor("Polycom").cert).public_key(), ec.EllipticCurvePublicKey)
    assert tls_fetch(pki.server("fe01"), pki.client_context(), "fe01.contoso.test") == b"hello"


def test_a_removed_front_end_is_forgotten(plain_dir: Path, tmp_path: Path) -> None:
    config = default_config()
    directory = copy_of(plain_dir, tmp_path)
    one = _with_first_pool(config, config.front_end("fe01"))
    assert [fe.name for fe in one.front_ends] == ["fe01", "se01"]
    assert LabPKI(one, directory).ensure() == []
    assert not (directory / "servers/fe02.pem").exists()
    assert not (directory / "servers/fe02.key").exists()
    assert "servers/fe02" not in (directory / "manifest.json").read_text()


def test_remaking_the_ca_remakes_everything_it_issued(pki: LabPKI, tmp_path: Path) -> None:
    directory = copy_of(pki.directory, tmp_path)
    (directory / "ca.key").unlink()
    before = snapshot(directory)
    # Asking for one certificate is enough: the rest would no longer verify.
    fresh = LabPKI(pki.config, directory)
    fresh.server("fe02")
    issued = {"ca", *LEAVES, "faulty/expired-fe01", "faulty/not-yet-valid-fe01"}
    issued.add("faulty/no-ucupdates-name-fe01")
    # The vendors are self-signed and the untrusted variant comes from the rogue CA.
    assert rewritten(before, snapshot(directory)) == issued
    for pair in (fresh.server("fe01"), fresh.edge(), fresh.faulty("no-ucupdates-name", "fe01")):
        assert openssl_verify(fresh.ca_cert, pair.cert)[0] == 0


def test_a_damaged_or_exposed_key_is_remade_alone(plain_dir: Path, tmp_path: Path) -> None:
    directory = copy_of(plain_dir, tmp_path)
    (directory / "servers/fe02.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIGH")
    (directory / "vendors/HP.key").chmod(0o644)
    pki = LabPKI(default_config(), directory)
    before = snapshot(directory)
    assert sorted(pki.ensure()) == ["servers/fe02", "vendors/HP"]
    assert rewritten(before, snapshot(directory)) == {"servers/fe02", "vendors/HP"}
    assert {oct(k.stat().st_mode & 0o777) for k in key_files(directory)} == {"0o600"}
    assert openssl_verify(pki.ca_cert, pki.server("fe02").cert)[0] == 0


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    # A directory where the certificate should go makes the final rename fail.
    (directory / "servers/fe01.pem").mkdir(parents=True)
    (directory / "servers/.fe01.key.leftover.tmp").write_bytes(b"half a key")
    pki = LabPKI(default_config(), directory)
    with pytest.raises(PKIError, match=r"cannot write .*servers/fe01\.pem"):
        pki.ensure()
    assert sorted(p.name for p in directory.rglob("*.tmp")) == []
    (directory / "servers/fe01.pem").rmdir()
    assert pki.ensure() == PLAIN_ITEMS[1:]
    assert openssl_verify(pki.ca_cert, pki.server("fe01").cert)[0] == 0


def test_concurrent_ensure_calls_agree(tmp_path: Path, config: LabConfig) -> None:
    directory = tmp_path / "pki"
    start = threading.Barrier(4)
    results: list[list[str]] = []

    def run() -> None:
        start.wait(10)
        results.append(LabPKI(config, directory).ensure())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=len) == [[], [], [], PLAIN_ITEMS]
    pki = LabPKI(config, directory)
    assert pki.ensure() == []
    for fe in config.front_ends:
        assert openssl_verify(pki.ca_cert, pki.server(fe.name).cert)[0] == 0


T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_the_clock_decides_renewal(tmp_path: Path, config: LabConfig) -> None:
    clock = Clock(T0)
    pki = LabPKI(config, tmp_path / "pki", now=clock)
    assert pki.ensure() == PLAIN_ITEMS
    cert = load(pki.server("fe01").cert)
    assert cert.not_valid_before_utc <= T0 < cert.not_valid_after_utc

    clock.at = cert.not_valid_after_utc - timedelta(days=1, seconds=1)
    assert pki.ensure() == []  # more than a day left
    clock.at += timedelta(seconds=1)
    assert pki.ensure() == [*SERVERS, "edge"]  # a day left: renewed
    renewed = load(pki.server("fe01").cert)
    assert renewed.not_valid_after_utc == clock.at + timedelta(days=397)


def test_a_clock_past_expiry_remakes_the_expired(tmp_path: Path, config: LabConfig) -> None:
    clock = Clock(T0)
    pki = LabPKI(config, tmp_path / "pki", now=clock)
    pki.ensure()
    pki.faulty("expired", "fe01")
    pki.faulty("not-yet-valid", "fe01")
    before = snapshot(pki.directory)
    clock.at = T0 + timedelta(days=400)
    made = pki.ensure()
    # The 'expired' variant is still expired; the 'not-yet-valid' one has become valid.
    assert set(made) == {*LEAVES, "faulty/not-yet-valid-fe01"}
    assert rewritten(before, snapshot(pki.directory)) == set(made)
    later = load(pki.faulty("not-yet-valid", "fe01").cert)
    assert later.not_valid_before_utc > clock.at


def test_a_clock_without_time_zone_is_refused(tmp_path: Path, config: LabConfig) -> None:
    pki = LabPKI(config, tmp_path, now=lambda: datetime(2030, 1, 1))
    with pytest.raises(PKIError, match="no time zone"):
        pki.ensure()


# -- vendors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_signature_round_trip(pki: LabPKI, vendor: str) -> None:
    signer = pki.vendor(vendor)
    assert signer.vendor == vendor
    assert signer.cert == pki.directory / f"vendors/{vendor}.pem"
    assert signer.key == pki.directory / f"vendors/{vendor}.key"
    cert = load(signer.cert)
    cert.verify_directly_issued_by(cert)  # self-signed
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    data = b"DEVICE-UPDATE-CATALOG 1\nvendor: " + vendor.encode() + b"\n"
    verify_vendor_signature(signer.certificate_pem(), data, signer.sign(data))


def test_vendor_signatures_are_refused_from_another_key_or_over_other_data(pki: LabPKI) -> None:
    polycom, aastra = pki.vendor("Polycom"), pki.vendor("aastra")
    assert aastra.vendor == "Aastra"
    data = b"file: CPE.nbt 1048576 9f86d081\n"
    signature = polycom.sign(data)
    with pytest.raises(PKIError, match="does not verify"):
        verify_vendor_signature(aastra.certificate_pem(), data, signature)
    with pytest.raises(PKIError, match="does not verify"):
        verify_vendor_signature(polycom.certificate_pem(), data + b"x", signature)
    with pytest.raises(PKIError, match="does not verify"):
        verify_vendor_signature(polycom.certificate_pem(), data, b"not DER")
    with pytest.raises(PKIError, match="not a PEM certificate"):
        verify_vendor_signature(b"garbage", data, signature)


def test_vendor_certificates_must_hold_p256_keys() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "P-384 vendor")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    data = b"catalog"
    signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(PKIError, match="not hold an ECDSA P-256 key"):
        verify_vendor_signature(cert.public_bytes(serialization.Encoding.PEM), data, signature)


# -- TLS over loopback -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "hostname"),
    [*(("fe01", name) for name in FE01_NAMES), *(("se01", name) for name in SE01_NAMES)],
)
def test_tls_handshake_succeeds_for_every_name_on_the_certificate(
    pki: LabPKI, server: str, hostname: str
) -> None:
    assert tls_fetch(pki.server(server), pki.client_context(), hostname) == b"hello"


def test_tls_handshake_with_the_edge_certificate(pki: LabPKI) -> None:
    assert tls_fetch(pki.edge(), pki.client_context(), "edge01.contoso.test") == b"hello"


@pytest.mark.parametrize(
    ("server", "hostname"),
    [
        ("fe01", "fe02.contoso.test"),
        ("fe01", "edge01.contoso.test"),
        ("fe01", "localhost"),
        ("fe01", "se01.contoso.test"),
        # se01 is not the discovery pool nor the one the edge publishes.
        ("se01", "ucupdates-r2.contoso.test"),
        ("se01", "webext.contoso.test"),
        ("se01", "pool01.contoso.test"),
    ],
)
def test_tls_handshake_fails_for_a_name_not_on_the_certificate(
    pki: LabPKI, server: str, hostname: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_fetch(pki.server(server), pki.client_context(), hostname)
    assert info.value.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH


@pytest.mark.parametrize(
    ("fault", "hostname", "verify_code"),
    [
        ("expired", "fe01.contoso.test", 10),
        ("not-yet-valid", "fe01.contoso.test", 9),
        ("untrusted-ca", "fe01.contoso.test", 20),
        ("no-ucupdates-name", "ucupdates-r2.contoso.test", 62),
    ],
)
def test_tls_clients_refuse_each_faulty_variant(
    pki: LabPKI, fault: FaultKind, hostname: str, verify_code: int
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_fetch(pki.faulty(fault, "fe01"), pki.client_context(), hostname)
    assert info.value.verify_code == verify_code


def test_client_context_does_not_trust_the_system_store(pki: LabPKI) -> None:
    context = pki.client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1


def _session_after_handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> bool:
    """Handshake in memory, pass the server's first bytes; whether the client got a ticket."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    phone = client.wrap_bio(to_client, to_server, server_hostname=host)
    front_end = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (phone, front_end):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(to_server.read())
        to_client.write(server_out.read())
    front_end.write(b"hello")
    to_client.write(server_out.read())
    assert phone.read(5) == b"hello"
    session = phone.session
    return session is not None and session.has_ticket


def test_front_ends_send_no_session_tickets(pki: LabPKI) -> None:
    # The lab's phones never resume a TLS session: a ticket would be work for nothing.
    pair = pki.server("fe01")
    host = default_config().front_end("fe01").fqdn
    assert not _session_after_handshake(pair.server_context(), pki.client_context(), host)
    ticketing = pair.server_context()
    ticketing.num_tickets = 2  # what OpenSSL sends by default
    assert _session_after_handshake(ticketing, pki.client_context(), host)
