"""NTLM for the service's sites: the lab directory's accounts, lockout, one context per connection.

Rules of this module:
- The acceptor is the lab's own, for NTLMv2 only (MS-NLMP 3.2.5): the CHALLENGE names the
  lab's domain and the front end (``TargetNames``), the AUTHENTICATE answer is checked with
  HMAC-MD5 against the NT hash of the one account its names resolve to, and the message
  integrity code is checked when the client sent one. Libraries that accept NTLM take
  their accounts from a file named by a process-wide variable and describe the host
  machine in their CHALLENGE; this one keeps the hashes in memory, writes nothing to disk,
  and says what the lab is. Clients (the phones, curl, pyspnego) are unchanged.
- The account is resolved once, whatever form the name took (``DOMAIN\\user`` in the user
  field, a user with a domain field, a UPN, any case). That account's hash checks the
  answer, and that account is the one counted, locked and signed in. A wrong password and
  an unknown user get the same answer; a locked account is refused as locked whatever the
  password, so the answer never tells whether a guess was right.
- Lockout (``[directory.lockout]``, Active Directory's recommended policy): ``threshold``
  failures within ``window`` seconds lock an account for ``duration`` seconds. A throttle
  per source address keeps one peer from guessing at speed or locking every account:
  ``address_threshold`` failures within ``window`` refuse that address for
  ``address_duration`` seconds, before any answer is checked. Time comes from an
  injectable clock.
- A context lives on one connection (NTLM authenticates the connection, not a request);
  a NEGOTIATE message starts a new one, whatever state the connection was in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

from lab.clock import utc_now
from lab.net.config import FrontEnd, LabConfig, Lockout, User

SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE = 1
CHALLENGE = 2
AUTHENTICATE = 3

# Negotiate flags (MS-NLMP 2.2.2.5).
UNICODE = 0x00000001
OEM = 0x00000002
REQUEST_TARGET = 0x00000004
SIGN = 0x00000010
SEAL = 0x00000020
NTLM_KEY = 0x00000200
ALWAYS_SIGN = 0x00008000
TARGET_TYPE_DOMAIN = 0x00010000
EXTENDED_SESSION_SECURITY = 0x00080000
TARGET_INFO = 0x00800000
VERSION = 0x02000000
KEY_128 = 0x20000000
KEY_EXCH = 0x40000000
KEY_56 = 0x80000000
# What the acceptor agrees to when the client asks for it.
_OFFERED = SIGN | SEAL | EXTENDED_SESSION_SECURITY | KEY_128 | KEY_EXCH | KEY_56 | VERSION
_ALWAYS = REQUEST_TARGET | NTLM_KEY | ALWAYS_SIGN | TARGET_TYPE_DOMAIN | TARGET_INFO

# AV pair ids (MS-NLMP 2.2.2.1).
AV_EOL = 0
AV_NB_COMPUTER = 1
AV_NB_DOMAIN = 2
AV_DNS_COMPUTER = 3
AV_DNS_DOMAIN = 4
AV_DNS_TREE = 5
AV_FLAGS = 6
AV_TIMESTAMP = 7
AV_FLAG_MIC = 0x2

_NTLMV1_RESPONSE_SIZE = 24
_BLOB_HEADER = 28  # NTProofStr's blob: type, reserved, time stamp, client challenge, reserved
_MIC_OFFSET = 72
_MIC_SIZE = 16
# Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
_FILETIME_EPOCH = 11_644_473_600
# The version a Lync Server 2013 front end (Windows Server 2012 R2) announces.
_WINDOWS_VERSION = struct.pack("<BBH3xB", 6, 3, 9600, 15)

LOGON_FAILURE = "the user name or password is incorrect"
LOCKED_OUT = "the account is locked out after failed sign-ins"
NTLM_OUTCOMES = ("success", "failure", "lockout", "throttled")


@dataclass(frozen=True)
class TargetNames:
    """How a front end describes itself in its CHALLENGE (MS-NLMP 2.2.2.1)."""

    netbios_domain: str
    dns_domain: str
    netbios_computer: str
    dns_computer: str

    @classmethod
    def for_front_end(cls, config: LabConfig, front_end: FrontEnd) -> TargetNames:
        """The lab's domain (the directory's NetBIOS domain, the SIP domain) and the server."""
        domains = [user.domain for user in config.users]
        netbios = max(set(domains), key=domains.count) if domains else config.name.upper()
        return cls(
            netbios_domain=netbios[:15],
            dns_domain=config.sip_domain,
            netbios_computer=front_end.name.upper()[:15],
            dns_computer=front_end.fqdn,
        )


@dataclass(frozen=True)
class AuthenticateInfo:
    """What an AUTHENTICATE message says about who is signing in and how, read once."""

    domain: str
    user: str
    ntlmv2: bool
    flags: int = 0
    nt_response: bytes = b""


class NtlmOutcome:
    """Base of what one NTLM step tells the HTTP layer."""


@dataclass(frozen=True)
class Challenge(NtlmOutcome):
    """Send this CHALLENGE token back with a 401 and wait for the AUTHENTICATE message."""

    token: bytes


@dataclass(frozen=True)
class Authenticated(NtlmOutcome):
    """The connection now belongs to ``user``."""

    user: User


@dataclass(frozen=True)
class Rejected(NtlmOutcome):
    """Authentication failed; ``locked`` when the account is (now) locked out."""

    reason: str
    locked: bool = False


@dataclass(frozen=True)
class Throttled(NtlmOutcome):
    """The client's address failed too often: refused for ``retry_after`` seconds."""

    address: str
    retry_after: int


