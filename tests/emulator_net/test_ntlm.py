"""NTLM over the phone's HTTPS client against a real aiohttp TLS server using pyspnego's acceptor.

The server keeps one NTLM context per connection, as the service's external site does, and
looks accounts up in a credential file (smbpasswd form: NT hashes, no passwords). It
records which connection every leg came on, so "one kept-alive connection" is checked on
the server's side.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import spnego
from aiohttp import web
from net_helpers import FE01, INSIDE_PHONE, WebServer
from spnego.exceptions import SpnegoError

from emulator.clock import LoopClock
from emulator.errors import CredentialsRefusedError, NTLMError, ServiceStatusError
from emulator.events import Credentials
from emulator.net import AuthFactory, DNSResolver, NTLMClient, PhoneHTTPSClient
from lab.net.pki import LabPKI

POOL = "pool01.contoso.test"
SIGN_IN = "/Provisioning/signin"
ALICE_NT = "fc525c9683e8fe067095ba2ddc971889"  # Passw0rd!
BOB_NT = "41aed72cec76816423703d8e545eea31"  # Summer2026!
ALICE = Credentials("alice", "CONTOSO", nt_hash=ALICE_NT)
PROVISIONING = b"<provisionGroup name='ServerConfiguration'/>"
IMAGE = bytes(range(256)) * 1000
NEGOTIATE, CHALLENGE, AUTHENTICATE = 1, 2, 3


@pytest.fixture(autouse=True)
def user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The acceptor's credential store: NT hashes only, LM hash a placeholder."""
    path = tmp_path / "ntlm-users"
    lines = [
        f"CONTOSO\\{user}:0:{'0' * 32}:{nt.upper()}:[U]:LCT-00000000"
        for user, nt in (("alice", ALICE_NT), ("bob", BOB_NT))
    ]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(path))
    return path


class NTLMSite:
    """NTLM per connection (keyed by the client's address and port), like an external site."""

    def __init__(self, locked: tuple[str, ...] = (), close_after_challenge: bool = False) -> None:
        self.locked = locked
        self.close_after_challenge = close_after_challenge
        self.legs: list[tuple[tuple[str, int], int]] = []
        self._contexts: dict[tuple[str, int], spnego.ContextProxy] = {}
        self._users: dict[tuple[str, int], str] = {}

    def user(self, request: web.Request) -> str | web.Response:
        """The connection's user, or the 401/403 answer that stands for the next leg."""
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")
        if peer in self._users:
            return self._users[peer]
        header = request.headers.get("Authorization", "")
        if not header.startswith("NTLM "):
            return self._refuse(401, 40101, "NTLM needed", "NTLM")
        token = base64.b64decode(header.removeprefix("NTLM "))
        kind = struct.unpack_from("<I", token, 8)[0]
        self.legs.append((peer, kind))
        if kind == NEGOTIATE:
            context = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
            self._contexts[peer] = context
            challenge = base64.b64encode(context.step(token) or b"").decode()
            response = self._refuse(401, 40101, "answer the challenge", f"NTLM {challenge}")
            if self.close_after_challenge:
                response.force_close()
            return response
        context = self._contexts.pop(peer)
        try:
            context.step(token)
        except SpnegoError:
            return self._refuse(401, 40102, "wrong user name or password", "NTLM")
        user = str(context.client_principal)
        if user in self.locked:
            return self._refuse(403, 40302, f"account {user} is locked out")
        self._users[peer] = user
        return user

    @staticmethod
    def _refuse(status: int, code: int, reason: str, challenge: str | None = None) -> web.Response:
        quoted = reason.replace("\\", "\\\\")  # quoted-string escaping, as the service does
        headers = {"X-Ms-Diagnostics": f'{code};reason="{quoted}"'}
        if challenge is not None:
            headers["WWW-Authenticate"] = challenge
        return web.Response(status=status, text=reason, headers=headers)


def ntlm_app(site: NTLMSite) -> web.Application:
    async def sign_in(request: web.Request) -> web.Response:
        user = site.user(request)
        if isinstance(user, web.Response):
            return user
        return web.Response(body=PROVISIONING, content_type="text/xml", headers={"X-User": user})

    async def image(request: web.Request) -> web.Response:
        user = site.user(request)
        if isinstance(user, web.Response):
            return user
        return web.Response(body=IMAGE, headers={"ETag": '"image"'})

    app = web.Application()
    app.router.add_post(SIGN_IN, sign_in)
    app.router.add_get("/DeviceUpdateFiles_Ext/CPE.nbt", image)
    return app


@pytest.fixture
async def phone(pki: LabPKI, clock: LoopClock) -> AsyncIterator[PhoneHTTPSClient]:
    # Every request names its address, so the resolver is never asked.
    resolver = DNSResolver(("127.10.0.2", 9), INSIDE_PHONE)
    async with PhoneHTTPSClient(
        source=INSIDE_PHONE, resolver=resolver, ca_cert=pki.ca_cert, clock=clock
    ) as client:
        yield client


def start(pki: LabPKI, site: NTLMSite) -> WebServer:
    return WebServer(ntlm_app(site), FE01, pki.server("fe01").server_context())


