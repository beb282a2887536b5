"""NTLM for the service's sites: the lab directory's accounts, lockout, one context per connection.

Rules of this module:
- The acceptor is pyspnego's NTLM (``spnego.server(protocol="ntlm")``, the pure-Python
  implementation). It looks accounts up in a credential file named by the process-wide
  ``NTLM_USER_FILE`` variable and offers no other way to be given hashes, so the
  directory's NT hashes (never passwords) are written to one private file per process
  (mode 0600 in a 0700 temp directory), shared by every running directory and removed when
  the last one closes. Two directories that disagree on an account's hash are refused.
- Only NTLMv2 answers are accepted: the file holds no LM hash, and an LM or NTLMv1 answer
  could otherwise be checked against the placeholder. The AUTHENTICATE message is read
  here (MS-NLMP 2.2.1.3) before pyspnego sees it, for that and to know whose account a
  failure counts against.
- A context lives on one connection (NTLM authenticates the connection, not a request);
  a NEGOTIATE message starts a new one, whatever state the connection was in.
- Lockout: ``threshold`` failures within ``window`` seconds lock the account for ``window``
  seconds; a locked account is refused (403) even with the right password. Time comes
  from an injectable clock.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import spnego
from spnego.exceptions import SpnegoError

from lab.config import User
from lab.errors import ServiceError
from lab.fileio import write_atomic

ENV_VAR = "NTLM_USER_FILE"
SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE = 1
CHALLENGE = 2
AUTHENTICATE = 3
_UNICODE = 0x00000001
_NTLMV1_RESPONSE_SIZE = 24


@dataclass(frozen=True)
class LockoutPolicy:
    """Account lockout: ``threshold`` failures within ``window`` seconds lock for ``window``."""

    threshold: int = 5
    window: float = 300.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ServiceError(f"lockout threshold {self.threshold} must be at least 1")
        if self.window <= 0:
            raise ServiceError(f"lockout window {self.window} must be more than 0 seconds")


@dataclass(frozen=True)
class AuthenticateInfo:
    """What an AUTHENTICATE message says about who is signing in and how."""

    domain: str
    user: str
    ntlmv2: bool


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


def token_type(token: bytes) -> int:
    """The NTLM message type of ``token`` (1, 2 or 3); 0 when it is no NTLM message."""
    if len(token) < 12 or not token.startswith(SIGNATURE):
        return 0
    kind: int = struct.unpack_from("<I", token, 8)[0]
    return kind if kind in (NEGOTIATE, CHALLENGE, AUTHENTICATE) else 0


def read_authenticate(token: bytes) -> AuthenticateInfo:
    """Domain, user and answer kind of an AUTHENTICATE message; ValueError when malformed."""
    if token_type(token) != AUTHENTICATE or len(token) < 64:
        raise ValueError("not an NTLM AUTHENTICATE message")
    flags: int = struct.unpack_from("<I", token, 60)[0]
    encoding = "utf-16-le" if flags & _UNICODE else "cp437"

    def field(offset: int) -> bytes:
        length, _, start = struct.unpack_from("<HHI", token, offset)
        if start + length > len(token):
            raise ValueError("an NTLM AUTHENTICATE field points past the message")
        return token[start : start + length]

    nt_response = field(20)
    try:
        domain = field(28).decode(encoding)
        user = field(36).decode(encoding)
    except UnicodeDecodeError:
        raise ValueError("the NTLM AUTHENTICATE names are not valid text") from None
    return AuthenticateInfo(domain, user, len(nt_response) > _NTLMV1_RESPONSE_SIZE)


def parse_authorization(header: str) -> bytes | None:
    """The token of an ``Authorization: NTLM <base64>`` header, or None for anything else."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "ntlm" or not value.strip():
        return None
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class _CredentialFile:
    """The process's NTLM_USER_FILE: the union of every open directory's accounts."""

    def __init__(self) -> None:
        self._owners: dict[int, dict[tuple[str, str], str]] = {}
        self._dir: Path | None = None
        self._previous: str | None = None

    def register(self, owner: int, entries: dict[tuple[str, str], str]) -> None:
        merged = self._merged()
        for key, nt_hash in entries.items():
            if merged.get(key, nt_hash) != nt_hash:
                domain, user = key
                who = f"{domain}\\{user}" if domain else user
                raise ServiceError(
                    f"account {who} is already open in this process with another NT hash"
                )
        self._owners[owner] = entries
        self._write()

    def unregister(self, owner: int) -> None:
        if self._owners.pop(owner, None) is None:
            return
        if self._owners:
            self._write()
            return
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self._previous

    @property
    def path(self) -> Path | None:
        return None if self._dir is None else self._dir / "ntlm-users"

    def _merged(self) -> dict[tuple[str, str], str]:
        merged: dict[tuple[str, str], str] = {}
        for entries in self._owners.values():
            merged.update(entries)
        return merged

    def _write(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="lab-ntlm-"))
            self._previous = os.environ.get(ENV_VAR)
        path = self._dir / "ntlm-users"
        # smbpasswd form: NAME:UID:LM:NT:FLAGS:TIME; the LM hash is a placeholder that
        # read_authenticate's NTLMv2-only rule keeps from ever being checked.
        lines = [
            f"{domain}\\{user}:0:{'0' * 32}:{nt_hash.upper()}:[U]:LCT-00000000"
            if domain
            else f"{user}:0:{'0' * 32}:{nt_hash.upper()}:[U]:LCT-00000000"
            for (domain, user), nt_hash in sorted(self._merged().items())
        ]
        write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"), 0o600)
        os.environ[ENV_VAR] = str(path)


_FILE = _CredentialFile()


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class Directory:
    """The lab's user directory as NTLM sees it: accounts, credential file and lockout."""

    def __init__(
        self,
        users: Sequence[User],
        *,
        lockout: LockoutPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = tuple(users)
        self.lockout = lockout or LockoutPolicy()
        self._clock = clock
        self._failures: dict[str, _Failures] = {}
        self._open = False

    def open(self) -> None:
        """Publish the accounts to the acceptor (idempotent)."""
        if self._open:
            return
        entries: dict[tuple[str, str], str] = {}
        for user in self.users:
            # The forms a client may sign in with: DOMAIN\name, a bare name, the UPN.
            for key in ((user.domain.upper(), user.name), ("", user.name), ("", user.upn)):
                entries[(key[0], key[1].lower())] = user.nt_hash
        _FILE.register(id(self), entries)
        self._open = True

    def close(self) -> None:
        """Withdraw the accounts; the credential file goes with the last directory."""
        if self._open:
            _FILE.unregister(id(self))
            self._open = False

    @property
    def credential_file(self) -> Path | None:
        """Where the process's credential file is while any directory is open."""
        return _FILE.path

    def find(self, domain: str, name: str) -> User | None:
        """The account a client means by ``domain`` and ``name`` (a name or a UPN)."""
        domain = domain.strip().upper()
        name = name.strip().lower()
        for user in self.users:
            if not domain and name == user.upn.lower():
                return user
            if name == user.name.lower() and domain in ("", user.domain.upper()):
                return user
        return None

    def is_locked(self, user: User) -> bool:
        """True while ``user``'s account is locked out."""
        record = self._failures.get(user.name.lower())
        return record is not None and self._clock() < record.locked_until

    def record_failure(self, user: User) -> bool:
        """Count a failed sign-in against ``user``; True when the account is now locked."""
        now = self._clock()
        record = self._failures.setdefault(user.name.lower(), _Failures())
        record.times = [t for t in record.times if now - t < self.lockout.window]
        record.times.append(now)
        if len(record.times) >= self.lockout.threshold:
            record.locked_until = now + self.lockout.window
            record.times.clear()
            return True
        return False

    def record_success(self, user: User) -> None:
        """A good sign-in clears the failures counted so far."""
        self._failures.pop(user.name.lower(), None)

    def unlock(self, user: User) -> None:
        """Lift a lockout (what an administrator would do)."""
        self._failures.pop(user.name.lower(), None)

    def session(self) -> NtlmSession:
        """A fresh per-connection NTLM state."""
        return NtlmSession(self)

    def __enter__(self) -> Directory:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NtlmSession:
    """NTLM on one connection: NEGOTIATE -> CHALLENGE -> AUTHENTICATE, then a user."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._context: spnego.ContextProxy | None = None
        self.user: User | None = None

    def step(self, token: bytes) -> NtlmOutcome:
        """Feed one client token; the outcome says what to answer."""
        kind = token_type(token)
        if kind == NEGOTIATE:
            return self._negotiate(token)
        if kind == AUTHENTICATE:
            return self._authenticate(token)
        self.reset()
        return Rejected("the Authorization header holds no NTLM NEGOTIATE or AUTHENTICATE message")

    def reset(self) -> None:
        """Forget any handshake and any user on this connection."""
        self._context = None
        self.user = None

    def _negotiate(self, token: bytes) -> NtlmOutcome:
        self.reset()
        if not self._directory._open:
            raise ServiceError("the NTLM directory is not open; open() it before serving")
        context = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        try:
            challenge = context.step(token)
        except (SpnegoError, ValueError, struct.error) as exc:
            return Rejected(f"the NTLM NEGOTIATE message was refused: {_message(exc)}")
        if not challenge:
            return Rejected("the NTLM NEGOTIATE message produced no challenge")
        self._context = context
        return Challenge(challenge)

    def _authenticate(self, token: bytes) -> NtlmOutcome:
        context, self._context = self._context, None
        if context is None:
            return Rejected("NTLM AUTHENTICATE without a NEGOTIATE on this connection")
        try:
            info = read_authenticate(token)
        except (ValueError, struct.error) as exc:
            return Rejected(f"malformed NTLM AUTHENTICATE message: {exc}")
        who = f"{info.domain}\\{info.user}" if info.domain else info.user
        user = self._directory.find(info.domain, info.user)
        if user is not None and self._directory.is_locked(user):
            return Rejected(f"account {who} is locked out after failed sign-ins", locked=True)
        if not info.ntlmv2:
            return self._failed(user, f"{who}: only NTLMv2 answers are accepted")
        try:
            context.step(token)
        except (SpnegoError, ValueError, struct.error):
            return self._failed(user, f"wrong user name or password for {who}")
        if user is None or not context.complete:
            return self._failed(user, f"no account {who} in the directory")
        self._directory.record_success(user)
        self.user = user
        return Authenticated(user)

    def _failed(self, user: User | None, reason: str) -> Rejected:
        locked = user is not None and self._directory.record_failure(user)
        return Rejected(reason, locked=locked)


def _message(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