def token_type(token: bytes) -> int:
    """The NTLM message type of ``token`` (1, 2 or 3); 0 when it is no NTLM message."""
    if len(token) < 12 or not token.startswith(SIGNATURE):
        return 0
    kind: int = struct.unpack_from("<I", token, 8)[0]
    return kind if kind in (NEGOTIATE, CHALLENGE, AUTHENTICATE) else 0


def _field(token: bytes, offset: int) -> bytes:
    """The payload a (length, maximum, offset) field at ``offset`` points to."""
    length, _, start = struct.unpack_from("<HHI", token, offset)
    if start + length > len(token):
        raise ValueError("an NTLM AUTHENTICATE field points past the message")
    return token[start : start + length]


def read_authenticate(token: bytes) -> AuthenticateInfo:
    """Domain, user and answer kind of an AUTHENTICATE message; ValueError when malformed."""
    if token_type(token) != AUTHENTICATE or len(token) < 64:
        raise ValueError("not an NTLM AUTHENTICATE message")
    flags: int = struct.unpack_from("<I", token, 60)[0]
    encoding = "utf-16-le" if flags & UNICODE else "cp437"
    nt_response = _field(token, 20)
    try:
        domain = _field(token, 28).decode(encoding)
        user = _field(token, 36).decode(encoding)
    except UnicodeDecodeError:
        raise ValueError("the NTLM AUTHENTICATE names are not valid text") from None
    return AuthenticateInfo(
        domain=domain,
        user=user,
        ntlmv2=len(nt_response) > _NTLMV1_RESPONSE_SIZE,
        flags=flags,
        nt_response=nt_response,
    )


def parse_authorization(header: str) -> bytes | None:
    """The token of an ``Authorization: NTLM <base64>`` header, or None for anything else."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "ntlm" or not value.strip():
        return None
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def account_name(domain: str, user: str) -> tuple[str, str]:
    """(domain, name) meant by an AUTHENTICATE message's fields; domain "" for a UPN."""
    if "\\" in user:
        prefix, _, user = user.partition("\\")
        domain = domain or prefix
    if "@" in user:
        return "", user
    return domain, user


