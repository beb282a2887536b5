"""Importing a vendor cab into front ends' file stores and rules, and removing rules with
their files: the two operations that change the update store and file stores together.

An import is all or nothing. The cab is checked completely in memory first (lab.cab), so
a bad cab is refused before anything is touched. Then, holding the file-store lock, the
files that are new or different are written through a FileChange (journal, staging,
atomic renames; lab.filestore) and the rules and version records are committed in one
store transaction that also records the change's id. A failure or a killed process before
that commit leaves a journal that the next process undoes; after it, the change is only
tidied up. An import that would change nothing writes nothing, not even a record.

Test hook: when the environment variable ``LAB_TEST_KILL_AT`` names a step (one of
``STEPS``), the importing process kills itself with SIGKILL on reaching it. Tests use it
to interrupt an import at an exact point; it has no other use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lab import filestore
from lab.cab import CabContents, DeviceUpdate, Progress, read_cab
from lab.catalog import Verifier
from lab.config import FrontEnd
from lab.decision import ServedFile
from lab.errors import CabError, StoreError
from lab.filestore import FileChange, FileStore, FileStoreLock
from lab.models import KindKey
from lab.store import ImportedVersion, RuleChange, Selection, Store

KILL_ENV = "LAB_TEST_KILL_AT"
STEPS = ("locked", "journal-written", "staged", "file-placed", "all-placed", "committed")
MAX_CAB_SIZE = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class ImportResult:
    """What an import did: per rule and server, and how many files it wrote."""

    cab: str
    servers: tuple[str, ...]
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
) -> CabContents:
    """Read and check the cab at ``path`` (see lab.cab.read_cab); CabError if it is bad."""
    try:
        size = path.stat().st_size
        if size > MAX_CAB_SIZE:
            raise CabError(f"{path}: {size} bytes is larger than a cab may be ({MAX_CAB_SIZE})")
        data = path.read_bytes()
    except OSError as exc:
        raise CabError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return read_cab(data, path.name, trusted, verify, progress)


def served_files(update: DeviceUpdate) -> tuple[ServedFile, ...]:
    """The files of an update as the store records them (catalog first)."""
    return tuple(ServedFile(f.module, str(f.path), f.size, f.sha256) for f in update.files)


def import_cab(
    state_dir: Path,
    cab: CabContents,
    servers: Sequence[FrontEnd],
    *,
    progress: Progress | None = None,
    checkpoint: Callable[[str], None] | None = None,
) -> ImportResult:
    """Write a checked cab into the file stores of ``servers`` and make its versions pending."""
    if not servers:
        raise StoreError("an import needs at least one front end")

    def step(name: str) -> None:
        if checkpoint is not None:
            checkpoint(name)
        _test_kill(name)

    def report(what: str, done: int) -> None:
        if progress is not None:
            progress(what, done, 4)

    with Store.open(state_dir) as store, FileStoreLock(state_dir):
        step("locked")
        recovered = filestore.recover(state_dir, store.import_recorded)
        report("comparing with the file stores", 0)
        change = FileChange(state_dir, uuid.uuid4().hex)
        items: list[ImportedVersion] = []
        for fe in servers:
            files = FileStore(state_dir, fe.name)
            for update in cab.updates:
                items.append(
                    ImportedVersion(
                        fe.name, fe.fqdn, update.kind, update.version, served_files(update)
                    )
                )
                for file in update.files:
                    if not files.holds(file.path, file.size, file.sha256):
                        change.add(files, file.path, file.data)
        names = tuple(fe.name for fe in servers)
        planned, records = store.preview_import(items)
        if change.empty and records == 0 and all(c.action == "unchanged" for c in planned):
            report("nothing to change", 4)
            return ImportResult(cab.name, names, tuple(planned), 0, recovered)
        report(f"writing {change.count} files", 1)
        if not change.empty:
            try:
                change.apply(step)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the file stores ({exc}); nothing was imported"
                ) from exc
        report("recording rules", 2)
        try:
            changes = store.record_import(change.id, cab.name, cab.sha256, items)
        except BaseException:
            # Undo, unless the commit did happen after all; if the store cannot even say,
            # the journal stays and the next process to open the store decides.
            with contextlib.suppress(Exception):
                filestore.recover(state_dir, store.import_recorded)
            raise
        step("committed")
        report("tidying up", 3)
        change.finish()
        report("imported", 4)
        return ImportResult(cab.name, names, tuple(changes), change.count, recovered)


def remove_rules(state_dir: Path, selection: Selection) -> list[RuleChange]:
    """Delete the selected rules, then the files of theirs that no rule refers to any more."""
    with Store.open(state_dir) as store, FileStoreLock(state_dir):
        filestore.recover(state_dir, store.import_recorded)
        changes = store.remove(selection)
        servers = {c.rule.server for c in changes}
        kept = {(r.server, r.kind.key) for r in store.rules()}
        try:
            for server in sorted(servers):
                sweep_folders(FileStore(state_dir, server), {k for s, k in kept if s == server})
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
