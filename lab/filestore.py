"""Each front end's file store, and changes to file stores that happen all or not at all.

Layout of the state directory::

    <state>/servers/<fe>/DeviceUpdateFiles/UCPhone/<Vendor>/<Model>/<Rev>/<Locale>/<Version>/CPE/
    <state>/servers/<fe>/.staging/<change id>/new|old/...   files being placed, and backups
    <state>/filestore.lock                                   one writer of file stores at a time
    <state>/filestore.journal.json                           the change in progress, if any

A FileChange is how an import writes: the journal (what will be written, which targets
already existed, which folders will be made) is on disk before anything else; then the new
files are staged beside the file store; then each is put in place with an atomic rename,
keeping a hard link to the file it replaces. The change counts as made only when the
caller records its id in the update store (in the same transaction as the rules). Until
then ``recover`` undoes it: a killed import leaves a journal, and the next process that
takes the lock restores the file stores exactly (files, backups, folders) and removes the
journal; a change whose id is recorded is finished instead (staging and backups deleted).
Everything here runs under the lock, so it never meets another writer halfway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from lab.errors import StoreError

SERVERS_DIR = "servers"
FILES_DIR = "DeviceUpdateFiles"
STAGING_DIR = ".staging"
LOCK_FILE = "filestore.lock"
JOURNAL_FILE = "filestore.journal.json"

# Called with the name of a step as a change proceeds (tests stop a process there).
Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    pass


class FileStore:
    """One front end's file store: ``<state>/servers/<fe>/DeviceUpdateFiles``."""

    def __init__(self, state_dir: Path, server: str) -> None:
        if not server or "/" in server or server in (".", ".."):
            raise StoreError(f"{server!r} is not a front-end name")
        self.state_dir = state_dir
        self.server = server
        self.server_dir = state_dir / SERVERS_DIR / server
        self.root = self.server_dir / FILES_DIR

    def path(self, relative: str | PurePosixPath) -> Path:
        """The path of ``relative`` (a layout path) in this store; StoreError if it escapes."""
        rel = PurePosixPath(relative)
        if rel.is_absolute() or not rel.parts or any(p in ("..", ".", "") for p in rel.parts):
            raise StoreError(f"{str(relative)!r} is not a path inside the file store")
        return self.root.joinpath(*rel.parts)

    def resolve(self, relative: str | PurePosixPath) -> Path | None:
        """The real file behind ``relative`` if it exists inside the store (symlinks followed)."""
        try:
            candidate = self.path(relative).resolve(strict=True)
            root = self.root.resolve(strict=True)
        except (StoreError, OSError):
            return None
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def holds(self, relative: str | PurePosixPath, size: int, sha256: str) -> bool:
        """Whether ``relative`` is a regular file with exactly this size and SHA-256."""
        path = self.path(relative)
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
                return False
            return _sha256_file(path) == sha256
        except OSError:
            return False

    def remove_folder(self, relative: str | PurePosixPath) -> bool:
        """Delete a folder of the store and the parents it leaves empty; True if it existed."""
        target = self.path(relative)
        if not target.exists():
            return False
        shutil.rmtree(target)
        _prune_empty(target.parent, self.root)
        return True


