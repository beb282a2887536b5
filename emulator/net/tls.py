"""Strict TLS as a phone does it: only the CA its image trusts, the host name, its own clock.

Rules of this module:
- OpenSSL does the handshake but none of the certificate checks, because it can only
  judge validity by the machine's clock and a phone judges it by its own (which may be
  wrong on purpose). The checks run with cryptography's verifier (`PolicyBuilder`) on the
  chain the server sent, at the phone's time, for the host name the phone asked for.
- They run inside the handshake (`CheckedSSLObject.do_handshake`), so a connection that
  fails them never finishes it: no request, and no credentials, are ever written to it.
- A failure is a CertificateError naming the host and what is wrong in plain words
  (untrusted issuer, not yet valid or expired by the phone's clock, name not on the
  certificate); the verifier's own wording is only the last resort.
- A chain that passed for a host keeps passing for it while the phone's time lies where
  every certificate involved (sent or trusted) is valid: nothing else the verifier
  checks depends on the time. Such a check is answered from memory; any other time, or
  another chain, is verified in full.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from emulator.errors import CertificateError, CertificateProblem

# The DER form for the certificates of an SSL object's chain (the ssl module keeps it private).
_ENCODING_DER = 2

PhoneTime = Callable[[], datetime]
"""Where the checks read the phone's time: an aware UTC date."""
PASSED_CHAINS = 256
"""How many (host, chain) pairs that passed a checker remembers (a lab has a few servers)."""


def format_time(when: datetime) -> str:
    """A date as certificate errors write it (``2010-01-01T00:00:00Z``)."""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateChecker:
    """Checks a server's chain as the phone does: trusted CA, host name, dates at phone time."""

    def __init__(self, trusted: Sequence[x509.Certificate], phone_time: PhoneTime) -> None:
        self.trusted = tuple(trusted)
        self.phone_time = phone_time
        self._store = Store(list(self.trusted)) if self.trusted else None
        self._passed: dict[tuple[str, tuple[bytes, ...]], tuple[datetime, datetime]] = {}

    @classmethod
    def from_file(cls, path: Path, phone_time: PhoneTime) -> CertificateChecker:
        """Trust the CA certificate(s) in a PEM file (the lease's ``ca_cert``)."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise CertificateError(
                "(any server)", f"the phone cannot read its trusted CA {path}: {exc.strerror}"
            ) from None
        try:
            trusted = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise CertificateError(
                "(any server)", f"the phone's trusted CA {path} is not a PEM certificate: {exc}"
            ) from None
        return cls(trusted, phone_time)

    def check(self, host: str, chain: Sequence[bytes]) -> None:
        """Raise CertificateError unless ``chain`` (DER, leaf first) is good for ``host`` now."""
        if not chain:
            raise CertificateError(host, "the server sent no certificate")
        now = self.phone_time()
        key = (host, tuple(chain))
        window = self._passed.get(key)
        if window is not None and window[0] <= now <= window[1]:
            return
        try:
            leaf, *intermediates = (x509.load_der_x509_certificate(der) for der in chain)
        except ValueError as exc:
            raise CertificateError(
                host, f"the server's certificate cannot be read: {exc}"
            ) from None
        if self._store is None:
            raise CertificateError(host, "the phone trusts no CA, so it can trust no server")
        try:
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(now)
                .build_server_verifier(x509.DNSName(host))
            )
            verifier.verify(leaf, intermediates)
        except (VerificationError, ValueError) as exc:
            kind, problem = self._explain(host, leaf, intermediates, now, exc)
            raise CertificateError(host, problem, kind=kind) from None
        involved = [leaf, *intermediates, *self.trusted]
        if len(self._passed) >= PASSED_CHAINS:
            self._passed.clear()
        self._passed[key] = (
            max(c.not_valid_before_utc for c in involved),
            min(c.not_valid_after_utc for c in involved),
        )

    def _explain(
        self,
        host: str,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        now: datetime,
        exc: Exception,
    ) -> tuple[CertificateProblem, str]:
        """The first check the chain fails, and it in the words a support engineer would use."""
        path = _issuer_path(leaf, [*intermediates, *self.trusted])
        if path[-1] not in self.trusted:
            return CertificateProblem.UNTRUSTED_ISSUER, (
                f"issued by {_common_name(path[-1].issuer)}, a CA the phone does not trust "
                f"(it trusts {', '.join(_common_name(c.subject) for c in self.trusted)})"
            )
        for cert in path:
            which = (
                "certificate" if cert is leaf else f"CA certificate {_common_name(cert.subject)}"
            )
            if now < cert.not_valid_before_utc:
                return CertificateProblem.NOT_YET_VALID, (
                    f"{which} is not yet valid by the phone's clock ({format_time(now)}; "
                    f"valid from {format_time(cert.not_valid_before_utc)})"
                )
            if now > cert.not_valid_after_utc:
                return CertificateProblem.EXPIRED, (
                    f"{which} expired by the phone's clock ({format_time(now)}; "
                    f"valid until {format_time(cert.not_valid_after_utc)})"
                )
        names = _dns_names(leaf)
        if not _name_matches(host, names):
            problem = f"name not on the certificate (names: {', '.join(names) or 'none'})"
            return CertificateProblem.NAME_MISMATCH, problem
        return CertificateProblem.UNUSABLE, f"the certificate does not verify: {exc}"


class CheckedSSLObject(ssl.SSLObject):
    """An SSLObject that runs the phone's certificate checks as the last step of the handshake."""

    def do_handshake(self) -> None:
        """Finish the handshake, then check the server's chain before anything is sent on it."""
        super().do_handshake()
        context = self.context
        if self.server_side or not isinstance(context, PhoneTLSContext):
            return
        host = self.server_hostname or ""
        try:
            context.checker.check(host, self._peer_chain())
        except CertificateError as exc:
            context.rejections.append(exc)
            raise PhoneCertificateRejected(exc) from None

    def _peer_chain(self) -> list[bytes]:
        # The whole chain the server sent (leaf first, then any intermediate CAs) when the
        # runtime can say; otherwise the leaf, which is all the lab's servers send anyway.
        sent = getattr(self._sslobj, "get_unverified_chain", None)  # type: ignore[attr-defined]
        chain = sent() if sent is not None else None
        if chain:
            return [cert.public_bytes(_ENCODING_DER) for cert in chain]
        leaf = self.getpeercert(binary_form=True)
        return [leaf] if leaf else []


