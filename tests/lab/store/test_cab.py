"""Vendor cabs: the builder's output, the catalog format, and every way a cab is refused."""

from __future__ import annotations

import hashlib
import io
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cabarchive import CabArchive, CabFile
from security.cabs import (
    CabLayout,
    Folder,
    Reserve,
    chunked,
    deflate_block,
    members_in_order,
    mszip_blocks,
    write_cab,
)

from lab.errors import CabError
from lab.models import phone_model
from lab.net.config import default_config
from lab.net.pki import LabPKI, verify_vendor_signature
from lab.store.cab import (
    CabContents,
    build_cab,
    cab_members,
    make_update,
    member_parts,
    pack_cab,
    read_cab,
    synthetic_image,
)
from lab.store.cabformat import BLOCK_MAX, CabMember, checksum, read_index, unpack
from lab.store.catalog import catalog_body, parse_catalog, sign_catalog

V1, V2 = "4.0.7577.4372", "4.0.7577.4400"
SIZE = 4096
FOLDER = "UCPhone\\Polycom\\CX600\\A\\ENU\\4.0.7577.4372\\CPE"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI(default_config(), tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def good(pki: LabPKI) -> bytes:
    return build_cab([(phone_model("CX600"), V1), (phone_model("HP4110"), V1)], pki.vendor, SIZE)


def read(pki: LabPKI, data: bytes) -> CabContents:
    return read_cab(
        data, "UCUpdates.cab", lambda v: pki.vendor(v).certificate_pem(), verify_vendor_signature
    )


def members(data: bytes) -> dict[str, bytes]:
    return {name: f.buf or b"" for name, f in CabArchive(data).items()}


class _RawName(CabFile):
    """A member whose name is stored exactly as given (the writer turns / into \\)."""

    @property
    def _filename_win32(self) -> str | None:
        return self.filename


def pack_raw(files: dict[str, bytes]) -> bytes:
    archive = CabArchive()
    for name, data in files.items():
        archive[name] = _RawName(data)
    return archive.save(compress=True)


def test_a_built_cab_reads_back_with_every_update(pki: LabPKI, good: bytes, tmp_path: Path) -> None:
    contents = read(pki, good)
    assert contents.sha256 == hashlib.sha256(good).hexdigest()
    assert [(str(u.kind), u.version) for u in contents.updates] == [
        ("UCPhone/HP/HP4110/A/ENU", V1),
        ("UCPhone/Polycom/CX600/A/ENU", V1),
    ]
    update = contents.updates[1]
    assert [f.module for f in update.files] == ["CPE.cat", "CPE.nbt"]
    assert str(update.image.path) == f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt"
    image = synthetic_image(phone_model("CX600"), V1, SIZE)
    assert (update.image.size, update.image.sha256) == (SIZE, hashlib.sha256(image).hexdigest())
    # A checked cab keeps no image in memory: extract unpacks it again to where it goes.
    targets = [tmp_path / "fe01.nbt", tmp_path / "fe02.nbt"]
    contents.extract({update.image.path: targets})
    assert [t.read_bytes() for t in targets] == [image, image]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fe01.nbt", "fe02.nbt"]
    assert sorted(members(good)) == sorted(
        f"{folder}\\{name}"
        for folder in (FOLDER, FOLDER.replace("Polycom\\CX600", "HP\\HP4110"))
        for name in ("CPE.cat", "CPE.nbt", "CPE.xml")
    )


def test_the_cab_is_mszip_compressed(good: bytes) -> None:
    # CFFOLDER.typeCompress (offset 36 + 6) is 1 for MSZIP.
    assert good[:4] == b"MSCF"
    assert int.from_bytes(good[42:44], "little") & 0x000F == 1


def test_images_are_deterministic_per_model_and_version_and_sized() -> None:
    cx600, cx500 = phone_model("CX600"), phone_model("CX500")
    image = synthetic_image(cx600, V1, SIZE)
    assert len(image) == SIZE
    assert image == synthetic_image(cx600, V1, SIZE)
    assert image != synthetic_image(cx600, V2, SIZE)
    assert image != synthetic_image(cx500, V1, SIZE)
    assert image.startswith(b"LPE-IMAGE 1\nvendor: Polycom\nmodel: CX600\nversion: 4.0.7577.4372")
    assert len(synthetic_image(cx600, V1, 3 * 1024 * 1024)) == 3 * 1024 * 1024
    with pytest.raises(CabError, match="out of range"):
        synthetic_image(cx600, V1, 10)


def test_the_catalog_is_the_documented_format_and_verifies(pki: LabPKI) -> None:
    update = make_update(phone_model("CX600"), V1, pki.vendor("Polycom"), SIZE)
    lines = update.catalog.data.decode().splitlines()
    assert lines[:6] == [
        "DEVICE-UPDATE-CATALOG 1",
        "vendor: Polycom",
        "model: CX600",
        "revision: A",
        "locale: ENU",
        f"version: {V1}",
    ]
    assert lines[6] == f"file: CPE.nbt {SIZE} {hashlib.sha256(update.image.data).hexdigest()}"
    assert lines[7].startswith("signature: ")
    assert len(lines) == 8
    catalog = parse_catalog(update.catalog.data, "CPE.cat")
    assert catalog.signed == "".join(line + "\n" for line in lines[:7]).encode()
    verify_vendor_signature(
        pki.vendor("Polycom").certificate_pem(), catalog.signed, catalog.signature
    )


def test_the_description_names_the_kind_and_both_files(pki: LabPKI) -> None:
    update = make_update(phone_model("HP4120"), V1, pki.vendor("HP"), SIZE)
    xml = cab_members(update)[f"UCPhone\\HP\\HP4120\\A\\ENU\\{V1}\\CPE\\CPE.xml"].decode()
    for text in ("<DeviceType>UCPhone</DeviceType>", "<Vendor>HP</Vendor>", "<Model>HP4120</Model>",
                 "<Revision>A</Revision>", "<Locale>ENU</Locale>", f"<Version>{V1}</Version>",
                 f'<File name="CPE.nbt" size="{SIZE}" sha256="{update.image.sha256}"/>',
                 f'<File name="CPE.cat" size="{update.catalog.size}"'):  # fmt: skip
        assert text in xml


def test_a_build_refuses_bad_input(pki: LabPKI) -> None:
    with pytest.raises(CabError, match="not a version"):
        build_cab([(phone_model("CX600"), "4.0")], pki.vendor, SIZE)
    with pytest.raises(CabError, match="named twice"):
        build_cab([(phone_model("CX600"), V1), (phone_model("CX600"), V1)], pki.vendor, SIZE)
    with pytest.raises(CabError, match="at least one"):
        build_cab([], pki.vendor, SIZE)


# --- refusals -------------------------------------------------------------------------------

Mutation = Callable[[LabPKI, dict[str, bytes]], bytes]


def _flip_image_byte(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    image = bytearray(files[f"{FOLDER}\\CPE.nbt"])
    image[len(image) // 2] ^= 0x01
    return pack_cab({**files, f"{FOLDER}\\CPE.nbt": bytes(image)})


def _signed_by_other_vendor(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    return build_cab([(phone_model("CX600"), V1)], lambda vendor: pki.vendor("Aastra"), SIZE)


def _unsigned(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    catalog = files[f"{FOLDER}\\CPE.cat"]
    return pack_cab({**files, f"{FOLDER}\\CPE.cat": catalog[: catalog.index(b"signature: ")]})


def _catalog_for_other_model(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    update = make_update(phone_model("CX500"), V1, pki.vendor("Polycom"), SIZE)
    return pack_cab({**files, f"{FOLDER}\\CPE.cat": update.catalog.data})


def _extra(name: str) -> Mutation:
    return lambda pki, files: pack_cab({**files, name: b"payload"})


def _raw_extra(name: str) -> Mutation:
    return lambda pki, files: pack_raw({**files, name: b"payload"})


def _without(file: str) -> Mutation:
    return lambda pki, files: pack_cab({k: v for k, v in files.items() if not k.endswith(file)})


def _description(text: str) -> Mutation:
    return lambda pki, files: pack_cab({**files, f"{FOLDER}\\CPE.xml": text.encode()})


def _corrupt(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    data = bytearray(pack_cab(files))
    data[-100] ^= 0xFF  # inside the compressed data of the last block
    return bytes(data)


BOMB = (
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><DeviceUpdate>&b;</DeviceUpdate>'
)

CX600_FILE = "CX600\\A\\ENU\\4.0.7577.4372\\CPE\\"


def _description_of_cx500(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    xml = files[f"{FOLDER}\\CPE.xml"].replace(b"CX600", b"CX500")
    return pack_cab({**files, f"{FOLDER}\\CPE.xml": xml})


REFUSALS: list[tuple[str, Mutation, str]] = [
    ("one image byte changed", _flip_image_byte, r"CPE\.nbt'.*SHA-256 .* not match the signed"),
    ("other vendor signed", _signed_by_other_vendor, r"CPE\.cat'.*not verify with .*Polycom"),
    ("unsigned catalog", _unsigned, r"CPE\.cat'.*not a valid catalog.*signature"),
    ("catalog of another model", _catalog_for_other_model, r"catalog says model 'CX500'"),
    ("parent steps", _extra("..\\..\\evil"), r"member '\.\.\\\.\.\\evil': '\.\.' step"),
    ("absolute (as stored)", _extra("/etc/x"), r"member '\\etc\\x': absolute path"),
    ("absolute, literal slash", _raw_extra("/etc/x"), r"member '/etc/x': absolute path"),
    ("drive letter", _extra("C:\\evil"), r"absolute path"),
    ("forward slashes", _raw_extra("UCPhone/Polycom/x"), r"forward slash"),
    ("dot-dot inside", _extra(f"{FOLDER}\\..\\..\\x"), r"'\.\.' step"),
    ("control character", _raw_extra("UCPhone\\a\x01b"), r"control character"),
    ("outside the layout", _extra("readme.txt"), r"member 'readme\.txt': not part of an update"),
    ("unknown model", _extra(FOLDER.replace("CX600", "CX999") + "\\CPE.nbt"), r"not a phone model"),
    ("model in lower case", _extra(FOLDER.replace("CX600", "cx600") + "\\CPE.nbt"), "written"),
    ("version with zeros", _extra(FOLDER.replace(".4372", ".04372") + "\\CPE.nbt"), "zeros"),
    ("another vendor's model", _extra(FOLDER.replace("Polycom", "HP") + "\\CPE.nbt"), "by Polycom"),
    ("missing catalog", _without(CX600_FILE + "CPE.cat"), r"CPE\.cat' is missing"),
    ("missing description", _without(CX600_FILE + "CPE.xml"), r"CPE\.xml' is missing"),
    ("entity bomb description", _description(BOMB), r"CPE\.xml'.*not a valid description"),
    ("malformed description", _description("<DeviceUpdate>"), r"not a valid description"),
    ("description of another model", _description_of_cx500, r"Model is 'CX500'"),
    ("corrupt cab data", _corrupt, r"corrupt cab"),
    ("not a cab", lambda p, f: b"PK\x03\x04 a zip file", r"not a cab file"),
    ("truncated cab", lambda p, f: pack_cab(f)[:200], r"corrupt cab"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mutate", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_cab_is_refused_saying_what_is_wrong_with_which_member(
    pki: LabPKI, good: bytes, name: str, mutate: Mutation, message: str
) -> None:
    with pytest.raises(CabError, match=message) as caught:
        read(pki, mutate(pki, members(good)))
    text = str(caught.value)
    assert text.startswith("UCUpdates.cab: ")
    assert "\n" not in text


SAFE_NAMES = [
    (f"{FOLDER}\\CPE.nbt", True),
    (f"{FOLDER}\\CPE.exe", False),
    ("UCPhone\\Polycom\\CX600\\A\\ENU\\4.0.7577.4372\\CPE.nbt", False),
    (f"{FOLDER}.\\CPE.nbt", False),
    (f"{FOLDER}\\\\CPE.nbt", False),
    (f"{FOLDER}\\CPE.nbt ", False),
    ("", False),
]


@pytest.mark.parametrize(("name", "ok"), SAFE_NAMES)
def test_member_names(name: str, ok: bool) -> None:
    if ok:
        assert member_parts(name)[-1] == "CPE.nbt"
    else:
        with pytest.raises(CabError):
            member_parts(name)


def _catalog(pki: LabPKI) -> bytes:
    return make_update(phone_model("CX600"), V1, pki.vendor("Polycom"), SIZE).catalog.data


def _swap_keys(c: bytes) -> bytes:
    return c.replace(b"vendor: Polycom\nmodel: CX600", b"model: CX600\nvendor: Polycom")


def _upper_case_hash(c: bytes) -> bytes:
    head, _, rest = c.partition(b"file: CPE.nbt ")
    size, _, tail = rest.partition(b" ")
    return head + b"file: CPE.nbt " + size + b" " + tail[:64].upper() + tail[64:]


def _no_file_line(c: bytes) -> bytes:
    return b"".join(line for line in c.splitlines(True) if not line.startswith(b"file:"))


CATALOG_FAULTS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("unknown key", lambda c: c.replace(b"locale:", b"language:"), "line 5 must be 'locale"),
    ("missing key", lambda c: c.replace(b"revision: A\n", b""), "line 4 must be 'revision"),
    ("keys out of order", _swap_keys, "line 2"),
    ("second signature", lambda c: c + c[c.index(b"signature:") :], "text after the 'signature:'"),
    ("text after it", lambda c: c + b"more\n", "text after"),
    ("CRLF", lambda c: c.replace(b"\n", b"\r\n"), "LF"),
    ("upper-case hash", _upper_case_hash, "sha256"),
    ("no final newline", lambda c: c[:-1], "newline"),
    ("bad base64", lambda c: c[:-3] + b"!!\n", "base64"),
    ("no file line", _no_file_line, "'file:'"),
    ("wrong magic", lambda c: c.replace(b"CATALOG 1", b"CATALOG 2"), "first line"),
]


@pytest.mark.parametrize(
    ("name", "fault", "message"), CATALOG_FAULTS, ids=[c[0] for c in CATALOG_FAULTS]
)
def test_catalog_parsing_is_strict(
    pki: LabPKI, name: str, fault: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(CabError, match=message):
        parse_catalog(fault(_catalog(pki)), "'CPE.cat'")


def test_catalog_round_trip(pki: LabPKI) -> None:
    body = catalog_body("HP", "HP4110", "A", "ENU", V1, [])
    signed = sign_catalog(body + b"file: CPE.nbt 5 " + b"0" * 64 + b"\n", pki.vendor("HP"))
    catalog = parse_catalog(signed, "x")
    assert (catalog.vendor, catalog.model, catalog.version) == ("HP", "HP4110", V1)
    assert catalog.file("CPE.nbt") is not None
    assert catalog.file("CPE.cat") is None


def test_a_written_cab_file_is_what_was_built(tmp_path: Path, good: bytes) -> None:
    from lab.store.cab import write_file_atomic

    target = tmp_path / "UCUpdates.cab"
    write_file_atomic(target, good)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["UCUpdates.cab"]


def test_a_cab_past_the_unpacked_limit_is_refused_from_its_headers(
    good: bytes, pki: LabPKI
) -> None:
    total = sum(len(data) for data in members(good).values())
    with pytest.raises(CabError) as caught:
        read_cab(
            good,
            "UCUpdates.cab",
            lambda v: pki.vendor(v).certificate_pem(),
            verify_vendor_signature,
            limit=total - 1,
        )
    assert str(caught.value) == (
        f"UCUpdates.cab: it unpacks to {total} bytes, more than the {total - 1} bytes "
        "[limits] cab_unpacked_max allows"
    )
    assert read(pki, good).updates  # at the limit exactly, or under it, it is read


def test_an_image_is_refused_on_its_declared_size_before_it_is_unpacked(
    pki: LabPKI, good: bytes
) -> None:
    files = members(good)
    cat, xml = files[f"{FOLDER}\\CPE.cat"], files[f"{FOLDER}\\CPE.xml"]
    declared = 1024 * 1024
    # The image's blocks are not even MSZIP: only a reader that unpacked them would say so.
    garbage = [(b"CK\xff\xff\xff\xff", BLOCK_MAX)] * (declared // BLOCK_MAX)
    blocks = [*mszip_blocks(chunked([cat])), *garbage, *mszip_blocks(chunked([xml]))]
    named = [(f"{FOLDER}\\CPE.cat", len(cat)), (f"{FOLDER}\\CPE.nbt", declared)]
    named.append((f"{FOLDER}\\CPE.xml", len(xml)))
    out = io.BytesIO()
    write_cab(out, CabLayout(members_in_order(named), [Folder(blocks)]))
    with pytest.raises(
        CabError, match=rf"size {declared} does not match the signed catalog \(4096\)"
    ):
        read(pki, out.getvalue())


# --- the cab format, block by block -----------------------------------------------------------


class Recorder:
    """A MemberSink that keeps every member's bytes (the cabs here are small)."""

    def __init__(self) -> None:
        self.members: dict[str, bytearray] = {}
        self.current = ""

    def begin(self, member: CabMember) -> None:
        self.current = member.name
        self.members[member.name] = bytearray()

    def write(self, data: memoryview) -> None:
        self.members[self.current] += data

    def end(self, member: CabMember) -> None:
        assert len(self.members[member.name]) == member.size


def unpacked(data: bytes, limit: int = 1 << 31) -> dict[str, bytes]:
    source = io.BytesIO(data)
    recorder = Recorder()
    unpack(source, read_index(source, limit), recorder)
    return {name: bytes(content) for name, content in recorder.members.items()}


def cab_of(layout: CabLayout) -> bytes:
    out = io.BytesIO()
    write_cab(out, layout)
    return out.getvalue()


def one_folder(named: list[tuple[str, int]], blocks: list[tuple[bytes, int]], **kw: Any) -> bytes:
    folder_keys = {"compression", "declared_blocks"}
    folder = Folder(blocks, **{k: v for k, v in kw.items() if k in folder_keys})
    rest = {k: v for k, v in kw.items() if k not in folder_keys}
    return cab_of(CabLayout(members_in_order(named), [folder], **rest))


def spec_checksum(data: bytes, seed: int = 0) -> int:
    """The checksum as the cab format's specification writes it, word by word."""
    words = len(data) // 4
    value = seed
    for n in range(words):
        value ^= int.from_bytes(data[4 * n : 4 * n + 4], "little")
    rest, tail = data[4 * words :], 0
    for shift, byte in zip((16, 8, 0)[3 - len(rest) :], rest, strict=True):
        tail |= byte << shift
    return value ^ tail


@pytest.mark.parametrize("size", [*range(13), 4096, 32765, 32766, 32767, 32768])
def test_the_checksum_is_the_cab_formats(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert checksum(data) == spec_checksum(data)
    assert checksum(data, 0x89ABCDEF) == spec_checksum(data, 0x89ABCDEF)


@pytest.mark.parametrize("compress", [True, False], ids=["mszip", "stored"])
def test_cabarchive_cabs_unpack_member_by_member(compress: bool) -> None:
    files = {f"dir\\file{n}": random.Random(n).randbytes(n * 10_000) for n in range(6)}
    files["dir\\zeros"] = bytes(100_000)
    archive = CabArchive()
    for name, data in files.items():
        archive[name] = CabFile(data)
    assert unpacked(archive.save(compress=compress)) == files


def test_mszip_blocks_may_refer_to_the_previous_blocks_output() -> None:
    text = b"".join(b"line %d of a description that repeats\n" % (n % 50) for n in range(5000))
    blocks, previous = [], b""
    for chunk in chunked([text]):
        packer = (
            zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=previous)
            if previous
            else zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        )
        blocks.append((b"CK" + packer.compress(chunk) + packer.flush(), len(chunk)))
        previous = chunk
    assert unpacked(one_folder([("a", len(text))], blocks)) == {"a": text}


def test_reserved_areas_and_several_folders_are_read() -> None:
    stored = Folder([(b"abcdef", 6)], compression=0)
    packed = Folder([deflate_block(b"x" * 1000), deflate_block(b"y" * 5)])
    layout = CabLayout(
        [CabMember("a", 6, 0, 0), CabMember("b", 400, 1, 0), CabMember("c", 605, 1, 400)],
        [stored, packed],
        reserve=Reserve(b"header", b"fold", b"bl"),
    )
    assert unpacked(cab_of(layout)) == {"a": b"abcdef", "b": b"x" * 400, "c": b"x" * 600 + b"y" * 5}


def _members(*members: tuple[str, int, int, int]) -> bytes:
    """A cab of one small MSZIP folder whose members are (name, size, folder, offset)."""
    return cab_of(CabLayout([CabMember(*m) for m in members], [Folder(ONE_BLOCK)]))


ONE_BLOCK = [deflate_block(b"z" * 100)]
HUGE = 0xC000_0000
HEADER_LIES: list[tuple[str, bytes, str]] = [
    ("past the limit", _members(("a", HUGE, 0, 0), ("b", HUGE, 0, HUGE)),
     r"unpacks to 6442450944 bytes, more than the 2147483648 bytes \[limits\] cab_unpacked_max"),
    ("a gap between members", _members(("a", 50, 0, 0), ("b", 40, 0, 60)),
     r"member 'b' starts at byte 60 of folder 0, the member before it ends at 50"),
    ("overlapping members", _members(("a", 50, 0, 0), ("b", 50, 0, 40)),
     r"member 'b' starts at byte 40 of folder 0, the member before it ends at 50"),
    ("a member not at the start", _members(("a", 50, 0, 50)),
     r"starts at byte 50 of folder 0, the member before it ends at 0"),
    ("a folder that does not exist", _members(("a", 100, 1, 0)),
     r"member 'a' is in folder 1, the cab has 1"),
    ("continued from another cabinet", _members(("a", 100, 0xFFFD, 0)),
     r"continues in another cabinet"),
    ("a name twice", _members(("a", 50, 0, 0), ("a", 50, 0, 50)), r"member 'a' appears twice"),
    ("a name that is not UTF-8", _members(("a\udcff", 100, 0, 0)), r"member 0's name is not UTF-8"),
    ("LZX", one_folder([("a", 100)], ONE_BLOCK, compression=3),
     r"folder 0: LZX compression is not supported"),
    ("part of a set", one_folder([("a", 100)], ONE_BLOCK, flags=0x0002), r"multi-cabinet set"),
    ("truncated", one_folder([("a", 100)], ONE_BLOCK, cabinet_size=10_000), r"truncated"),
    ("no members", _members(), r"holds no members"),
    ("too few blocks for the members", one_folder([("a", 100_000)], ONE_BLOCK, declared_blocks=3),
     r"folder 0's 3 data blocks cannot hold the 100000 bytes"),
    ("not a cab", b"PK\x03\x04" + bytes(100), r"not a cab file"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "message"), HEADER_LIES, ids=[h[0] for h in HEADER_LIES])
def test_headers_that_lie_are_refused_before_any_block_is_read(
    name: str, data: bytes, message: str
) -> None:
    with pytest.raises(CabError, match=message):
        read_index(io.BytesIO(data), 1 << 31)


def _damaged(data: bytes) -> bytes:
    """The cab with the last byte of its last block's data changed (its checksum not)."""
    return data[:-1] + bytes([data[-1] ^ 0x55])


def _one(size: int, blocks: list[tuple[bytes, int]], **kw: Any) -> bytes:
    return one_folder([("a", size)], blocks, **kw)


ZEROS = deflate_block(bytes(BLOCK_MAX))
X_40K = [(b"x" * 40_000, 40_000)]
BLOCK_LIES: list[tuple[str, bytes, str]] = [
    ("a block that unpacks past its size", _one(100, [(ZEROS[0], 100)]),
     r"block 0 of folder 0 unpacks to more than the 100 bytes it declares"),
    ("a block that unpacks short", _one(200, [(ONE_BLOCK[0][0], 200)]),
     r"block 0 of folder 0 unpacks to 100 bytes, it declares 200"),
    ("a member larger than its blocks", _one(200, ONE_BLOCK, declared_blocks=1),
     r"folder 0 ends after 100 bytes, its members declare 200"),
    ("blocks holding more than the members", _one(60, ONE_BLOCK),
     r"folder 0 holds more than the 60 bytes its members declare"),
    ("more blocks declared than used", _one(100, ONE_BLOCK, declared_blocks=3),
     r"folder 0 declares 3 data blocks, its members fill 1"),
    ("a block too large", _one(40_000, X_40K, compression=0, declared_blocks=2),
     r"block 0 of folder 0 declares 40000 bytes \(a block holds 1 to 32768\)"),
    ("a damaged block", _damaged(_one(100, ONE_BLOCK)),
     r"block 0 of folder 0: the checksum does not match its data"),
    ("no MSZIP signature", _one(100, [(b"XX" + ONE_BLOCK[0][0][2:], 100)]),
     r"block 0 of folder 0 has no MSZIP signature"),
    ("not deflate data", _one(100, [(b"CK\xff\xff\xff", 100)]),
     r"block 0 of folder 0 is not valid MSZIP data"),
    ("stored sizes that differ", _one(12, [(b"x" * 10, 12)], compression=0),
     r"block 0 of folder 0 is stored, but declares 10 bytes in and 12 out"),
    # The header's size is not what gives the end away here: the blocks are.
    ("the file ends inside a block", _one(100, ONE_BLOCK, cabinet_size=1)[:-5],
     r"the file ends inside block 0 of folder 0"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "message"), BLOCK_LIES, ids=[b[0] for b in BLOCK_LIES])
def test_blocks_that_lie_are_refused_as_they_are_read(name: str, data: bytes, message: str) -> None:
    source = io.BytesIO(data)
    index = read_index(source, 1 << 31)
    with pytest.raises(CabError, match=f"^corrupt cab: {message}"):
        unpack(source, index, Recorder())


def test_a_damaged_block_without_a_checksum_is_still_refused_by_its_sizes() -> None:
    damaged = one_folder([("a", 100)], [(ONE_BLOCK[0][0][:-3], 100)], checksums=False)
    with pytest.raises(CabError, match=r"corrupt cab: block 0 of folder 0"):
        unpacked(damaged)