def _av_pairs(names: TargetNames, now: float) -> bytes:
    pairs = b""
    for av_id, text in (
        (AV_NB_COMPUTER, names.netbios_computer),
        (AV_NB_DOMAIN, names.netbios_domain),
        (AV_DNS_COMPUTER, names.dns_computer),
        (AV_DNS_DOMAIN, names.dns_domain),
        (AV_DNS_TREE, names.dns_domain),
    ):
        value = text.encode("utf-16-le")
        pairs += struct.pack("<HH", av_id, len(value)) + value
    filetime = int((now + _FILETIME_EPOCH) * 10_000_000)
    pairs += struct.pack("<HHQ", AV_TIMESTAMP, 8, filetime)
    return pairs + struct.pack("<HH", AV_EOL, 0)


def _read_av_pairs(data: bytes) -> dict[int, bytes]:
    pairs: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        av_id, length = struct.unpack_from("<HH", data, offset)
        if av_id == AV_EOL:
            break
        pairs[av_id] = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
    return pairs


def challenge_message(
    negotiate_flags: int, names: TargetNames, server_challenge: bytes, timestamp: float
) -> bytes:
    """A CHALLENGE message (MS-NLMP 2.2.1.2) answering a NEGOTIATE with ``negotiate_flags``,
    its MsvAvTimestamp ``timestamp`` (seconds since the Unix epoch, the service's clock)."""
    flags = (negotiate_flags & _OFFERED) | _ALWAYS
    flags |= UNICODE if negotiate_flags & UNICODE else OEM
    encoding = "utf-16-le" if flags & UNICODE else "cp437"
    target = names.netbios_domain.encode(encoding)
    info = _av_pairs(names, timestamp)
    header = 56
    return b"".join(
        (
            SIGNATURE,
            struct.pack("<I", CHALLENGE),
            struct.pack("<HHI", len(target), len(target), header),
            struct.pack("<I", flags),
            server_challenge,
            b"\x00" * 8,
            struct.pack("<HHI", len(info), len(info), header + len(target)),
            _WINDOWS_VERSION,
            target,
            info,
        )
    )


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


def _rc4(key: bytes, data: bytes) -> bytes:
    return Cipher(ARC4(key), mode=None).encryptor().update(data)


