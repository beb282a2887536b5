"""Hostile cabs against `lab update import`, and what a running lab serves while one imports.

Every import runs the real `lab` command in a process of its own against a real `lab up`;
its peak memory is that one process's maximum resident set, as ``os.wait4`` reports it for
exactly that child (spawned from a small process, see MEASURE). The cabs are written block
by block (tests/security/cabs.py): a bomb of zeros, headers that lie, a genuine cab of 256 MiB.
Each limit is also shown not to hurt a normal import: the genuine cab imports, a cab under
a low limit imports, an import that is allowed to finish is served.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import tomllib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import tomli_w
from cabs import CabLayout, Folder, chunked, members_in_order, mszip_blocks, write_cab
from conftest import INSIDE_PHONE
from labprocess import LabProcess

from lab.models import phone_model
from lab.net.config import load_config
from lab.net.pki import LabPKI
from lab.store.cab import (
    CATALOG,
    DESCRIPTION,
    IMAGE,
    DeviceUpdate,
    UpdateFile,
    build_cab,
    description_xml,
    update_folder,
)
from lab.store.cabformat import CabMember
from lab.store.catalog import CatalogFile, catalog_body, sign_catalog
from lab.store.importer import KILL_ENV, STEPS, remove_rules
from lab.store.store import Selection, Store

MiB = 1024 * 1024
BOMB_PEAK = 100 * MiB
GENUINE_PEAK = 300 * MiB
BIG_IMAGE = 256 * MiB
SMALL_IMAGE = 4096
LOW_LIMIT = 100_000
SAFETY = 10.0  # seconds: only ever reached when the lab misbehaves
MODEL = phone_model("CX600")
# The pool fe01 and fe02 serve (the default lab's other pool is se01.contoso.test).
POOL01 = "pool01.contoso.test"
POOL01_FILES = PurePosixPath("pools", POOL01, "DeviceUpdateFiles")


@dataclass
class Run:
    """A finished `lab` process: exit code, output, and its own peak resident memory."""

    returncode: int
    stdout: str
    stderr: str
    peak: int  # bytes


# Runs a command and writes its exit code and its own peak memory (KiB) to a file. A process
# starts from a copy of the one that spawns it, and Linux counts that copy in its peak: so
# the `lab` command is spawned from this small process, never from the test's large one.
MEASURE = """
import os, subprocess, sys
report, *command = sys.argv[1:]
child = subprocess.Popen(command)
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(report, "w") as out:
    out.write(f"{child.returncode} {usage.ru_maxrss}")
"""


def run_lab(lab: LabProcess, *args: str, config: Path | None = None, kill_at: str = "") -> Run:
    """Run the `lab` command against ``lab`` (or ``config``) in a process of its own."""
    command = [sys.executable, "-m", "lab.cli", "--config", str(config or lab.config)]
    command += ["--state-dir", str(lab.state), *args]
    env = {**os.environ, KILL_ENV: kill_at} if kill_at else None
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report"
        measured = subprocess.run(
            [sys.executable, "-c", MEASURE, str(report), *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert measured.returncode == 0, measured.stderr
        returncode, peak = map(int, report.read_text().split())
    return Run(returncode, measured.stdout, measured.stderr, peak * 1024)  # KiB on Linux


# --- cabs -------------------------------------------------------------------------------------


@dataclass
class Update:
    """One CX600 update's members as a vendor signs them, the image given by size and hash."""

    version: str
    catalog: bytes
    description: bytes
    image_size: int

    @property
    def folder(self) -> PurePosixPath:
        return update_folder(MODEL.kind(), self.version)

    def member(self, file: str) -> str:
        return "\\".join((*self.folder.parts, file))

    def members(self, image_size: int | None = None) -> list[CabMember]:
        """The three members as the builder lays them out, the image's size as declared."""
        declared = self.image_size if image_size is None else image_size
        return members_in_order(
            [
                (self.member(CATALOG), len(self.catalog)),
                (self.member(IMAGE), declared),
                (self.member(DESCRIPTION), len(self.description)),
            ]
        )


