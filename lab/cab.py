"""Vendor cabs (``UCUpdates.cab``): the builder and the reader that trusts nothing in them.

A cab holds, per device kind and version, three members in one folder named like the file
store's layout, with backslashes as cab paths have them::

    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.xml   description
    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.cat   signed catalog
    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.nbt   image

The reader works on bytes in memory and checks, before anything touches a disk: every
member name (no absolute paths, drive letters, ``..``, forward slashes or odd characters;
nothing outside that layout), every description (defusedxml), every catalog signature with
the vendor's certificate and every size and SHA-256. A problem raises CabError naming the
cab, the member and what is wrong with it.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import re
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import defusedxml.ElementTree as SafeET
from cabarchive import CabArchive, CabFile, CorruptionError, NotSupportedError

from lab.catalog import (
    Catalog,
    CatalogFile,
    Signer,
    Verifier,
    catalog_body,
    parse_catalog,
    sign_catalog,
    verify_catalog,
)
from lab.errors import CabError, IdentityError
from lab.fileio import write_atomic
from lab.models import DeviceKind, PhoneModel, canonical_version, check_kind

CAB_NAME = "UCUpdates.cab"
MODULE_DIR = "CPE"
CATALOG = "CPE.cat"
IMAGE = "CPE.nbt"
DESCRIPTION = "CPE.xml"
MEMBERS = (DESCRIPTION, CATALOG, IMAGE)

KiB = 1024
MiB = 1024 * KiB
DEFAULT_IMAGE_SIZE = 1 * MiB
MIN_IMAGE_SIZE = 1 * KiB
MAX_IMAGE_SIZE = 256 * MiB
MAX_DESCRIPTION_SIZE = 64 * KiB

# Members carry this time so the same inputs always give the same members.
MEMBER_TIME = datetime.datetime(2012, 11, 2, 10, 0, 0)
# The CFHEADER of the cab format: magic, size, CFFILE offset, version, folders, files, ...
_CFHEADER = "<4sxxxxIxxxxIxxxxBBHHHHH"
_SAFE_STEP = re.compile(r"^[A-Za-z0-9._-]+$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_LAYOUT_HINT = "UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\" + (
    " | ".join(MEMBERS)
)

_XML_REFUSALS = {
    "DTDForbidden": "a DTD is not allowed",
    "EntitiesForbidden": "entity declarations are not allowed",
    "ExternalReferenceForbidden": "external references are not allowed",
    "NotSupportedError": "an XML feature that is not allowed",
}

# Reports long work: (what is being done, steps done, steps in all).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class UpdateFile:
    """One file of an update as the file store will hold it."""

    module: str
    path: PurePosixPath
    data: bytes
    sha256: str

    @classmethod
    def of(cls, module: str, path: PurePosixPath, data: bytes) -> UpdateFile:
        """The file ``module`` at ``path`` with ``data``, its SHA-256 computed once."""
        return cls(module, path, data, hashlib.sha256(data).hexdigest())

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)


@dataclass(frozen=True)
class DeviceUpdate:
    """One device kind's update at one version: its catalog and its image."""

    kind: DeviceKind
    version: str
    catalog: UpdateFile
    image: UpdateFile

    @property
    def files(self) -> tuple[UpdateFile, UpdateFile]:
        """Catalog first, then image: the order the service answers them in."""
        return (self.catalog, self.image)

    @property
    def folder(self) -> PurePosixPath:
        """``UCPhone/<Vendor>/<Model>/<Revision>/<Locale>/<Version>/CPE``."""
        return update_folder(self.kind, self.version)


@dataclass(frozen=True)
class CabContents:
    """A cab that passed every check: its name, SHA-256 and the updates it holds."""

    name: str
    sha256: str
    updates: tuple[DeviceUpdate, ...]


def update_folder(kind: DeviceKind, version: str) -> PurePosixPath:
    """Where a kind's version lives in a file store (and, with backslashes, in a cab)."""
    return kind.path / version / MODULE_DIR


# --- building ----------------------------------------------------------------------------


def synthetic_image(model: PhoneModel, version: str, size: int = DEFAULT_IMAGE_SIZE) -> bytes:
    """A deterministic image for ``model`` at ``version``: a readable header, then noise."""
    check_image_size(size)
    header = (
        f"LPE-IMAGE 1\nvendor: {model.vendor}\nmodel: {model.name}\nversion: {version}\n\n"
    ).encode("ascii")
    # SHAKE-256 is an extendable-output hash: fast, incompressible like a real image, and a
    # pure function of model and version.
    seed = f"device-update-lab image\0{model.vendor}\0{model.name}\0{version}".encode()
    return header + hashlib.shake_256(seed).digest(size - len(header))


