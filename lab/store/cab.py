"""Vendor cabs (``UCUpdates.cab``): the builder and the reader that trusts nothing in them.

A cab holds, per device kind and version, three members in one folder named like the file
store's layout, with backslashes as cab paths have them::

    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.xml   description
    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.cat   signed catalog
    UCPhone\\<Vendor>\\<Model>\\<Revision>\\<Locale>\\<Version>\\CPE\\CPE.nbt   image

The reader streams the cab block by block (lab.cabformat) and never holds an image in
memory. Before any data is unpacked it judges the headers: the total the members declare
(``[limits] cab_unpacked_max``), every member name (no absolute paths, drive letters,
``..``, forward slashes or odd characters; nothing outside that layout), every update
whole, descriptions and catalogs small. Then, as the members are unpacked: every catalog
signature with the vendor's certificate (an image is refused on its declared size as soon
as its catalog is known), every size and SHA-256, every description (defusedxml).

Checking writes nothing anywhere. A checked cab (CabContents) remembers how to read the cab
again, and ``extract`` writes the files an import needs, unpacking the cab a second time
and refusing any member that is not the one checked. A problem raises CabError naming the
cab, the member and what is wrong with it.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import defusedxml.ElementTree as SafeET
from cabarchive import CabArchive, CabFile

from lab.errors import CabError, IdentityError
from lab.fileio import write_atomic
from lab.models import DeviceKind, PhoneModel, canonical_version, check_kind
from lab.net.config import Limits
from lab.store.cabformat import CabIndex, CabMember, read_index, show, unpack
from lab.store.catalog import (
    Catalog,
    CatalogFile,
    Signer,
    Verifier,
    catalog_body,
    parse_catalog,
    sign_catalog,
    verify_catalog,
)

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
MAX_CATALOG_SIZE = 64 * KiB
DEFAULT_UNPACKED_MAX = Limits.cab_unpacked_max

# Members carry this time so the same inputs always give the same members.
MEMBER_TIME = datetime.datetime(2012, 11, 2, 10, 0, 0)
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

# Small members are kept in memory while a cab is checked: no larger than this, by name.
_SMALL_MEMBERS = {DESCRIPTION: MAX_DESCRIPTION_SIZE, CATALOG: MAX_CATALOG_SIZE}
# How often checking a cab reports progress, in unpacked bytes.
_REPORT_EVERY = 4 * MiB

# Reports long work: (what is being done, steps done, steps in all).
Progress = Callable[[str, int, int], None]
# Opens a cab for reading from its first byte (its file, or its bytes in memory).
Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class UpdateFile:
    """One file of an update as the file store will hold it: its place, size and SHA-256.

    A built file carries its bytes; a file of a checked cab does not (CabContents.extract
    unpacks it again when it is imported).
    """

    module: str
    path: PurePosixPath
    size: int
    sha256: str
    content: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, module: str, path: PurePosixPath, data: bytes) -> UpdateFile:
        """The file ``module`` at ``path`` holding ``data``, its SHA-256 computed once."""
        return cls(module, path, len(data), hashlib.sha256(data).hexdigest(), data)

    @property
    def data(self) -> bytes:
        """The bytes of a built file; CabError for a file of a checked cab."""
        if self.content is None:
            raise CabError(f"{self.path} is in its cab, not in memory (extract it)")
        return self.content


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
class CabSource:
    """Where a checked cab is read again: how to open it, its checked headers, the limit."""

    opener: Opener
    index: CabIndex
    limit: int


@dataclass(frozen=True)
class CabContents:
    """A cab that passed every check: its name, SHA-256, the updates it holds, and (for a
    cab that was read) where to read it again."""

    name: str
    sha256: str
    updates: tuple[DeviceUpdate, ...]
    source: CabSource | None = field(default=None, repr=False, compare=False)

    def extract(self, targets: Mapping[PurePosixPath, Sequence[Path]]) -> None:
        """Write each file named in ``targets`` (by its layout path) to every path given for
        it, as new files synced to disk, unpacking the cab again block by block.

        CabError (naming the cab) when a file is not the one checked: the cab changed since.
        The caller removes what was written when this fails.
        """
        files = {f.path: f for update in self.updates for f in update.files}
        unknown = sorted(str(path) for path in targets if path not in files)
        if unknown:
            raise CabError(f"{self.name}: holds no file {', '.join(unknown)}")
        if self.source is None:
            raise CabError(f"{self.name}: was not read from a cab, so it cannot be unpacked")
        extractor = _Extractor(targets, files)
        try:
            try:
                stream = self.source.opener()
            except OSError as exc:
                raise CabError(f"cannot be read again: {exc.strerror or exc}") from None
            with stream:
                index = read_index(stream, self.source.limit)
                if index != self.source.index:
                    raise CabError(
                        "the cab changed since it was checked; check and import it again"
                    )
                unpack(stream, index, extractor)
        except CabError as exc:
            raise CabError(f"{self.name}: {exc}") from None
        finally:
            extractor.close()


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
    *,
    limit: int = DEFAULT_UNPACKED_MAX,
) -> CabContents:
    """Check a whole cab held in memory (see check_cab); CabError naming what is wrong."""
    return check_cab(lambda: io.BytesIO(data), name, trusted, verify, progress, limit=limit)


def check_cab(
    opener: Opener,
    name: str,
    trusted: Callable[[str], bytes],
    verify: Verifier,
    progress: Progress | None = None,
    *,
    limit: int = DEFAULT_UNPACKED_MAX,
) -> CabContents:
    """Check the cab that ``opener`` reads, block by block and writing nothing: its updates.

    The headers are judged first (the unpacked total within ``limit``, every member name,
    every update whole), then each member as it is unpacked. ``trusted(vendor)`` gives the
    vendor certificate (PEM) catalogs must verify with, and ``verify`` is
    lab.pki.verify_vendor_signature. CabError names the cab, the member and the problem.
    """
    try:
        with opener() as source:
            index = read_index(source, limit)
            checker = _Checker(_check_layout(index), trusted, verify, progress)
            unpack(source, index, checker)
            updates = checker.updates()
            digest = _sha256_of(source)
    except CabError as exc:
        raise CabError(f"{name}: {exc}") from None
    except OSError as exc:
        raise CabError(f"{name}: cannot be read: {exc.strerror or exc}") from None
    if progress:
        progress("checked", index.unpacked, index.unpacked)
    return CabContents(name, digest, updates, CabSource(opener, index, limit))


# The members of each update's folder by file name (CPE.xml, CPE.cat, CPE.nbt), keyed by the
# folder's path steps.
_Layout = dict[tuple[str, ...], dict[str, CabMember]]


def _check_layout(index: CabIndex) -> _Layout:
    """Every member name, update and small member's size, judged from the headers alone."""
    layout: _Layout = {}
    for member in index.members:
        steps = member_parts(member.name)
        if steps[:7] not in layout:
            _folder_kind(steps, member.name)
        layout.setdefault(steps[:7], {})[steps[7]] = member
    for steps, files in sorted(layout.items()):
        for file in MEMBERS:
            if file not in files:
                missing = "\\".join((*steps, file))
                raise CabError(
                    f"member {show(missing)} is missing (each update needs {', '.join(MEMBERS)})"
                )
        for file, most in _SMALL_MEMBERS.items():
            member = files[file]
            if member.size > most:
                raise CabError(
                    f"member {show(member.name)}: {member.size} bytes, more than a {file} "
                    f"may be ({most} bytes)"
                )
    return layout