class FileStoreLock:
    """The one lock every writer of file stores holds (an advisory ``flock``)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting if ``blocking``); False when not blocking and it is taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock back."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileStoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True)
class _Entry:
    server: str
    path: str
    existed: bool


class FileChange:
    """Writes to one or more file stores, applied all or nothing (see the module docstring)."""

    def __init__(self, state_dir: Path, change_id: str) -> None:
        self.state_dir = state_dir
        self.id = change_id
        self._data: dict[tuple[str, str], bytes] = {}

    def add(self, store: FileStore, relative: PurePosixPath, data: bytes) -> None:
        """Plan to write ``data`` at ``relative`` in ``store``."""
        store.path(relative)  # refuse a path outside the store now, not halfway
        self._data[(store.server, str(relative))] = data

    @property
    def empty(self) -> bool:
        """True when nothing is planned."""
        return not self._data

    @property
    def count(self) -> int:
        """How many files are planned."""
        return len(self._data)

    def apply(self, checkpoint: Checkpoint = _no_checkpoint) -> None:
        """Journal, stage and place every file; undone again if anything fails here."""
        entries = [
            _Entry(server, path, _target(self.state_dir, server, path).exists())
            for server, path in sorted(self._data)
        ]
        created = _missing_folders(self.state_dir, entries)
        _write_journal(self.state_dir, {"id": self.id, "entries": entries, "created": created})
        checkpoint("journal-written")
        try:
            for entry in entries:
                staged = _staging(self.state_dir, entry.server, self.id, "new", entry.path)
                staged.parent.mkdir(parents=True, exist_ok=True)
                _write_synced(staged, self._data[(entry.server, entry.path)])
            checkpoint("staged")
            for number, entry in enumerate(entries):
                target = _target(self.state_dir, entry.server, entry.path)
                if entry.existed:
                    backup = _staging(self.state_dir, entry.server, self.id, "old", entry.path)
                    backup.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(target, backup)
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = _staging(self.state_dir, entry.server, self.id, "new", entry.path)
                os.replace(staged, target)
                if number == 0:
                    checkpoint("file-placed")
            checkpoint("all-placed")
        except BaseException:
            _undo(self.state_dir, _read_journal(self.state_dir))
            raise

    def finish(self) -> None:
        """The change is recorded: drop staging, backups and the journal."""
        journal = _read_journal(self.state_dir)
        if journal is not None and journal["id"] == self.id:
            _finish(self.state_dir, journal)


def recover(state_dir: Path, committed: Callable[[str], bool]) -> str | None:
    """Finish or undo a change a killed process left; the caller holds the lock.

    Returns what was done (for a message), or None when there was nothing to do.
    """
    journal = _read_journal(state_dir)
    if journal is None:
        return None
    if committed(journal["id"]):
        _finish(state_dir, journal)
        return f"finished interrupted file-store change {journal['id']}"
    _undo(state_dir, journal)
    return f"undid interrupted file-store change {journal['id']}"


def journal_pending(state_dir: Path) -> bool:
    """Whether a change's journal is on disk (a change in progress, or one interrupted)."""
    return (state_dir / JOURNAL_FILE).exists()


# --- internals -------------------------------------------------------------------------------


def _target(state_dir: Path, server: str, path: str) -> Path:
    return FileStore(state_dir, server).path(path)


def _staging(state_dir: Path, server: str, change_id: str, kind: str, path: str) -> Path:
    base = state_dir / SERVERS_DIR / server / STAGING_DIR / change_id / kind
    return base.joinpath(*PurePosixPath(path).parts)


def _missing_folders(state_dir: Path, entries: list[_Entry]) -> list[str]:
    """Folders (relative to the state dir) a change will make, deepest last."""
    missing: set[Path] = set()
    for entry in entries:
        store = FileStore(state_dir, entry.server)
        for folder in (_target(state_dir, entry.server, entry.path).parent, store.server_dir):
            while folder != state_dir and not folder.exists():
                missing.add(folder)
                folder = folder.parent
    return sorted(str(p.relative_to(state_dir)) for p in missing)


def _undo(state_dir: Path, journal: dict[str, Any] | None) -> None:
    if journal is None:
        return
    entries = [_Entry(**e) for e in journal["entries"]]
    for entry in reversed(entries):
        target = _target(state_dir, entry.server, entry.path)
        if entry.existed:
            backup = _staging(state_dir, entry.server, journal["id"], "old", entry.path)
            # No backup means the target was never replaced: it is still the original.
            if backup.exists():
                os.replace(backup, target)
        else:
            target.unlink(missing_ok=True)
    _drop_staging(state_dir, entries, journal["id"])
    for folder in sorted(journal["created"], key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (state_dir / folder).rmdir()
    _remove_journal(state_dir)


def _finish(state_dir: Path, journal: dict[str, Any]) -> None:
    _drop_staging(state_dir, [_Entry(**e) for e in journal["entries"]], journal["id"])
    _remove_journal(state_dir)


def _drop_staging(state_dir: Path, entries: list[_Entry], change_id: str) -> None:
    for server in sorted({e.server for e in entries}):
        staging = state_dir / SERVERS_DIR / server / STAGING_DIR
        shutil.rmtree(staging / change_id, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()


def _write_journal(state_dir: Path, journal: dict[str, Any]) -> None:
    data = dict(journal, entries=[dataclasses.asdict(e) for e in journal["entries"]])
    path = state_dir / JOURNAL_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    os.replace(tmp, path)
    _sync_folder(state_dir)


def _read_journal(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / JOURNAL_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc}); the file stores need a look") from None
    return data


def _remove_journal(state_dir: Path) -> None:
    (state_dir / JOURNAL_FILE).unlink(missing_ok=True)
    _sync_folder(state_dir)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        # A file system without hard links: a copy keeps the original just as well.
        shutil.copy2(source, target)


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