class PhoneCertificateRejected(ssl.SSLCertVerificationError):
    """Carries a CertificateError through the TLS stack (which only passes on ssl errors)."""

    def __init__(self, error: CertificateError) -> None:
        super().__init__(1, error.problem)
        self.error = error
        self.verify_message = error.problem


class PhoneTLSContext(ssl.SSLContext):
    """A client TLS context (1.2 or later) whose handshakes end with the phone's checks."""

    checker: CertificateChecker
    rejections: list[CertificateError]
    """Every certificate refused, in order (a caller clears it before a request)."""
    sslobject_class = CheckedSSLObject


def phone_context(checker: CertificateChecker) -> PhoneTLSContext:
    """The TLS client context of one phone, checking with ``checker``."""
    context = PhoneTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Every check is the checker's, at the phone's time: OpenSSL must not judge by its own.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.checker = checker
    context.rejections = []
    # The convention of browsers and curl: with SSLKEYLOGFILE set, the session keys go
    # there in the NSS key log format, so a capture of the phone's traffic can be read.
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        context.keylog_filename = keylog
    return context


def _issuer_path(leaf: x509.Certificate, issuers: list[x509.Certificate]) -> list[x509.Certificate]:
    """The leaf and the chain of issuers found for it, up to a self-signed CA or a dead end."""
    path = [leaf]
    while len(path) <= len(issuers):
        parent = next((c for c in issuers if c not in path and _issued_by(path[-1], c)), None)
        if parent is None:
            break
        path.append(parent)
    return path


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]


def _name_matches(host: str, names: list[str]) -> bool:
    host = host.rstrip(".").lower()
    for name in (n.lower() for n in names):
        if name == host:
            return True
        # A wildcard stands for exactly one leftmost label.
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else name.rfc4514_string()
