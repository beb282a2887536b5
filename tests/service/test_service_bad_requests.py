"""A battery of bad requests: each gets its 4xx with diagnostics, the server keeps serving,
and nothing outside the file store is read or anything written anywhere."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import Phones, check_body

from lab.service import ServicePool, file_store_path

CHECK = "/RequestHandler/ucdevice.upx"
SECRET = b"top secret: not an image\n"

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<DeviceUpdateRequest><Model>&lol9;</Model></DeviceUpdateRequest>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<DeviceUpdateRequest><Model>&x;</Model></DeviceUpdateRequest>"""

NO_MAC = check_body().replace(b"<MacAddress>00-04-F2-00-00-01</MacAddress>", b"")
NO_MODULES = check_body().replace(b"<Module name", b"<Nope name")

# name, body, status, X-Ms-Diagnostics code, words the reason must hold
BAD_BODIES: list[tuple[str, bytes, int, str, str]] = [
    ("oversized", check_body() + b" " * (70 * 1024), 413, "41301", "larger than 65536"),
    ("entity-expansion bomb", BOMB, 400, "40001", "forbidden XML feature"),
    ("external entity", EXTERNAL_ENTITY, 400, "40001", "forbidden XML feature"),
    ("invalid XML", b"<DeviceUpdateRequest><Model>CX600</Mod", 400, "40001", "not well-formed"),
    ("not XML at all", b"\x00\xff garbage", 400, "40001", "not well-formed"),
    ("empty", b"", 400, "40001", "body is empty"),
    ("wrong document", b"<Something/>", 400, "40001", "not <DeviceUpdateRequest>"),
    ("missing fields", NO_MAC, 400, "40001", "<MacAddress> is missing"),
    ("bad MAC", check_body(mac="00-04-F2-00-00"), 400, "40001", "not a MAC address"),
    ("bad version", check_body(version="four"), 400, "40001", "not a version"),
    ("no modules", NO_MODULES, 400, "40001", "lists no <Module>"),
    ("unknown model", check_body(model="CX999"), 404, "40402", "not a phone model"),
    ("model of another vendor", check_body(vendor="HP"), 404, "40402", "made by Polycom"),
]

TRAVERSALS = [
    "/DeviceUpdateFiles_Int/../../../../etc/passwd",
    "/DeviceUpdateFiles_Int/UCPhone/../../../secret.txt",
    "/DeviceUpdateFiles_Int/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/DeviceUpdateFiles_Int/UCPhone/..%2f..%2f..%2fsecret.txt",
    "/DeviceUpdateFiles_Int/%252e%252e/%252e%252e/secret.txt",
    "/DeviceUpdateFiles_Int/..%5c..%5c..%5csecret.txt",
    "/DeviceUpdateFiles_Int//etc/passwd",
    "/DeviceUpdateFiles_Int/UCPhone/%00",
    "/DeviceUpdateFiles_Int/UCPhone/out-link.nbt",
    "/DeviceUpdateFiles_Int/UCPhone/out-dir/secret.txt",
    "/DeviceUpdateFiles_Int/.hidden/secret.txt",
    "/DeviceUpdateFiles_Int/UCPhone",
    "/DeviceUpdateFiles_Ext/UCPhone/Polycom/CX600/A/ENU/4.0.7577.4372/CPE/CPE.nbt",
]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (symlinks by target)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file() and not name.endswith("-shm"):
                # The -shm file is SQLite's shared memory for readers, not data.
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def planted(service_state: Path, tmp_path: Path) -> Iterator[Path]:
    """A secret outside the file store, and symlinks inside the store pointing at it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    # The store of pool01, which fe01 (where the phones below ask) serves.
    root = file_store_path(service_state, "pool01.contoso.test")
    store = root / "UCPhone"
    links = [(store / "out-link.nbt", outside / "secret.txt"), (store / "out-dir", outside)]
    for link, target in links:
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    hidden = root / ".hidden"
    hidden.mkdir(exist_ok=True)
    (hidden / "secret.txt").write_bytes(SECRET)
    yield tmp_path
    for link, _ in links:
        link.unlink()
    (hidden / "secret.txt").unlink()
    hidden.rmdir()


async def still_serving(phones: Phones) -> None:
    conn = await phones.inside()
    response = await conn.request("POST", CHECK, body=check_body())
    assert response.status == 200
    await conn.close()


async def test_bad_bodies_get_their_4xx_and_the_server_keeps_serving(
    pool: ServicePool, phones: Phones, service_state: Path, tmp_path: Path
) -> None:
    before = tree(service_state) | tree(tmp_path)
    for name, body, status, code, words in BAD_BODIES:
        conn = await phones.inside()
        response = await conn.request("POST", CHECK, body=body)
        assert response.status == status, name
        diagnostics = response.header("x-ms-diagnostics") or ""
        assert diagnostics.startswith(f'{code};reason="'), (name, diagnostics)
        assert words in diagnostics, (name, diagnostics)
        assert response.header("content-type") == "text/plain; charset=utf-8", name
        assert words.encode() in response.body, name
        await conn.close()
        await still_serving(phones)
    assert tree(service_state) | tree(tmp_path) == before


async def test_an_oversized_chunked_body_is_refused_without_reading_it_all(
    phones: Phones,
) -> None:
    chunk = b"x" * 8192
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    conn = await phones.inside()
    await conn.send("POST", CHECK, {"Transfer-Encoding": "chunked"})
    conn.writer.write(framed)
    response = await conn.read_head()
    assert response.status == 413
    assert (response.header("x-ms-diagnostics") or "").startswith("41301;")
    await still_serving(phones)


async def test_malformed_http_is_answered_by_aiohttp_with_diagnostics(phones: Phones) -> None:
    conn = await phones.inside()
    # Content-Length and chunked together: refused by the HTTP parser, before any handler.
    await conn.send("POST", CHECK, {"Transfer-Encoding": "chunked", "Content-Length": "5"})
    response = await conn.read_head()
    assert response.status == 400
    assert (response.header("x-ms-diagnostics") or "").startswith('40001;reason="')
    await still_serving(phones)


@pytest.mark.usefixtures("planted")
async def test_traversal_and_links_out_of_the_file_store_are_refused(
    pool: ServicePool, phones: Phones, service_state: Path, tmp_path: Path
) -> None:
    before = tree(service_state) | tree(tmp_path)
    for path in TRAVERSALS:
        conn = await phones.inside()
        try:
            response = await conn.request("GET", path)
        finally:
            await conn.close()
        assert 400 <= response.status < 500, path
        assert response.header("x-ms-diagnostics"), path
        assert SECRET not in response.body, path
        assert b"root:" not in response.body, path
        await still_serving(phones)
    assert tree(service_state) | tree(tmp_path) == before


async def test_wrong_methods_and_unknown_paths(phones: Phones) -> None:
    conn = await phones.inside()
    wrong_method = await conn.request("GET", CHECK)
    assert wrong_method.status == 405
    assert (wrong_method.header("x-ms-diagnostics") or "").startswith("40501;")
    assert wrong_method.header("allow") == "POST"
    unknown_expect = await conn.request("POST", CHECK, {"Expect": "a-miracle"}, b"<x/>")
    assert unknown_expect.status == 400
    assert "a-miracle" in (unknown_expect.header("x-ms-diagnostics") or "")
    unknown = await conn.request("GET", "/nothing/here")
    assert unknown.status == 404
    assert (unknown.header("x-ms-diagnostics") or "").startswith("40403;")
    external_only = await conn.request("POST", "/RequestHandlerExt/ucdevice.upx")
    assert external_only.status == 404