def signed_update(lab: LabProcess, version: str, image_size: int, image_sha256: str) -> Update:
    """A catalog and description for a CX600 image, signed with the lab's Polycom key."""
    signer = LabPKI(load_config(lab.config)).vendor(MODEL.vendor)
    kind = MODEL.kind()
    body = catalog_body(
        kind.vendor,
        kind.model,
        kind.revision,
        kind.locale,
        version,
        [CatalogFile(IMAGE, image_size, image_sha256)],
    )
    catalog = sign_catalog(body, signer)
    folder = update_folder(kind, version)
    described = DeviceUpdate(
        kind,
        version,
        UpdateFile.of(CATALOG, folder / CATALOG, catalog),
        UpdateFile(IMAGE, folder / IMAGE, image_size, image_sha256),
    )
    return Update(version, catalog, description_xml(described), image_size)


def repeated(pattern: bytes, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``pattern`` over and over, a MiB at a time."""
    piece = pattern * (MiB // len(pattern))
    for at in range(0, size, MiB):
        yield piece[: min(MiB, size - at)]


def sha256_of(pieces: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def write_update_cab(
    path: Path, update: Update, image: Iterator[bytes], image_size: int, level: int = 1
) -> None:
    """A one-folder MSZIP cab of ``update`` whose image member holds ``image``."""
    chunks = chunked([update.catalog, *image, update.description])
    blocks = mszip_blocks(chunks, level)
    with path.open("wb") as out:
        write_cab(out, CabLayout(update.members(image_size), [Folder(blocks)]))


# Something like an image, but compressible, so that a 256 MiB cab is written in a moment.
PATTERN = hashlib.shake_256(b"device update lab: a genuine large image").digest(4096)


@pytest.fixture(scope="module")
def small(hostile_lab: LabProcess) -> tuple[Update, bytes]:
    """A genuine update with a small image, and that image."""
    image = b"".join(repeated(PATTERN, SMALL_IMAGE))
    update = signed_update(
        hostile_lab, "4.0.7577.5001", SMALL_IMAGE, hashlib.sha256(image).hexdigest()
    )
    return update, image


def served_tree(lab: LabProcess) -> dict[str, int]:
    """Every file in the lab's file stores and staging (each pool's, under ``pools/``), and
    in the front ends' own folders but their device logs, by path, with its size."""
    return {
        p.relative_to(lab.state).as_posix(): p.stat().st_size
        for top in ("pools", "servers")
        for p in (lab.state / top).rglob("*")
        if p.is_file() and "DeviceLogs" not in p.parts
    }


# --- (a) bombs -------------------------------------------------------------------------------


def bomb_past_the_limit(lab: LabProcess, small: tuple[Update, bytes], path: Path) -> str:
    """Headers declaring 3 GiB for the image, on a cab of a few hundred bytes."""
    update, image = small
    chunks = chunked([update.catalog, image, update.description])
    layout = CabLayout(update.members(3 * 1024 * MiB), [Folder(mszip_blocks(chunks))])
    with path.open("wb") as out:
        write_cab(out, layout)
    return (
        r"UCUpdates\.cab: it unpacks to 3221\d+ bytes, more than the 2147483648 bytes "
        r"\[limits\] cab_unpacked_max allows"
    )


def bomb_of_zeros(lab: LabProcess, small: tuple[Update, bytes], path: Path) -> str:
    """A genuine catalog for a 4 KiB image, and an image of 512 MiB of zeros (0.9 MB packed)."""
    update, _ = small
    zeros = iter([bytes(MiB)] * 512)
    write_update_cab(path, update, zeros, 512 * MiB, level=9)
    return (
        rf"UCUpdates\.cab: member '{re.escape(update.member(IMAGE))}': size 536870912 "
        r"does not match the signed catalog \(4096\): the image was altered"
    )


def bomb_in_one_block(lab: LabProcess, small: tuple[Update, bytes], path: Path) -> str:
    """Honest headers (about 5 KB in all), and one block whose data unpacks to 56 MiB."""
    update, image = small
    honest = update.catalog + image + update.description
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = b"CK" + packer.compress(honest)
    payload += b"".join(packer.compress(bytes(MiB)) for _ in range(56))
    payload += packer.flush()
    assert len(payload) <= 0xFFFF  # a block's data size is 16 bits
    with path.open("wb") as out:
        write_cab(out, CabLayout(update.members(), [Folder([(payload, len(honest))])]))
    return rf"corrupt cab: block 0 of folder 0 unpacks to more than the {len(honest)} bytes"