async def test_right_credentials_are_served_over_one_connection(
    pki: LabPKI, phone: PhoneHTTPSClient
) -> None:
    site = NTLMSite()
    async with start(pki, site) as server:
        answer = await phone.post_xml(
            server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=ALICE
        )

    assert (answer.status, answer.body) == (200, PROVISIONING)
    assert [kind for _, kind in site.legs] == [NEGOTIATE, AUTHENTICATE]
    assert len({peer for peer, _ in site.legs}) == 1
    assert phone.connections_made == 1
    assert [seen.headers.get("Authorization", "")[:5] for seen in server.requests] == [
        "",
        "NTLM ",
        "NTLM ",
    ]


async def test_a_password_works_as_well_as_the_hash(pki: LabPKI, phone: PhoneHTTPSClient) -> None:
    bob = Credentials("bob", "CONTOSO", password="Summer2026!")
    async with start(pki, NTLMSite()) as server:
        answer = await phone.post_xml(
            server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=bob
        )

    assert answer.status == 200


async def test_the_authenticated_connection_serves_the_next_requests(
    pki: LabPKI, phone: PhoneHTTPSClient, tmp_path: Path
) -> None:
    site = NTLMSite()
    async with start(pki, site) as server:
        await phone.post_xml(server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=ALICE)
        result = await phone.download(
            server.url("/DeviceUpdateFiles_Ext/CPE.nbt", host=POOL),
            tmp_path / "CPE.nbt",
            address=FE01,
            credentials=ALICE,
        )

    assert result.size == len(IMAGE)
    assert len(site.legs) == 2  # no second handshake
    assert phone.connections_made == 1


async def test_a_download_after_the_handshake(
    pki: LabPKI, phone: PhoneHTTPSClient, tmp_path: Path
) -> None:
    site = NTLMSite()
    target = tmp_path / "CPE.nbt"
    async with start(pki, site) as server:
        result = await phone.download(
            server.url("/DeviceUpdateFiles_Ext/CPE.nbt", host=POOL),
            target,
            address=FE01,
            credentials=ALICE,
        )

    assert (result.status, result.etag) == (200, '"image"')
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(IMAGE).digest()
    assert [kind for _, kind in site.legs] == [NEGOTIATE, AUTHENTICATE]


async def test_wrong_credentials_are_refused_in_plain_words(
    pki: LabPKI, phone: PhoneHTTPSClient
) -> None:
    wrong = Credentials("alice", "CONTOSO", nt_hash=BOB_NT)
    async with start(pki, NTLMSite()) as server:
        with pytest.raises(CredentialsRefusedError) as caught:
            await phone.post_xml(
                server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=wrong
            )

    assert str(caught.value) == (
        "the service refused the credentials of CONTOSO\\alice (401): wrong user name or password"
    )
    assert (caught.value.status, caught.value.reason) == (401, "wrong user name or password")


async def test_an_unknown_account_is_refused(pki: LabPKI, phone: PhoneHTTPSClient) -> None:
    mallory = Credentials("mallory", "CONTOSO", nt_hash=ALICE_NT)
    async with start(pki, NTLMSite()) as server:
        with pytest.raises(
            CredentialsRefusedError, match=r"refused the credentials of CONTOSO\\mallory \(401\)"
        ):
            await phone.post_xml(
                server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=mallory
            )


async def test_no_credentials_is_a_plain_401(pki: LabPKI, phone: PhoneHTTPSClient) -> None:
    async with start(pki, NTLMSite()) as server:
        with pytest.raises(ServiceStatusError) as caught:
            await phone.post_xml(server.url(SIGN_IN, host=POOL), b"", address=FE01)

    assert not isinstance(caught.value, CredentialsRefusedError)
    assert str(caught.value) == (
        f"{POOL} answered HTTP 401 Unauthorized: NTLM needed (diagnostic 40101) "
        "(the phone has no credentials to sign in with)"
    )


async def test_a_403_after_the_handshake_gives_its_reason(
    pki: LabPKI, phone: PhoneHTTPSClient
) -> None:
    bob = Credentials("bob", "CONTOSO", nt_hash=BOB_NT)
    async with start(pki, NTLMSite(locked=("CONTOSO\\bob",))) as server:
        with pytest.raises(ServiceStatusError) as caught:
            await phone.post_xml(server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=bob)

    assert caught.value.status == 403
    assert caught.value.reason == "account CONTOSO\\bob is locked out"
    assert "account CONTOSO\\bob is locked out" in str(caught.value)


async def test_a_server_closing_the_connection_mid_handshake_is_named(
    pki: LabPKI, phone: PhoneHTTPSClient
) -> None:
    async with start(pki, NTLMSite(close_after_challenge=True)) as server:
        with pytest.raises(NTLMError, match="closed the connection in the middle of the NTLM"):
            await phone.post_xml(
                server.url(SIGN_IN, host=POOL), b"", address=FE01, credentials=ALICE
            )


def test_ntlm_client_tokens() -> None:
    make: AuthFactory = NTLMClient
    client = make(ALICE, POOL)
    negotiate = client.step()

    assert negotiate.startswith(b"NTLMSSP\x00")
    assert struct.unpack_from("<I", negotiate, 8)[0] == NEGOTIATE
    with pytest.raises(
        NTLMError, match=r"the NTLM challenge for CONTOSO\\alice cannot be answered"
    ):
        client.step(b"NTLMSSP\x00\x02\x00\x00\x00 not a challenge")