class _Checker:
    """Checks the members of updates as they are unpacked (a lab.store.cabformat.MemberSink).

    Descriptions and catalogs (small: their sizes were checked in the headers) are kept,
    images only hashed. A catalog is verified as soon as it is whole, so an image that
    follows its catalog (as in every cab the builder makes) is refused on its declared size
    before a byte of it is unpacked.
    """

    def __init__(
        self,
        layout: _Layout,
        trusted: Callable[[str], bytes],
        verify: Verifier,
        progress: Progress | None,
    ) -> None:
        self._layout = layout
        self._where = {
            m.name: (steps, file) for steps, files in layout.items() for file, m in files.items()
        }
        self._trusted = trusted
        self._verify = verify
        self._progress = progress
        self._total = sum(m.size for files in layout.values() for m in files.values())
        self._done = self._reported = 0
        self._kept: dict[tuple[str, ...], dict[str, bytes]] = {}
        self._images: dict[tuple[str, ...], tuple[int, str]] = {}
        self._listed: dict[tuple[str, ...], CatalogFile] = {}
        self._hashing = False
        self._buffer = bytearray()
        self._hash = hashlib.sha256()

    def begin(self, member: CabMember) -> None:
        """Start hashing an image (refused now if its catalog says otherwise) or keeping
        a small member."""
        steps, file = self._where[member.name]
        self._hashing = file == IMAGE
        if self._hashing:
            if steps in self._listed:
                self._match_image(steps, member.size, None)
            self._hash = hashlib.sha256()
        else:
            self._buffer = bytearray()

    def write(self, data: memoryview) -> None:
        """Hash or keep the next bytes of the member."""
        if self._hashing:
            self._hash.update(data)
        else:
            self._buffer += data
        self._done += len(data)
        if self._progress and self._done - self._reported >= _REPORT_EVERY:
            self._reported = self._done
            self._progress("unpacking", self._done, self._total)

    def end(self, member: CabMember) -> None:
        """Check what can be checked now that ``member`` is whole."""
        steps, file = self._where[member.name]
        if self._hashing:
            self._images[steps] = (member.size, self._hash.hexdigest())
            if steps in self._listed:
                self._match_image(steps, *self._images[steps])
            return
        data = bytes(self._buffer)
        self._kept.setdefault(steps, {})[file] = data
        if file == CATALOG:
            self._listed[steps] = self._check_catalog(steps, data)
            if steps in self._images:
                self._match_image(steps, *self._images[steps])

    def updates(self) -> tuple[DeviceUpdate, ...]:
        """Every update of the cab, once it is unpacked whole; CabError if one is wrong."""
        updates: list[DeviceUpdate] = []
        for steps in sorted(self._layout):
            kind = _folder_kind(steps, "\\".join(steps))
            version = steps[5]
            path = update_folder(kind, version)
            catalog = self._kept[steps][CATALOG]
            size, sha256 = self._images[steps]
            update = DeviceUpdate(
                kind,
                version,
                UpdateFile(CATALOG, path / CATALOG, len(catalog), _sha256(catalog)),
                UpdateFile(IMAGE, path / IMAGE, size, sha256),
            )
            member = show("\\".join((*steps, DESCRIPTION)))
            _check_description(self._kept[steps][DESCRIPTION], update, member)
            updates.append(update)
        return tuple(updates)

    def _check_catalog(self, steps: tuple[str, ...], data: bytes) -> CatalogFile:
        """The image entry of a folder's catalog, once its signature and names check out."""
        kind = _folder_kind(steps, "\\".join(steps))
        member = show("\\".join((*steps, CATALOG)))
        catalog = parse_catalog(data, member)
        _match_catalog(catalog, kind, steps[5], member)
        verify_catalog(catalog, kind.vendor, self._trusted(kind.vendor), self._verify, member)
        listed = catalog.file(IMAGE)
        if listed is None or len(catalog.files) != 1:
            names = ", ".join(f.name for f in catalog.files)
            raise CabError(f"member {member}: must list exactly {IMAGE}, lists {names}")
        return listed

    def _match_image(self, steps: tuple[str, ...], size: int, sha256: str | None) -> None:
        """Refuse an image whose size (or, once hashed, SHA-256) the signed catalog denies."""
        listed = self._listed[steps]
        member = show("\\".join((*steps, IMAGE)))
        if size != listed.size:
            raise CabError(
                f"member {member}: size {size} does not match the signed catalog "
                f"({listed.size}): the image was altered"
            )
        if sha256 is not None and sha256 != listed.sha256:
            raise CabError(
                f"member {member}: SHA-256 {sha256} does not match the signed "
                f"catalog ({listed.sha256}): the image was altered"
            )