# Writes a bomb to the path given and returns a pattern of the message refusing it.
BombMaker = Callable[[LabProcess, tuple[Update, bytes], Path], str]
BOMBS: list[BombMaker] = [bomb_past_the_limit, bomb_of_zeros, bomb_in_one_block]


@pytest.mark.parametrize("make_bomb", BOMBS, ids=[b.__name__ for b in BOMBS])
def test_a_cab_bomb_is_refused_with_little_memory_and_nothing_written(
    hostile_lab: LabProcess,
    small: tuple[Update, bytes],
    tmp_path: Path,
    make_bomb: BombMaker,
) -> None:
    cab = tmp_path / "UCUpdates.cab"
    message = make_bomb(hostile_lab, small, cab)
    before = served_tree(hostile_lab)
    run = run_lab(hostile_lab, "update", "import", str(cab), "--all-pools")
    assert run.returncode == 2, run.stderr
    assert re.fullmatch(f"lab: .*{message}.*\n", run.stderr), run.stderr
    assert run.peak < BOMB_PEAK, f"peak {run.peak / MiB:.0f} MiB"
    assert served_tree(hostile_lab) == before
    assert not (hostile_lab.state / "filestore.journal.json").exists()


# --- (b) a genuine large cab ----------------------------------------------------------------


def test_a_genuine_256_mib_cab_imports_with_bounded_memory(
    hostile_lab: LabProcess, tmp_path: Path
) -> None:
    sha = sha256_of(repeated(PATTERN, BIG_IMAGE))
    update = signed_update(hostile_lab, "4.0.7577.5256", BIG_IMAGE, sha)
    cab = tmp_path / "UCUpdates.cab"
    write_update_cab(cab, update, repeated(PATTERN, BIG_IMAGE), BIG_IMAGE)
    run = run_lab(hostile_lab, "update", "import", str(cab), "--pool", "pool01", "--json")
    cab.unlink()
    assert run.returncode == 0, run.stderr
    assert run.peak < GENUINE_PEAK, f"peak {run.peak / MiB:.0f} MiB"
    assert json.loads(run.stdout)["files_written"] == 2
    stored = hostile_lab.state / POOL01_FILES / update.folder / IMAGE
    with stored.open("rb") as image:
        assert hashlib.file_digest(image, "sha256").hexdigest() == sha
    # Its 256 MiB go again with the rule, not to weigh on the other tests.
    remove_rules(hostile_lab.state, Selection(pool=POOL01, model="CX600"))
    assert not stored.exists()


# --- (c) the configured limit ------------------------------------------------------------------