def verify_ntlmv2(
    negotiate: bytes,
    challenge: bytes,
    authenticate: bytes,
    info: AuthenticateInfo,
    nt_hash: bytes,
) -> bool:
    """Whether ``authenticate`` (read into ``info``) answers ``challenge`` with the
    password of ``nt_hash``.

    NTOWFv2 is keyed by the user and domain exactly as the client sent them (MS-NLMP
    3.3.2); when the client's AV pairs say a MIC is present it must match too.
    """
    server_challenge = challenge[24:32]
    flags = info.flags
    proof, blob = info.nt_response[:16], info.nt_response[16:]
    if len(blob) < _BLOB_HEADER:
        return False
    response_key = _hmac_md5(nt_hash, (info.user.upper() + info.domain).encode("utf-16-le"))
    if not hmac.compare_digest(proof, _hmac_md5(response_key, server_challenge + blob)):
        return False
    av_flags = _read_av_pairs(blob[_BLOB_HEADER:]).get(AV_FLAGS, b"\x00\x00\x00\x00")
    if not int.from_bytes(av_flags[:4].ljust(4, b"\x00"), "little") & AV_FLAG_MIC:
        return True
    if len(authenticate) < _MIC_OFFSET + _MIC_SIZE:
        return False
    session_key = _hmac_md5(response_key, proof)
    if flags & KEY_EXCH and flags & (SIGN | SEAL):
        session_key = _rc4(session_key, _field(authenticate, 52))
    mic = authenticate[_MIC_OFFSET : _MIC_OFFSET + _MIC_SIZE]
    blanked = (
        authenticate[:_MIC_OFFSET] + b"\x00" * _MIC_SIZE + authenticate[_MIC_OFFSET + _MIC_SIZE :]
    )
    expected = _hmac_md5(session_key, negotiate + challenge + blanked)
    return hmac.compare_digest(mic, expected)


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class Directory:
    """The lab's user directory as NTLM sees it: accounts, lockout and the address throttle."""

    def __init__(
        self,
        users: Sequence[User],
        *,
        lockout: Lockout | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        on_lockout: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.users = tuple(users)
        self.lockout = lockout or Lockout()
        self._clock = clock
        # The service's wall clock: the time a CHALLENGE carries.
        self.now = now
        # Told (kind "account" or "address", who, seconds) when a lockout begins.
        self._on_lockout = on_lockout
        self._accounts: dict[str, _Failures] = {}
        self._addresses: dict[str, _Failures] = {}
        # Sign-ins since start: good, failed, accounts locked by a failure, throttled tries.
        self.outcomes: Counter[str] = Counter(dict.fromkeys(NTLM_OUTCOMES, 0))
        self._hashes = {user.name.lower(): bytes.fromhex(user.nt_hash) for user in self.users}
        # An unknown user's answer is checked too, against this, so that it takes as long.
        self._nobody = os.urandom(16)

    def find(self, domain: str, name: str) -> User | None:
        """The account a client means by ``domain`` and ``name`` (a name or a UPN)."""
        domain, name = account_name(domain.strip(), name.strip())
        domain, name = domain.upper(), name.lower()
        for user in self.users:
            if not domain and name == user.upn.lower():
                return user
            if name == user.name.lower() and domain in ("", user.domain.upper()):
                return user
        return None

    # -- lockout -----------------------------------------------------------------------

    def is_locked(self, user: User) -> bool:
        """True while ``user``'s account is locked out."""
        return self._blocked(self._accounts, user.name.lower()) > 0

    def address_blocked(self, address: str) -> float:
        """Seconds ``address`` is still refused for (0 when it is not)."""
        return self._blocked(self._addresses, address)

    def _blocked(self, table: dict[str, _Failures], key: str) -> float:
        record = table.get(key)
        return 0.0 if record is None else max(0.0, record.locked_until - self._clock())

    def record_failure(self, user: User | None, address: str = "") -> bool:
        """Count a failed sign-in against ``user`` and ``address``; True when the account
        is now locked."""
        policy = self.lockout
        locked = False
        self.outcomes["failure"] += 1
        if user is not None:
            locked = self._count(
                self._accounts, user.name.lower(), policy.threshold, policy.duration, "account"
            )
        if address:
            self._count(
                self._addresses,
                address,
                policy.address_threshold,
                policy.address_duration,
                "address",
            )
        return locked

    def _count(
        self, table: dict[str, _Failures], key: str, threshold: int, duration: float, kind: str
    ) -> bool:
        now = self._clock()
        record = table.setdefault(key, _Failures())
        record.times = [t for t in record.times if now - t < self.lockout.window]
        record.times.append(now)
        if len(record.times) < threshold:
            return False
        record.locked_until = now + duration
        record.times.clear()
        if self._on_lockout is not None:
            self._on_lockout(kind, key, duration)
        return True

    def record_success(self, user: User) -> None:
        """A good sign-in clears the failures counted against the account so far."""
        self.outcomes["success"] += 1
        self._accounts.pop(user.name.lower(), None)

    def unlock(self, user: User) -> None:
        """Lift a lockout (what an administrator would do)."""
        self._accounts.pop(user.name.lower(), None)

    def snapshot(self) -> dict[str, object]:
        """Locked accounts and throttled addresses with the seconds left, for ``lab status``."""

        def left(table: dict[str, _Failures]) -> dict[str, int]:
            return {
                key: round(seconds)
                for key in sorted(table)
                if (seconds := self._blocked(table, key)) > 0
            }

        policy = self.lockout
        return {
            "locked_accounts": left(self._accounts),
            "throttled_addresses": left(self._addresses),
            "policy": {
                "threshold": policy.threshold,
                "window": policy.window,
                "duration": policy.duration,
                "address_threshold": policy.address_threshold,
                "address_duration": policy.address_duration,
            },
        }

    # -- sessions ----------------------------------------------------------------------

    def session(self, names: TargetNames, address: str = "") -> NtlmSession:
        """A fresh per-connection NTLM state for a client at ``address``."""
        return NtlmSession(self, names, address)

    def check(
        self, negotiate: bytes, challenge: bytes, authenticate: bytes, info: AuthenticateInfo
    ) -> tuple[User | None, bool]:
        """The account ``authenticate`` names and whether its answer holds (for it)."""
        user = self.find(info.domain, info.user)
        nt_hash = self._hashes[user.name.lower()] if user is not None else self._nobody
        try:
            good = verify_ntlmv2(negotiate, challenge, authenticate, info, nt_hash)
        except (ValueError, struct.error):
            good = False
        return user, good and user is not None


class NtlmSession:
    """NTLM on one connection: NEGOTIATE -> CHALLENGE -> AUTHENTICATE, then a user."""

    def __init__(self, directory: Directory, names: TargetNames, address: str = "") -> None:
        self._directory = directory
        self._names = names
        self.address = address
        self._negotiate: bytes | None = None
        self._challenge: bytes | None = None
        self.user: User | None = None

    def step(self, token: bytes) -> NtlmOutcome:
        """Feed one client token; the outcome says what to answer."""
        kind = token_type(token)
        if kind == NEGOTIATE:
            return self._negotiate_step(token)
        if kind == AUTHENTICATE:
            return self._authenticate(token)
        self.reset()
        return Rejected("the Authorization header holds no NTLM NEGOTIATE or AUTHENTICATE message")

    def reset(self) -> None:
        """Forget any handshake and any user on this connection."""
        self._negotiate = self._challenge = None
        self.user = None

    def _negotiate_step(self, token: bytes) -> NtlmOutcome:
        self.reset()
        if len(token) < 16:
            return Rejected("the NTLM NEGOTIATE message is too short")
        flags: int = struct.unpack_from("<I", token, 12)[0]
        self._negotiate = token
        timestamp = self._directory.now().timestamp()
        self._challenge = challenge_message(flags, self._names, os.urandom(8), timestamp)
        return Challenge(self._challenge)

    def _authenticate(self, token: bytes) -> NtlmOutcome:
        negotiate, challenge = self._negotiate, self._challenge
        self._negotiate = self._challenge = None
        if negotiate is None or challenge is None:
            return Rejected("NTLM AUTHENTICATE without a NEGOTIATE on this connection")
        directory = self._directory
        # A throttled address is refused before its answer is looked at: no guess counts.
        blocked = directory.address_blocked(self.address) if self.address else 0.0
        if blocked > 0:
            directory.outcomes["throttled"] += 1
            return Throttled(self.address, max(1, round(blocked)))
        try:
            info = read_authenticate(token)
        except (ValueError, struct.error) as exc:
            return Rejected(f"malformed NTLM AUTHENTICATE message: {exc}")
        if not info.ntlmv2:
            user, good = directory.find(info.domain, info.user), False
            reason = "only NTLMv2 answers are accepted"
        else:
            user, good = directory.check(negotiate, challenge, token, info)
            reason = LOGON_FAILURE
        if user is not None and directory.is_locked(user):
            # Refused as locked whatever the answer; the guess still counts for the address.
            directory.record_failure(None, self.address)
            return Rejected(LOCKED_OUT, locked=True)
        if not good or user is None:
            return self._failed(user, reason)
        directory.record_success(user)
        self.user = user
        return Authenticated(user)

    def _failed(self, user: User | None, reason: str) -> NtlmOutcome:
        locked = self._directory.record_failure(user, self.address)
        if locked:
            self._directory.outcomes["lockout"] += 1
            return Rejected(LOCKED_OUT, locked=True)
        return Rejected(reason)
