"""Importing a vendor cab into pools' file stores and rules, and removing rules with
their files: the two operations that change the update store and file stores together.

An import is all or nothing. The cab is checked completely first (lab.cab: streamed block
by block, its sizes within ``[limits] cab_unpacked_max``, writing nothing), so a bad cab is
refused before anything is touched. Then, holding the file-store lock, the files that are
new or different are unpacked from the cab again into staging through a FileChange
(lab.filestore), and the rules and version records are committed in one store transaction
that also records the change's id; only then are the staged files moved into the file
stores, so a running service never serves a file of an import that is not committed. A
failure or a killed process before that commit leaves a journal that the next process
drops; after it, the next process finishes placing the files. An import that would change
nothing writes nothing, not even a record.

Test hook: when the environment variable ``LAB_TEST_KILL_AT`` names a step (one of
``STEPS``), the importing process kills itself with SIGKILL on reaching it. Tests use it
to interrupt an import at an exact point; it has no other use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from lab.clock import utc_now
from lab.errors import CabError, StoreError
from lab.models import KindKey
from lab.store import filestore
from lab.store.cab import DEFAULT_UNPACKED_MAX, CabContents, DeviceUpdate, Progress, check_cab
from lab.store.catalog import Verifier
from lab.store.decision import ServedFile
from lab.store.filestore import FileChange, FileStore, FileStoreLock
from lab.store.store import ImportedVersion, RuleChange, Selection, Store

KILL_ENV = "LAB_TEST_KILL_AT"
STEPS = ("locked", "journal-written", "staged", "committed", "file-placed", "all-placed")
MAX_CAB_SIZE = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class ImportResult:
    """What an import did: per rule and pool, and how many files it wrote."""

    cab: str
    pools: tuple[str, ...]
    changes: tuple[RuleChange, ...]
    files_written: int
    recovered: str | None = None

    @property
    def changed(self) -> bool:
        """False when the import found everything already in place."""
        return self.files_written > 0 or any(c.action != "unchanged" for c in self.changes)


def read_cab_file(
    path: Path,
    trusted: Callable[[str], bytes],
    verify: Verifier,
    progress: Progress | None = None,
    *,
    limit: int = DEFAULT_UNPACKED_MAX,
) -> CabContents:
    """Check the cab at ``path`` (see lab.store.cab.check_cab), unpacking at most ``limit`` bytes;
    CabError if it is bad. An import reads it again from ``path``."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CabError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if size > MAX_CAB_SIZE:
        raise CabError(f"{path}: {size} bytes is larger than a cab may be ({MAX_CAB_SIZE})")
    return check_cab(lambda: path.open("rb"), path.name, trusted, verify, progress, limit=limit)


def served_files(update: DeviceUpdate) -> tuple[ServedFile, ...]:
    """The files of an update as the store records them (catalog first)."""
    return tuple(ServedFile(f.module, str(f.path), f.size, f.sha256) for f in update.files)


def import_cab(
    state_dir: Path,
    cab: CabContents,
    pools: Sequence[str],
    *,
    progress: Progress | None = None,
    checkpoint: Callable[[str], None] | None = None,
    now: Callable[[], datetime] = utc_now,
    pool_of: Mapping[str, str] | None = None,
) -> ImportResult:
    """Write a checked cab into the file stores of ``pools`` (their FQDNs) and make its
    versions pending in each pool's rules, as Import-CsDeviceUpdate does for one pool."""
    if not pools:
        raise StoreError("an import needs at least one pool")

    def step(name: str) -> None:
        if checkpoint is not None:
            checkpoint(name)
        _test_kill(name)

    def report(what: str, done: int) -> None:
        if progress is not None:
            progress(what, done, 4)

    with Store.open(state_dir, now=now, pool_of=pool_of) as store, FileStoreLock(state_dir):
        step("locked")
        recovered = filestore.recover(state_dir, store.import_recorded)
        report("comparing with the file stores", 0)
        change = FileChange(state_dir, uuid.uuid4().hex)
        items: list[ImportedVersion] = []
        for pool in pools:
            files = FileStore(state_dir, pool)
            for update in cab.updates:
                items.append(
                    ImportedVersion(pool, update.kind, update.version, served_files(update))
                )
                for file in update.files:
                    if not files.holds(file.path, file.size, file.sha256):
                        change.add(files, file.path)
        names = tuple(pools)
        planned, records = store.preview_import(items)
        if change.empty and records == 0 and all(c.action == "unchanged" for c in planned):
            report("nothing to change", 4)
            return ImportResult(cab.name, names, tuple(planned), 0, recovered)
        report(f"unpacking {change.count} files", 1)
        if not change.empty:
            try:
                change.stage(cab.extract, step)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the file stores ({exc}); nothing was imported"
                ) from exc
        report("recording rules", 2)
        try:
            changes = store.record_import(change.id, cab.name, cab.sha256, items)
        except BaseException:
            # Drop the staged files, unless the commit did happen after all (then place
            # them); if the store cannot even say, the journal stays for the next process.
            with contextlib.suppress(Exception):
                filestore.recover(state_dir, store.import_recorded)
            raise
        step("committed")
        report("placing files", 3)
        try:
            change.publish(step)
        except OSError as exc:
            raise StoreError(
                f"{cab.name} is imported, but not all its files are in place yet ({exc}); "
                "the next `lab update` command puts them there"
            ) from exc
        report("imported", 4)
        return ImportResult(cab.name, names, tuple(changes), change.count, recovered)


def remove_rules(
    state_dir: Path,
    selection: Selection,
    now: Callable[[], datetime] = utc_now,
    pool_of: Mapping[str, str] | None = None,
) -> list[RuleChange]:
    """Delete the selected rules, then the files of theirs that no rule refers to any more."""
    with Store.open(state_dir, now=now, pool_of=pool_of) as store, FileStoreLock(state_dir):
        filestore.recover(state_dir, store.import_recorded)
        changes = store.remove(selection)
        pools = {c.rule.pool for c in changes}
        kept = {(r.pool, r.kind.key) for r in store.rules()}
        try:
            for pool in sorted(pools):
                sweep_folders(FileStore(state_dir, pool), {k for p, k in kept if p == pool})
        except OSError as exc:
            raise StoreError(f"the rules are removed, but not all their files: {exc}") from None
        return changes


def sweep_folders(files: FileStore, kept: set[KindKey]) -> list[str]:
    """Delete device-kind folders of ``files`` whose kind has no rule (``kept`` keys)."""
    removed: list[str] = []
    if not files.root.is_dir():
        return removed
    for folder in sorted(files.root.glob("*/*/*/*/*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        relative = PurePosixPath(*folder.relative_to(files.root).parts)
        key = tuple(part.casefold() for part in relative.parts)
        if key not in kept and files.remove_folder(relative):
            removed.append(str(relative))
    return removed


def _test_kill(step: str) -> None:
    # The documented test hook (module docstring): stop exactly here, as a crash would.
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