def check_image_size(size: int) -> int:
    """``size`` if it is an allowed image size; CabError with the range otherwise."""
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise CabError(
            f"image size {size} is out of range ({MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} bytes)"
        )
    return size


def description_xml(update: DeviceUpdate) -> bytes:
    """The ``CPE.xml`` description of an update: its kind, version and files."""
    kind = update.kind
    fields = (
        ("DeviceType", kind.device_type),
        ("Vendor", kind.vendor),
        ("Model", kind.model),
        ("Revision", kind.revision),
        ("Locale", kind.locale),
        ("Version", update.version),
    )
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<DeviceUpdate>"]
    lines += [f"  <{tag}>{html.escape(value)}</{tag}>" for tag, value in fields]
    lines.append("  <Files>")
    lines += [
        f'    <File name="{html.escape(f.module)}" size="{f.size}" sha256="{f.sha256}"/>'
        for f in update.files
    ]
    lines += ["  </Files>", "</DeviceUpdate>", ""]
    return "\n".join(lines).encode("utf-8")


def make_update(
    model: PhoneModel, version: str, signer: Signer, image_size: int = DEFAULT_IMAGE_SIZE
) -> DeviceUpdate:
    """A signed update of ``model`` at ``version`` with a synthetic image."""
    version = _version(version)
    kind = model.kind()
    folder = update_folder(kind, version)
    image = UpdateFile.of(IMAGE, folder / IMAGE, synthetic_image(model, version, image_size))
    body = catalog_body(
        kind.vendor,
        kind.model,
        kind.revision,
        kind.locale,
        version,
        [CatalogFile(IMAGE, image.size, image.sha256)],
    )
    catalog = UpdateFile.of(CATALOG, folder / CATALOG, sign_catalog(body, signer))
    return DeviceUpdate(kind, version, catalog, image)


def cab_members(update: DeviceUpdate) -> dict[str, bytes]:
    """The three cab members of one update, by cab path."""
    folder = "\\".join(update.folder.parts)
    return {
        f"{folder}\\{DESCRIPTION}": description_xml(update),
        f"{folder}\\{CATALOG}": update.catalog.data,
        f"{folder}\\{IMAGE}": update.image.data,
    }


def pack_cab(members: Mapping[str, bytes]) -> bytes:
    """A MSZIP-compressed cab holding ``members`` (cab path -> bytes), deterministic."""
    archive = CabArchive()
    for name, data in members.items():
        archive[name] = CabFile(data, mtime=MEMBER_TIME)
    return archive.save(compress=True)


def build_cab(
    items: Sequence[tuple[PhoneModel, str]],
    signer_for: Callable[[str], Signer],
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: Progress | None = None,
) -> bytes:
    """A vendor cab with one signed update per (model, version); ``signer_for(vendor)``."""
    return build(items, signer_for, image_size, progress)[0]