def test_a_low_unpacked_limit_refuses_an_ordinary_cab_naming_the_key(
    hostile_lab: LabProcess, tmp_path: Path
) -> None:
    data = tomllib.loads(hostile_lab.config.read_text())
    data.setdefault("limits", {})["cab_unpacked_max"] = LOW_LIMIT
    low = tmp_path / "low.toml"
    low.write_text(tomli_w.dumps(data))
    pki = LabPKI(load_config(hostile_lab.config))
    cabs = {}
    for size in (LOW_LIMIT // 2, LOW_LIMIT):  # the whole cab: its image and a little more
        cabs[size] = tmp_path / f"UCUpdates-{size}.cab"
        version = f"4.0.7577.{5100 + len(cabs)}"
        cabs[size].write_bytes(build_cab([(phone_model("HP4110"), version)], pki.vendor, size))
    before = served_tree(hostile_lab)
    refused = run_lab(
        hostile_lab, "update", "import", str(cabs[LOW_LIMIT]), "--all-pools", config=low
    )
    assert refused.returncode == 2
    said = re.fullmatch(
        rf"lab: UCUpdates-{LOW_LIMIT}\.cab: it unpacks to (\d+) bytes, more than the "
        rf"{LOW_LIMIT} bytes \[limits\] cab_unpacked_max allows\n",
        refused.stderr,
    )
    assert said is not None, refused.stderr
    assert int(said[1]) > LOW_LIMIT
    assert served_tree(hostile_lab) == before
    # The same limit lets an ordinary cab under it through.
    allowed = run_lab(
        hostile_lab, "update", "import", str(cabs[LOW_LIMIT // 2]), "--all-pools", config=low
    )
    assert allowed.returncode == 0, allowed.stderr
    # A catalog and an image in the store of each of the lab's two pools.
    assert "4 files written" in " ".join(allowed.stdout.split())


# --- (d) an import that has not committed is never served ----------------------------------------


def fetch(lab: LabProcess, server: str, path: PurePosixPath) -> tuple[int, bytes]:
    """GET a file from ``server``'s internal site, as a phone inside would."""
    host, port = lab.endpoint(server, "internal")
    fqdn = load_config(lab.config).front_end(server).fqdn
    lease = json.loads((lab.state / "lease.json").read_text())
    context = ssl.create_default_context(cafile=lease["ca_cert"])
    with (
        socket.create_connection((host, port), SAFETY, source_address=(INSIDE_PHONE, 0)) as raw,
        context.wrap_socket(raw, server_hostname=fqdn) as tls,
    ):
        target = f"/DeviceUpdateFiles_Int/{path}"
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {fqdn}\r\nConnection: close\r\n\r\n".encode())
        answer = http.client.HTTPResponse(tls)
        answer.begin()
        return answer.status, answer.read()


def cab_of_version(lab: LabProcess, tmp_path: Path, version: str) -> tuple[Update, bytes, Path]:
    """A genuine cab of a CX600 update at ``version``, with an image of its own."""
    image = version.encode() + b"".join(repeated(PATTERN, SMALL_IMAGE))[len(version) :]
    update = signed_update(lab, version, SMALL_IMAGE, hashlib.sha256(image).hexdigest())
    cab = tmp_path / "UCUpdates.cab"
    write_update_cab(cab, update, iter([image]), SMALL_IMAGE)
    return update, image, cab


# From the first step that writes anything to the last one before the import is committed.
BEFORE_COMMIT = STEPS[STEPS.index("journal-written") : STEPS.index("committed")]


@pytest.mark.parametrize("step", BEFORE_COMMIT)
def test_an_import_stopped_before_its_commit_serves_none_of_its_files(
    hostile_lab: LabProcess, tmp_path: Path, step: str
) -> None:
    version = f"4.0.7577.{5300 + BEFORE_COMMIT.index(step)}"
    update, _, cab = cab_of_version(hostile_lab, tmp_path, version)
    killed = run_lab(hostile_lab, "update", "import", str(cab), "--pool", POOL01, kill_at=step)
    assert killed.returncode == -9, killed.stderr
    assert (hostile_lab.state / "filestore.journal.json").exists()  # it got that far
    for file in (CATALOG, IMAGE):
        status, _ = fetch(hostile_lab, "fe01", update.folder / file)
        assert status == 404, f"{file} is served by the running lab after {step}"
    # The next process to open the store drops what the killed import left.
    with Store.open(hostile_lab.state) as store:
        assert not any(version in r.versions for r in store.rules())
    assert not (hostile_lab.state / "filestore.journal.json").exists()
    assert not (hostile_lab.state / "pools" / POOL01 / ".staging").exists()


def test_an_import_stopped_after_its_commit_is_served_once_the_next_command_finishes_it(
    hostile_lab: LabProcess, tmp_path: Path
) -> None:
    update, image, cab = cab_of_version(hostile_lab, tmp_path, "4.0.7577.5399")
    killed = run_lab(
        hostile_lab, "update", "import", str(cab), "--pool", POOL01, kill_at="committed"
    )
    assert killed.returncode == -9, killed.stderr
    assert fetch(hostile_lab, "fe01", update.folder / IMAGE)[0] == 404  # not placed yet
    listed = run_lab(hostile_lab, "update", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(r["pending"] == update.version for r in json.loads(listed.stdout))
    assert fetch(hostile_lab, "fe01", update.folder / IMAGE) == (200, image)
    assert fetch(hostile_lab, "fe01", update.folder / CATALOG) == (200, update.catalog)
    # The pool's one store: its other front end serves the same files.
    assert fetch(hostile_lab, "fe02", update.folder / IMAGE) == (200, image)
