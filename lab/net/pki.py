"""The lab PKI: a root CA, TLS certificates for the front ends and the edge, vendor signing keys.

Rules of this module, all in one place:
- Everything lives in one directory (``config.pki.dir`` unless another is given) and is made
  on first use: ``ca.pem ca.key servers/<fe>.pem|.key edge.pem|.key vendors/<V>.pem|.key
  faulty/<fault>-<fe>.pem|.key faulty/edge-<fault>.pem|.key rogue-ca.pem|.key manifest.json``.
- ``manifest.json`` records what each certificate was made for (names, key type, issuer
  fingerprint, ...). An item is reused while its files are intact, its record matches what
  the config asks for now and it stays valid for more than a day; otherwise it is remade.
  Remaking the CA remakes everything it issued.
- Files are written whole (temp file, fsync, ``os.replace``) under a lock on the directory,
  private keys with mode 0600, so a killed process never leaves half a key.
- Faulty certificates for scenarios are made on request; each is faulty in exactly one way.
- Time comes from an injectable ``now`` callable so tests can move the clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.clock import utc_now
from lab.errors import ConfigError, PKIError
from lab.fileio import write_atomic
from lab.net.config import LabConfig

FaultKind = Literal["no-ucupdates-name", "expired", "not-yet-valid", "untrusted-ca"]
FAULTS: tuple[FaultKind, ...] = get_args(FaultKind)
EdgeFaultKind = Literal["no-external-web-name"]
EDGE_FAULTS: tuple[EdgeFaultKind, ...] = get_args(EdgeFaultKind)
VENDORS: tuple[str, ...] = ("Polycom", "Aastra", "HP")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Renew a day ahead so nothing served by a running lab expires under it.
RENEW_BEFORE = timedelta(days=1)
# Host and phone clocks differ a little; a certificate made now must already be valid there.
CLOCK_SKEW = timedelta(hours=1)
# Backdating the CAs keeps the 'expired' variant's whole life inside its issuer's, so that
# variant is faulty only in its own dates.
CA_BACKDATE = timedelta(days=30)
# A CA outlives every certificate it issues by this much.
CA_EXTRA = timedelta(days=3650)
# Firmware already signed must keep verifying, so vendor certificates are long-lived.
VENDOR_LIFETIME = timedelta(days=3650)
# How far the 'expired' and 'not-yet-valid' variants are from now when made; they are
# reused while at least RENEW_BEFORE away, so a phone clock a little off still sees the fault.
FAULT_SHIFT = timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    """A TLS certificate (PEM, leaf only) and its private key, with the names it carries."""

    cert: Path
    key: Path
    names: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS 1.2 or later) presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # No TLS 1.3 session tickets: the lab's phones never resume a session, and each
        # ticket costs the server a part of every handshake.
        context.num_tickets = 0
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise PKIError(
                f"cannot load certificate {self.cert} with key {self.key}: {exc}"
            ) from exc
        return context


@dataclass(frozen=True)
class VendorSigner:
    """A phone vendor's firmware signing key (ECDSA P-256) and self-signed certificate."""

    vendor: str
    cert: Path
    key: Path

    def sign(self, data: bytes) -> bytes:
        """The DER-encoded ECDSA-SHA256 signature of ``data`` by this vendor's key."""
        key = _load_key(self.key)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{self.key}: a vendor signing key must be ECDSA P-256")
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def certificate_pem(self) -> bytes:
        """The vendor's certificate in PEM form, as phones are given it."""
        try:
            return self.cert.read_bytes()
        except OSError as exc:
            raise PKIError(f"cannot read vendor certificate {self.cert}: {exc.strerror}") from exc