class _Extractor:
    """Writes the members asked for to their paths as they are unpacked (a MemberSink),
    each synced to disk and checked against what the cab held when it was checked."""

    def __init__(
        self,
        targets: Mapping[PurePosixPath, Sequence[Path]],
        checked: Mapping[PurePosixPath, UpdateFile],
    ) -> None:
        self._targets = targets
        self._checked = checked
        self._outputs: list[BinaryIO] = []
        self._hash = hashlib.sha256()

    def begin(self, member: CabMember) -> None:
        """Open every path ``member`` goes to (none: it is unpacked and dropped)."""
        self._hash = hashlib.sha256()
        for path in self._targets.get(_layout_path(member), ()):
            self._outputs.append(open(path, "xb"))  # noqa: SIM115 - closed in end or close

    def write(self, data: memoryview) -> None:
        """Write the next bytes to every path of the member."""
        if self._outputs:
            self._hash.update(data)
            for output in self._outputs:
                output.write(data)

    def end(self, member: CabMember) -> None:
        """Sync and close the member's files; CabError if it is not the member checked."""
        if not self._outputs:
            return
        for output in self._outputs:
            output.flush()
            os.fsync(output.fileno())
        self.close()
        checked = self._checked[_layout_path(member)]
        if (member.size, self._hash.hexdigest()) != (checked.size, checked.sha256):
            raise CabError(
                f"member {show(member.name)} changed since the cab was checked; "
                "check and import it again"
            )

    def close(self) -> None:
        """Close whatever is still open (after a failure: the caller removes the files)."""
        outputs, self._outputs = self._outputs, []
        for output in outputs:
            output.close()


def _layout_path(member: CabMember) -> PurePosixPath:
    """Where a member (its name checked by member_parts) goes in a file store."""
    return PurePosixPath(*member.name.split("\\"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_of(source: BinaryIO) -> str:
    """The SHA-256 of a whole cab, read from its first byte a MiB at a time."""
    digest = hashlib.sha256()
    source.seek(0)
    for block in iter(lambda: source.read(MiB), b""):
        digest.update(block)
    return digest.hexdigest()


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