def build(
    items: Sequence[tuple[PhoneModel, str]],
    signer_for: Callable[[str], Signer],
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: Progress | None = None,
) -> tuple[bytes, tuple[DeviceUpdate, ...]]:
    """``build_cab``, also returning the updates the cab holds."""
    if not items:
        raise CabError("a cab needs at least one model and version")
    check_image_size(image_size)
    updates: list[DeviceUpdate] = []
    seen: set[tuple[str, str]] = set()
    steps = len(items) + 1
    for done, (model, version) in enumerate(items):
        version = _version(version)
        if (model.name, version) in seen:
            raise CabError(f"{model.name} {version} is named twice")
        seen.add((model.name, version))
        if progress:
            progress(f"signing {model.name} {version}", done, steps)
        updates.append(make_update(model, version, signer_for(model.vendor), image_size))
    if progress:
        progress("compressing", len(items), steps)
    members: dict[str, bytes] = {}
    for update in updates:
        members.update(cab_members(update))
    data = pack_cab(members)
    if progress:
        progress("done", steps, steps)
    return data, tuple(sorted(updates, key=lambda u: (u.kind.key, u.version)))


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old file or the whole new one."""
    write_atomic(path, data)


def _version(text: str) -> str:
    try:
        return canonical_version(text)
    except IdentityError as exc:
        raise CabError(str(exc)) from None


# --- reading -------------------------------------------------------------------------------


def show(member: str) -> str:
    """A member name quoted for a message, escaped when it holds unprintable characters."""
    return f"'{member}'" if member.isprintable() else repr(member)


def member_parts(member: str) -> tuple[str, ...]:
    """The path steps of a safe member name in the update layout; CabError saying why not."""

    def bad(problem: str) -> CabError:
        return CabError(f"member {show(member)}: {problem}")

    if not member:
        raise bad("empty name")
    if not member.isprintable():
        raise bad("control character in the name")
    if member.startswith(("\\", "/")) or _DRIVE.match(member):
        raise bad("absolute path (member names must be relative)")
    steps = re.split(r"[\\/]", member)
    if ".." in steps:
        raise bad("'..' step (a path that climbs out of the target folder)")
    if "/" in member:
        raise bad("forward slash in the name (cab paths separate folders with backslashes)")
    for step in steps:
        if step in ("", "."):
            raise bad("empty or '.' path step")
        if not _SAFE_STEP.match(step) or step.endswith("."):
            raise bad(f"unsafe characters in path step {step!r}")
    if (
        len(steps) != 8
        or steps[0] != "UCPhone"
        or steps[6] != MODULE_DIR
        or steps[7] not in MEMBERS
    ):
        raise bad(f"not part of an update (expected {_LAYOUT_HINT})")
    return tuple(steps)


def read_cab(
    data: bytes,
    name: str,
    trusted: Callable[[str], bytes],
    verify: Verifier,
    progress: Progress | None = None,
) -> CabContents:
    """Check a whole cab in memory and return its updates; CabError naming what is wrong.

    ``trusted(vendor)`` gives the vendor certificate (PEM) catalogs must verify with, and
    ``verify`` is lab.pki.verify_vendor_signature.
    """
    try:
        return _read_cab(data, name, trusted, verify, progress)
    except CabError as exc:
        raise CabError(f"{name}: {exc}") from None


def _read_cab(
    data: bytes,
    name: str,
    trusted: Callable[[str], bytes],
    verify: Verifier,
    progress: Progress | None,
) -> CabContents:
    archive = _parse_archive(data)
    folders: dict[tuple[str, ...], dict[str, bytes]] = {}
    for member, cab_file in archive.items():
        steps = member_parts(member)
        if steps[:7] not in folders:
            _folder_kind(steps, member)
        folders.setdefault(steps[:7], {})[steps[7]] = cab_file.buf or b""
    updates: list[DeviceUpdate] = []
    for done, (steps, files) in enumerate(sorted(folders.items())):
        if progress:
            progress(f"checking {steps[3]} {steps[5]}", done, len(folders))
        updates.append(_check_update(steps, files, trusted, verify))
    if progress:
        progress("checked", len(folders), len(folders))
    return CabContents(name, hashlib.sha256(data).hexdigest(), tuple(updates))


def _parse_archive(data: bytes) -> dict[str, CabFile]:
    try:
        header = struct.unpack_from(_CFHEADER, data, 0)
    except struct.error:
        raise CabError("not a cab file (too short for a cab header)") from None
    if header[0] != b"MSCF":
        raise CabError("not a cab file (no MSCF signature)")
    try:
        archive = CabArchive(data)
    except (CorruptionError, NotSupportedError) as exc:
        raise CabError(f"corrupt cab: {exc or type(exc).__name__}") from None
    except (IndexError, UnicodeDecodeError, ValueError, struct.error, zlib.error) as exc:
        # The parser trusts offsets and names; a damaged file surfaces as these.
        raise CabError(f"corrupt cab: {type(exc).__name__}: {exc}") from None
    declared = header[6]
    if declared != len(archive):
        raise CabError(
            f"the cab declares {declared} members but holds {len(archive)} distinct names "
            "(a member name is repeated)"
        )
    return dict(archive)


def _check_update(
    steps: tuple[str, ...],
    files: dict[str, bytes],
    trusted: Callable[[str], bytes],
    verify: Verifier,
) -> DeviceUpdate:
    folder = "\\".join(steps)

    def member(file: str) -> str:
        return show(f"{folder}\\{file}")

    for file in MEMBERS:
        if file not in files:
            raise CabError(
                f"member {member(file)} is missing (each update needs {', '.join(MEMBERS)})"
            )
    kind = _folder_kind(steps, folder)
    vendor, version = kind.vendor, steps[5]
    catalog = parse_catalog(files[CATALOG], member(CATALOG))
    _match_catalog(catalog, kind, version, member(CATALOG))
    verify_catalog(catalog, vendor, trusted(vendor), verify, member(CATALOG))
    image = files[IMAGE]
    listed = catalog.file(IMAGE)
    if listed is None or len(catalog.files) != 1:
        names = ", ".join(f.name for f in catalog.files)
        raise CabError(f"member {member(CATALOG)}: must list exactly {IMAGE}, lists {names}")
    image_sha = hashlib.sha256(image).hexdigest()
    if len(image) != listed.size:
        raise CabError(
            f"member {member(IMAGE)}: size {len(image)} does not match the signed catalog "
            f"({listed.size}): the image was altered"
        )
    if image_sha != listed.sha256:
        raise CabError(
            f"member {member(IMAGE)}: SHA-256 {image_sha} does not match the signed "
            f"catalog ({listed.sha256}): the image was altered"
        )
    path = update_folder(kind, version)
    update = DeviceUpdate(
        kind,
        version,
        UpdateFile.of(CATALOG, path / CATALOG, files[CATALOG]),
        UpdateFile(IMAGE, path / IMAGE, image, image_sha),
    )
    _check_description(files[DESCRIPTION], update, member(DESCRIPTION))
    return update


def _folder_kind(steps: tuple[str, ...], member: str) -> DeviceKind:
    """The device kind a member's folder names; CabError if it is not one the lab knows."""
    _, vendor, model, revision, locale, version = steps[:6]
    try:
        named = DeviceKind(steps[0], vendor, model, revision, locale)
        kind = check_kind(named)
        if kind != named:
            raise IdentityError(f"the folder must be written {kind.path}, not {named.path}")
        if canonical_version(version) != version:
            raise IdentityError(f"version {version!r} must be written without leading zeros")
    except IdentityError as exc:
        raise CabError(f"member {show(member)}: {exc}") from None
    return kind


def _match_catalog(catalog: Catalog, kind: DeviceKind, version: str, member: str) -> None:
    expected = {
        "vendor": kind.vendor,
        "model": kind.model,
        "revision": kind.revision,
        "locale": kind.locale,
        "version": version,
    }
    for key, value in expected.items():
        said = getattr(catalog, key)
        if said != value:
            raise CabError(
                f"member {member}: the catalog says {key} {said!r}, its folder {value!r}"
            )


def _check_description(data: bytes, update: DeviceUpdate, member: str) -> None:
    def bad(problem: str) -> CabError:
        return CabError(f"member {member}: {problem}")

    if len(data) > MAX_DESCRIPTION_SIZE:
        raise bad(f"description larger than {MAX_DESCRIPTION_SIZE} bytes")
    try:
        root: Any = SafeET.fromstring(data, forbid_dtd=True)
    except (ValueError, SyntaxError) as exc:
        # defusedxml's refusals are ValueErrors; malformed XML is a ParseError (SyntaxError).
        why = _XML_REFUSALS.get(type(exc).__name__, f"{exc}")
        raise bad(f"not a valid description: {why}") from None
    kind = update.kind
    expected = [
        ("DeviceType", kind.device_type),
        ("Vendor", kind.vendor),
        ("Model", kind.model),
        ("Revision", kind.revision),
        ("Locale", kind.locale),
        ("Version", update.version),
    ]
    children = list(root)
    tags = [child.tag for child in children]
    wanted = [tag for tag, _ in expected] + ["Files"]
    if root.tag != "DeviceUpdate" or tags != wanted:
        raise bad(f"a description is <DeviceUpdate> with {', '.join(wanted)} in that order")
    for child, (tag, value) in zip(children, expected, strict=False):
        said = (child.text or "").strip()
        if said != value or len(child):
            raise bad(f"{tag} is {said!r} but the member's folder says {value!r}")
    entries = list(children[-1])
    listed: dict[str, tuple[str, str]] = {}
    for entry in entries:
        if entry.tag != "File" or set(entry.attrib) != {"name", "size", "sha256"}:
            raise bad("each <File> needs exactly name, size and sha256")
        listed[entry.attrib["name"]] = (entry.attrib["size"], entry.attrib["sha256"])
    if sorted(listed) != sorted(f.module for f in update.files) or len(entries) != len(listed):
        raise bad(f"<Files> must list {CATALOG} and {IMAGE} once each, lists {sorted(listed)}")
    for file in update.files:
        size, sha = listed[file.module]
        if size != str(file.size) or sha != file.sha256:
            raise bad(
                f"{file.module} is described as {size} bytes {sha}, but is "
                f"{file.size} bytes {file.sha256}"
            )