def verify_vendor_signature(cert_pem: bytes, data: bytes, signature: bytes) -> None:
    """Raise PKIError unless signature is a valid ECDSA-SHA256 of data by cert_pem's key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PKIError(f"vendor certificate is not a PEM certificate: {exc}") from exc
    public = cert.public_key()
    subject = cert.subject.rfc4514_string()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise PKIError(f"vendor certificate {subject} does not hold an ECDSA P-256 key")
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PKIError(f"signature does not verify with the certificate of {subject}") from None


@dataclass
class _Item:
    """One certificate and key, loaded or just made."""

    cert: x509.Certificate
    key: PrivateKey
    fingerprint: str


class LabPKI:
    """The lab's certificates and keys in one directory, made and renewed on use."""

    def __init__(
        self,
        config: LabConfig,
        directory: Path | None = None,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.directory = Path(directory if directory is not None else config.pki.dir)
        self._now = now or utc_now

    @property
    def ca_cert(self) -> Path:
        """The lab CA certificate (PEM), made first if needed: what phones trust."""
        with self._session() as session:
            session.issuer_ready()
        return self.directory / "ca.pem"

    def ensure(self) -> list[str]:
        """Make or reuse everything; returns the items (re)made, such as ``servers/fe01``."""
        with self._session() as session:
            session.everything()
            return session.made

    def server(self, name: str) -> CertPair:
        """The TLS certificate of the front end ``name`` (short name or FQDN)."""
        fe = self._front_end(name)
        with self._session() as session:
            session.issuer_ready()
            session.server(fe)
        return self._pair(f"servers/{fe}", _front_end_names(self.config, fe))

    def edge(self) -> CertPair:
        """The edge's TLS certificate."""
        with self._session() as session:
            session.issuer_ready()
            session.edge()
        return self._pair("edge", _edge_names(self.config))

    def vendor(self, vendor: str) -> VendorSigner:
        """The signing key and certificate of ``vendor`` (one of VENDORS)."""
        canonical = {v.lower(): v for v in VENDORS}.get(vendor.lower())
        if canonical is None:
            raise PKIError(f"no phone vendor {vendor!r} (known: {', '.join(VENDORS)})")
        with self._session() as session:
            session.vendor(canonical)
        return VendorSigner(canonical, *_paths(self.directory, f"vendors/{canonical}"))

    def faulty(self, fault: FaultKind, server: str) -> CertPair:
        """A certificate for front end ``server`` faulty in exactly the one way ``fault`` names."""
        if fault not in FAULTS:
            raise PKIError(f"no certificate fault {fault!r} (known: {', '.join(FAULTS)})")
        fe = self._front_end(server)
        with self._session() as session:
            session.issuer_ready()
            session.faulty(fault, fe)
        return self._pair(f"faulty/{fault}-{fe}", _fault_names(self.config, fault, fe))

    def faulty_edge(self, fault: EdgeFaultKind) -> CertPair:
        """An edge certificate faulty in exactly the one way ``fault`` names."""
        if fault not in EDGE_FAULTS:
            known = ", ".join(EDGE_FAULTS)
            raise PKIError(f"no edge certificate fault {fault!r} (known: {known})")
        with self._session() as session:
            session.issuer_ready()
            session.faulty_edge(fault)
        return self._pair(f"faulty/edge-{fault}", _edge_fault_names(self.config, fault))

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts only the lab CA and checks host names strictly."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.load_verify_locations(cafile=self.ca_cert)
        return context

    def names_for(self, server: str) -> tuple[str, ...]:
        """The DNS names on front end ``server``'s certificate, its FQDN first."""
        return _front_end_names(self.config, self._front_end(server))

    # -- internals -------------------------------------------------------------------------

    def _front_end(self, name: str) -> str:
        try:
            return self.config.front_end(name.lower()).name
        except ConfigError:
            known = ", ".join(fe.name for fe in self.config.front_ends)
            raise PKIError(f"no front end {name!r} in the lab (known: {known})") from None

    def _pair(self, item: str, names: tuple[str, ...]) -> CertPair:
        return CertPair(*_paths(self.directory, item), names)

    @contextlib.contextmanager
    def _session(self) -> Iterator[_Session]:
        now = self._now()
        if now.tzinfo is None:
            raise PKIError(f"the PKI clock returned {now!r}, which has no time zone")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = (self.directory / ".lock").open("a")
        except OSError as exc:
            raise PKIError(f"cannot use PKI directory {self.directory}: {exc}") from exc
        with lock:
            # Other lab processes may share the directory; one writer at a time keeps a
            # certificate and its key from two different runs.
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield _Session(self.config, self.directory, now.astimezone(UTC).replace(microsecond=0))


class _Session:
    """One locked pass over the PKI directory at one instant."""

    def __init__(self, config: LabConfig, directory: Path, now: datetime) -> None:
        self.config = config
        self.directory = directory
        self.now = now
        self.made: list[str] = []
        self._done: dict[str, _Item] = {}
        self._manifest = self._read_manifest()
        self._remove_stale_temp_files()

    # -- what the lab has -------------------------------------------------------------------

    def everything(self) -> None:
        self.ca()
        for fe in self.config.front_ends:
            self.server(fe.name)
        self.edge()
        for vendor in VENDORS:
            self.vendor(vendor)
        wanted = {fe.name for fe in self.config.front_ends}
        for item, entry in sorted(self._manifest.items()):
            spec = entry.get("spec", {})
            if spec.get("kind") == "faulty-edge" and spec.get("fault") in EDGE_FAULTS:
                self.faulty_edge(spec["fault"])
            if spec.get("kind") not in ("server", "faulty"):
                continue
            if spec.get("server") not in wanted:
                self._forget(item)
            elif spec["kind"] == "faulty" and spec.get("fault") in FAULTS:
                # Faulty variants asked for before are kept current too.
                self.faulty(spec["fault"], spec["server"])

    def issuer_ready(self) -> None:
        self.ca()
        if "ca" in self.made:
            # Whatever the old CA issued no longer verifies: remake all of it now.
            self.everything()

    def ca(self) -> _Item:
        key_type = self.config.pki.key_type
        spec = {"kind": "ca", "subject": f"{self.config.name} Lab Root CA", "key_type": key_type}
        return self._ca_item("ca", spec)

    def server(self, fe: str) -> _Item:
        return self._leaf(f"servers/{fe}", "server", _front_end_names(self.config, fe), server=fe)

    def edge(self) -> _Item:
        return self._leaf("edge", "edge", _edge_names(self.config))

    def vendor(self, vendor: str) -> _Item:
        spec = {"kind": "vendor", "vendor": vendor, "key_type": "ecdsa-p256"}

        def make() -> tuple[x509.Certificate, PrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = _name(f"{vendor} Firmware Signing", vendor)
            cert = (
                _builder(subject, subject, key, self.now - CLOCK_SKEW, self.now + VENDOR_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(digital_signature=True), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            return cert, key

        return self._item(f"vendors/{vendor}", spec, self._current, make)

    def faulty(self, fault: FaultKind, fe: str) -> _Item:
        names = _fault_names(self.config, fault, fe)
        item = f"faulty/{fault}-{fe}"
        if fault == "untrusted-ca":
            # Another subject than the lab CA's, so a verifier finds no issuer at all rather
            # than a bad signature: the phone simply does not know this CA.
            rogue_spec = {
                "kind": "rogue-ca",
                "subject": f"{self.config.name} Rogue CA",
                "key_type": self.config.pki.key_type,
            }
            return self._leaf(
                item,
                "faulty",
                names,
                server=fe,
                fault=fault,
                issuer=self._ca_item("rogue-ca", rogue_spec),
            )
        if fault == "expired":
            return self._leaf(
                item,
                "faulty",
                names,
                server=fe,
                fault=fault,
                window=(self.now - 2 * FAULT_SHIFT, self.now - FAULT_SHIFT),
                fresh=lambda c: self.now - c.not_valid_after_utc >= RENEW_BEFORE,
            )
        if fault == "not-yet-valid":
            start = self.now + FAULT_SHIFT
            return self._leaf(
                item,
                "faulty",
                names,
                server=fe,
                fault=fault,
                window=(start, start + timedelta(days=self.config.pki.validity_days)),
                fresh=lambda c: c.not_valid_before_utc - self.now >= RENEW_BEFORE,
            )
        return self._leaf(item, "faulty", names, server=fe, fault=fault)

    def faulty_edge(self, fault: EdgeFaultKind) -> _Item:
        names = _edge_fault_names(self.config, fault)
        return self._leaf(f"faulty/edge-{fault}", "faulty-edge", names, fault=fault)

    # -- making and reusing ------------------------------------------------------------------

    def _ca_item(self, item: str, spec: dict[str, Any]) -> _Item:
        # The CA must outlive any leaf it may still issue, hence the longer renewal margin.
        margin = timedelta(days=self.config.pki.validity_days) + RENEW_BEFORE

        def fresh(cert: x509.Certificate) -> bool:
            return self._current(cert, margin)

        def make() -> tuple[x509.Certificate, PrivateKey]:
            key = _new_key(spec["key_type"])
            subject = _name(spec["subject"], f"{self.config.name} lab")
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            end = self.now + timedelta(days=self.config.pki.validity_days) + CA_EXTRA
            cert = (
                _builder(subject, subject, key, self.now - CA_BACKDATE, end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                    critical=False,
                )
                .sign(key, hashes.SHA256())
            )
            return cert, key

        return self._item(item, spec, fresh, make)

    def _leaf(
        self,
        item: str,
        kind: str,
        names: tuple[str, ...],
        *,
        server: str | None = None,
        fault: FaultKind | EdgeFaultKind | None = None,
        issuer: _Item | None = None,
        window: tuple[datetime, datetime] | None = None,
        fresh: Callable[[x509.Certificate], bool] | None = None,
    ) -> _Item:
        issuer = issuer or self.ca()
        validity = self.config.pki.validity_days
        spec: dict[str, Any] = {
            "kind": kind,
            "names": list(names),
            "key_type": self.config.pki.key_type,
            "issuer": issuer.fingerprint,
            "validity_days": validity,
        }
        if server is not None:
            spec["server"] = server
        if fault is not None:
            spec["fault"] = fault
        start, end = window or (self.now - CLOCK_SKEW, self.now + timedelta(days=validity))
        # Never outlive the issuer: a verifier would reject the chain for the CA's dates.
        end = min(end, issuer.cert.not_valid_after_utc)

        def make() -> tuple[x509.Certificate, PrivateKey]:
            key = _new_key(self.config.pki.key_type)
            subject = _name(names[0], f"{self.config.name} lab")
            cert = (
                _builder(subject, issuer.cert.subject, key, start, end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    _key_usage(
                        digital_signature=True,
                        # RSA key exchange (TLS 1.2) encrypts to the key.
                        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
                )
                .add_extension(
                    x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                    critical=False,
                )
                .sign(issuer.key, hashes.SHA256())
            )
            return cert, key

        return self._item(item, spec, fresh or self._current, make)

    def _current(self, cert: x509.Certificate, margin: timedelta = RENEW_BEFORE) -> bool:
        return cert.not_valid_before_utc <= self.now < cert.not_valid_after_utc - margin

    def _item(
        self,
        item: str,
        spec: dict[str, Any],
        fresh: Callable[[x509.Certificate], bool],
        make: Callable[[], tuple[x509.Certificate, PrivateKey]],
    ) -> _Item:
        done = self._done.get(item)
        if done is not None:
            return done
        loaded = self._load(item, spec)
        if loaded is None or not fresh(loaded.cert):
            cert, key = make()
            loaded = _Item(cert, key, _fingerprint(cert))
            self._store(item, spec, loaded)
        self._done[item] = loaded
        return loaded

    def _load(self, item: str, spec: dict[str, Any]) -> _Item | None:
        """The item on disk if the manifest made it for ``spec`` and its files are intact."""
        entry = self._manifest.get(item)
        if entry is None or entry.get("spec") != spec:
            return None
        cert_path, key_path = _paths(self.directory, item)
        try:
            if key_path.stat().st_mode & 0o777 != 0o600:
                return None  # a key others could read is no longer private
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = _load_key(key_path)
        except (OSError, ValueError, PKIError):
            return None
        if _fingerprint(cert) != entry.get("fingerprint") or not _same_key(cert, key):
            return None
        return _Item(cert, key, entry["fingerprint"])

    def _store(self, item: str, spec: dict[str, Any], made: _Item) -> None:
        key_pem = made.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_path, key_path = _paths(self.directory, item)
        # Key first: a cert that is on disk without its key fails the key check and is remade.
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, made.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._manifest[item] = {
            "spec": spec,
            "fingerprint": made.fingerprint,
            "not_before": made.cert.not_valid_before_utc.isoformat(),
            "not_after": made.cert.not_valid_after_utc.isoformat(),
        }
        self._write_manifest()
        self.made.append(item)

    def _forget(self, item: str) -> None:
        for path in _paths(self.directory, item):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        del self._manifest[item]
        self._write_manifest()

    # -- the manifest ------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # no manifest or a damaged one: nothing on disk can be trusted as is
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            return {}
        items = data.get("items")
        if not isinstance(items, dict):
            return {}
        return {k: v for k, v in items.items() if isinstance(v, dict)}

    def _write_manifest(self) -> None:
        data = {"format": MANIFEST_FORMAT, "items": self._manifest}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        _write_atomic(self.directory / MANIFEST, text.encode(), 0o644)

    def _remove_stale_temp_files(self) -> None:
        # Left by a writer killed between creating its temp file and os.replace; we hold the
        # lock, so no live writer owns them.
        for pattern in (".*.tmp", "*/.*.tmp"):
            for path in self.directory.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()


# -- helpers -------------------------------------------------------------------------------


def _unique(*names: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _front_end_names(config: LabConfig, fe: str) -> tuple[str, ...]:
    front_end = config.front_end(fe)
    discovery = front_end.pool == config.ucupdates_pool
    published = front_end.pool == config.edge.pool
    return _unique(
        front_end.fqdn,
        front_end.pool,
        *(config.ucupdates_names if discovery else ()),
        # As a Lync front end's certificate does: the external web services are its own too,
        # though outside phones meet the edge's certificate (the edge ends their TLS).
        *((config.edge.external_web,) if published else ()),
    )


def _edge_names(config: LabConfig) -> tuple[str, ...]:
    return _unique(config.edge.fqdn, config.edge.external_web, *config.ucupdates_names)


def _edge_fault_names(config: LabConfig, fault: EdgeFaultKind) -> tuple[str, ...]:
    # "no-external-web-name", the one edge fault: a listener certificate made for the edge's
    # own name and discovery only.
    return tuple(n for n in _edge_names(config) if n != config.edge.external_web)


def _fault_names(config: LabConfig, fault: FaultKind, fe: str) -> tuple[str, ...]:
    names = _front_end_names(config, fe)
    if fault == "no-ucupdates-name":
        names = tuple(n for n in names if n not in config.ucupdates_names)
    return names


def _paths(directory: Path, item: str) -> tuple[Path, Path]:
    """The certificate and key files of ``item`` (such as ``servers/fe01``)."""
    return directory / f"{item}.pem", directory / f"{item}.key"


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise PKIError(f"unknown key type {key_type!r} (known: ecdsa-p256, rsa-2048)")


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{path} holds a {type(key).__name__}, not an ECDSA or RSA key")
    return key


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(common_name: str, organization: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    # X.509 caps a common name at 64 characters; the SAN carries the names that count anyway.
    if len(common_name) <= 64:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, start: datetime, end: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` whole or not at all, with permissions ``mode``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, data, mode)
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc
