"""NTLM for the phone's HTTP client: the three legs as tokens, the HTTP headers that carry them.

NTLM authenticates a connection, not a request: NEGOTIATE, CHALLENGE and AUTHENTICATE
must travel over one kept-alive connection (the HTTP client makes sure of that). This
module only makes and reads tokens and headers; pyspnego's own NTLM does the cryptography,
given the account's NT hash (or password) directly, never a credential file or cache.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import Protocol

import spnego
from spnego.exceptions import SpnegoError

from emulator.errors import NTLMError
from emulator.events import Credentials

SCHEME = "NTLM"


class AuthContext(Protocol):
    """One connection's authentication exchange as the client runs it: tokens in, tokens out."""

    def step(self, token: bytes | None = None) -> bytes:
        """The next token to send, given the server's last one (None for the first leg)."""
        ...


AuthFactory = Callable[[Credentials, str], AuthContext]
"""Makes the exchange for an account and the server's host name."""


class NTLMClient:
    """The client side of NTLM (NTLMv2 answers) for one account, over pyspnego."""

    def __init__(self, credentials: Credentials, host: str) -> None:
        self.credentials = credentials
        if credentials.nt_hash is not None:
            secret: spnego.Credential = spnego.NTLMHash(
                username=credentials.account, nt_hash=credentials.nt_hash
            )
        else:
            secret = spnego.Password(
                username=credentials.account, password=credentials.password or ""
            )
        try:
            self._context = spnego.client(
                secret,
                hostname=host,
                service="HTTP",
                protocol="ntlm",
                # Always the pure-Python NTLM: a system GSSAPI would not take an NT hash.
                options=spnego.NegotiateOptions.use_ntlm,
            )
        except SpnegoError as exc:
            raise NTLMError(f"cannot start NTLM for {credentials.account}: {exc}") from None

    @property
    def complete(self) -> bool:
        """Whether the AUTHENTICATE message has been made."""
        return bool(self._context.complete)

    def step(self, token: bytes | None = None) -> bytes:
        """NEGOTIATE first; given the server's CHALLENGE, the AUTHENTICATE message."""
        try:
            out = self._context.step(token)
        except (SpnegoError, ValueError) as exc:
            raise NTLMError(
                f"the NTLM challenge for {self.credentials.account} cannot be answered: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if not out:
            raise NTLMError(f"NTLM for {self.credentials.account} produced no token to send")
        return out


def offered(challenges: Iterable[str]) -> bool:
    """Whether the ``WWW-Authenticate`` headers of an answer offer NTLM."""
    return any(_split(value)[0] == SCHEME.lower() for value in challenges)


def challenge_token(challenges: Iterable[str]) -> bytes | None:
    """The server's CHALLENGE from ``WWW-Authenticate: NTLM <base64>``, if there is one."""
    for value in challenges:
        scheme, data = _split(value)
        if scheme == SCHEME.lower() and data:
            try:
                return base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise NTLMError(
                    f"the server's NTLM challenge is not base64: {data[:40]!r}"
                ) from None
    return None


def authorization(token: bytes) -> str:
    """The ``Authorization`` header value carrying ``token``."""
    return f"{SCHEME} {base64.b64encode(token).decode('ascii')}"


def _split(value: str) -> tuple[str, str]:
    scheme, _, data = value.strip().partition(" ")
    return scheme.lower(), data.strip()
