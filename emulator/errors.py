"""The emulator's error family: every error the phones raise on purpose derives from EmulatorError.

Foreign errors (cryptography, defusedxml, json) are translated into these where they happen,
so a driver or a test only ever handles one family. Messages say what is wrong in plain words.
"""

from __future__ import annotations

import enum


class EmulatorError(Exception):
    """Base of every error the emulator raises on purpose."""


class ProtocolError(EmulatorError):
    """An event reached the phone core in a state whose transition table does not allow it."""

    def __init__(self, state: str, event: str, problem: str = "") -> None:
        self.state = state
        self.event = event
        self.problem = problem
        detail = problem or "the transition table does not allow it"
        super().__init__(f"event {event} in state {state}: {detail}")


class ClockError(EmulatorError, ValueError):
    """A clock is given settings that make no sense (a scale that is not positive)."""


class SettingsError(EmulatorError, ValueError):
    """Phone settings (intervals, waits, back-off) that make no sense, such as a negative wait."""


class CredentialsError(EmulatorError, ValueError):
    """Credentials given to a phone are incomplete or malformed (an NT hash that is not hex)."""


class ModelError(EmulatorError, ValueError):
    """An unknown phone model, or an index that cannot make a MAC address and serial number."""


class LeaseError(EmulatorError, ValueError):
    """The lease file a lab publishes for its phones is missing, unreadable or incomplete."""


class MalformedAnswerError(EmulatorError, ValueError):
    """An answer from the update service (check, provisioning) is not what the protocol says."""


class FirmwareProblem(enum.StrEnum):
    """What kind of check a refused update failed, for programs that judge a phone's log."""

    NOT_SIGNED = "not-signed"
    """The catalog's signature does not verify with the vendor key the phone trusts."""
    ALTERED = "altered"
    """The image's SHA-256 differs from the one its catalog lists."""
    DOES_NOT_VERIFY = "does-not-verify"
    """Any other check: catalog format, device, size, an unreadable file."""


class FirmwareError(EmulatorError, ValueError):
    """A firmware catalog or image fails a check; the phone must not install it."""

    problem = FirmwareProblem.DOES_NOT_VERIFY
    """Which kind of check failed, as the phone's log records it (each subclass says)."""


class CatalogError(FirmwareError):
    """A catalog is not in the format of docs/firmware-format.md."""


class VendorCertificateError(FirmwareError):
    """The vendor certificate a phone trusts cannot be read or holds the wrong kind of key."""


class SignatureError(FirmwareError):
    """A catalog's signature does not verify with the vendor certificate the phone trusts."""

    problem = FirmwareProblem.NOT_SIGNED


class DeviceMismatchError(FirmwareError):
    """A catalog is for another vendor, model, revision, locale or version than expected."""


class ImageError(FirmwareError):
    """An image's size or SHA-256 differs from its catalog entry, or it cannot be read."""


class ImageAlteredError(ImageError):
    """An image's SHA-256 differs from its catalog entry: altered or corrupt."""

    problem = FirmwareProblem.ALTERED


class NetworkError(EmulatorError):
    """A request over the network failed: no DNS answer, no connection, TLS, or a service error."""


class ResolutionError(NetworkError):
    """A DNS lookup failed; carries the name, the DNS server and what it answered."""

    def __init__(self, message: str, *, name: str, server: str, answer: str) -> None:
        self.name = name
        self.server = server
        self.answer = answer
        """NXDOMAIN, SERVFAIL, REFUSED, NODATA, "no answer", "truncated" or another RCODE."""
        super().__init__(message)


class ConnectError(NetworkError, ConnectionError):
    """A connection to the service was refused, reset, cut or not answered in time."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        self.address = address
        super().__init__(message)


class TLSError(NetworkError):
    """The TLS handshake with a server failed."""

    def __init__(self, message: str, *, host: str) -> None:
        self.host = host
        super().__init__(message)


class CertificateProblem(enum.StrEnum):
    """Which of the phone's checks a server certificate failed."""

    UNTRUSTED_ISSUER = "untrusted-issuer"
    NOT_YET_VALID = "not-yet-valid"
    """Not yet valid by the phone's clock."""
    EXPIRED = "expired"
    """Expired by the phone's clock."""
    NAME_MISMATCH = "name-mismatch"
    """The host name is not on the certificate."""
    UNUSABLE = "unusable"
    """Anything else: no certificate, unreadable, no trusted CA at all."""


class CertificateError(TLSError):
    """A server certificate fails the phone's checks: trusted CA, host name, its clock's date."""

    def __init__(
        self,
        host: str,
        problem: str,
        *,
        address: str | None = None,
        kind: CertificateProblem = CertificateProblem.UNUSABLE,
    ) -> None:
        self.problem = problem
        self.kind = kind
        self.address = address
        where = f" (served by {address})" if address else ""
        super().__init__(f"certificate for {host}: {problem}{where}", host=host)


class NTLMError(NetworkError):
    """The NTLM handshake could not go on (an unusable challenge, or the connection changed)."""


class ServiceStatusError(NetworkError):
    """The service answered with an error status; carries it with the service's own reason."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str | None = None,
        diagnostics: str | None = None,
        retry_after: float | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.reason = reason
        """The reason from ``X-Ms-Diagnostics``, if the service gave one."""
        self.diagnostics = diagnostics
        """The raw ``X-Ms-Diagnostics`` header."""
        self.retry_after = retry_after
        self.body = body
        super().__init__(message)


class CredentialsRefusedError(ServiceStatusError):
    """The service refused an account's credentials at the end of the NTLM handshake (401)."""


class DownloadInterruptedError(NetworkError):
    """A download was cut; carries how far the file got and the ETag, so it can resume."""

    def __init__(self, message: str, *, offset: int, etag: str | None) -> None:
        self.offset = offset
        self.etag = etag
        super().__init__(message)


class DriverError(EmulatorError):
    """A phone's driver cannot go on: the core refused what the driver fed it, or I/O broke it."""


class WaitTimeoutError(DriverError, TimeoutError):
    """A wait for a phone to reach some condition ran past the virtual deadline it was given."""


class FleetError(EmulatorError, ValueError):
    """A fleet or a fault is described with options that make no sense (no phones, bad times)."""
