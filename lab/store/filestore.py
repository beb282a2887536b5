"""Each pool's file store, and changes to file stores that happen all or not at all.

Layout of the state directory::

    <state>/pools/<pool>/DeviceUpdateFiles/UCPhone/<Vendor>/<Model>/<Rev>/<Locale>/<Version>/CPE/
    <state>/pools/<pool>/.staging/<change id>/new/...   files written, waiting for the commit
    <state>/filestore.lock                              one writer of file stores at a time
    <state>/filestore.journal.json                      the change in progress, if any

Every front end of a pool serves the pool's one file store (``<pool>`` is its FQDN). Labs
from before pools kept one per front end, under ``servers/<fe>/``; ``move_front_end_files``
moves them to their pool's, and a journal they left still names those folders.

A FileChange is how an import writes, and its files reach a file store only once the import
is committed, so a running service (which serves ``DeviceUpdateFiles`` and nothing beside
it) never sees a file of an import that may still be undone. The journal (which files go
where) is on disk before anything else; then the new files are written to staging, beside
the file store; then the caller records the change's id in the update store, in the same
transaction as its rules: that commit is the moment the change counts as made. Only then is
each staged file moved into place with an atomic rename (replacing the file it updates).

``recover`` puts right what a killed process left, going the way the commit says: a change
whose id is not recorded is dropped (only staging held its files), one whose id is recorded
is finished (the staged files still waiting are moved into place). Everything here runs
under the lock, so it never meets another writer halfway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from lab.errors import StoreError

POOLS_DIR = "pools"
SERVERS_DIR = "servers"  # each front end's own folders (device logs; file stores before pools)
FILES_DIR = "DeviceUpdateFiles"
STAGING_DIR = ".staging"
LOCK_FILE = "filestore.lock"
JOURNAL_FILE = "filestore.journal.json"

# Called with the name of a step as a change proceeds (tests stop a process there).
Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    pass


class FileStore:
    """One pool's file store: ``<state>/pools/<pool FQDN>/DeviceUpdateFiles``."""

    def __init__(self, state_dir: Path, pool: str, *, parent: str = POOLS_DIR) -> None:
        if not pool or "/" in pool or pool in (".", ".."):
            raise StoreError(f"{pool!r} is not a pool name")
        self.state_dir = state_dir
        self.pool = pool
        # Where the store's folders sit, relative to the state directory (journals name it).
        self.folder = f"{parent}/{pool}"
        self.pool_dir = state_dir / parent / pool
        self.root = self.pool_dir / FILES_DIR

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


@dataclass(frozen=True, order=True)
class _Entry:
    folder: str  # the file store's folder relative to the state directory (FileStore.folder)
    path: str


# Staged files go to a change's staging folder under this name (and, in journals of
# format 1, files they replaced were kept under "old").
_NEW, _OLD = "new", "old"
# Journals of format 1, without a "format" key, come from labs that placed files before
# the commit; ``recover`` still undoes them.
JOURNAL_FORMAT = 2

# Writes every staged file: layout path -> the staging paths (one per file store) it goes to.
Stager = Callable[[Mapping[PurePosixPath, Sequence[Path]]], None]


class FileChange:
    """Writes to one or more file stores, applied all or nothing (see the module docstring)."""

    def __init__(self, state_dir: Path, change_id: str) -> None:
        self.state_dir = state_dir
        self.id = change_id
        self._entries: set[_Entry] = set()

    def add(self, store: FileStore, relative: PurePosixPath) -> None:
        """Plan to write the file at ``relative`` in ``store``."""
        store.path(relative)  # refuse a path outside the store now, not halfway
        self._entries.add(_Entry(store.folder, str(relative)))

    @property
    def empty(self) -> bool:
        """True when nothing is planned."""
        return not self._entries

    @property
    def count(self) -> int:
        """How many files are planned."""
        return len(self._entries)

    def stage(self, write: Stager, checkpoint: Checkpoint = _no_checkpoint) -> None:
        """Journal the change and have ``write`` put every planned file in staging; the
        journal and staging are removed again if anything fails here."""
        pools = {self.state_dir / e.folder for e in self._entries}
        made = {f for pool in pools for f in (pool.parent, pool) if not f.exists()}
        journal = {
            "format": JOURNAL_FORMAT,
            "id": self.id,
            "entries": sorted(self._entries),
            # Folders staging makes, which dropping the change removes again.
            "made": sorted(str(f.relative_to(self.state_dir)) for f in made),
        }
        _write_journal(self.state_dir, journal)
        checkpoint("journal-written")
        try:
            targets: dict[PurePosixPath, list[Path]] = {}
            for entry in sorted(self._entries):
                staged = _staging(self.state_dir, entry.folder, self.id, _NEW, entry.path)
                staged.parent.mkdir(parents=True, exist_ok=True)
                targets.setdefault(PurePosixPath(entry.path), []).append(staged)
            write(targets)
            checkpoint("staged")
        except BaseException:
            _drop(self.state_dir, _read_journal(self.state_dir))
            raise

    def publish(self, checkpoint: Checkpoint = _no_checkpoint) -> None:
        """The change is recorded: move every staged file into its file store, then drop
        staging and the journal. If this fails, ``recover`` finishes it."""
        journal = _read_journal(self.state_dir)
        if journal is not None and journal["id"] == self.id:
            _place(self.state_dir, journal, checkpoint)


def recover(state_dir: Path, committed: Callable[[str], bool]) -> str | None:
    """Finish or drop a change a killed process left; the caller holds the lock.

    Returns what was done (for a message), or None when there was nothing to do.
    """
    journal = _read_journal(state_dir)
    if journal is None:
        return None
    change = journal["id"]
    current = journal.get("format") == JOURNAL_FORMAT
    try:
        if committed(change):
            if current:
                _place(state_dir, journal, _no_checkpoint)
            else:
                _drop(state_dir, journal)  # format 1 placed its files before the commit
            return f"finished interrupted file-store change {change}"
        if current:
            _drop(state_dir, journal)
        else:
            _undo_format_1(state_dir, journal)
    except OSError as exc:
        # The journal stays: nothing is lost, and the next attempt starts from it again.
        raise StoreError(
            f"cannot put right the interrupted file-store change {change} ({exc}); "
            f"the file stores need a look (its journal is {state_dir / JOURNAL_FILE})"
        ) from exc
    return f"undid interrupted file-store change {change}"


def journal_pending(state_dir: Path) -> bool:
    """Whether a change's journal is on disk (a change in progress, or one interrupted)."""
    return (state_dir / JOURNAL_FILE).exists()


# --- internals -------------------------------------------------------------------------------


def _target(state_dir: Path, folder: str, path: str) -> Path:
    parent, _, name = folder.partition("/")
    return FileStore(state_dir, name, parent=parent).path(path)


def _staging(state_dir: Path, folder: str, change_id: str, kind: str, path: str) -> Path:
    base = state_dir / folder / STAGING_DIR / change_id / kind
    return base.joinpath(*PurePosixPath(path).parts)


def _folder(entry: Mapping[str, Any]) -> str:
    # Journals from before pools name a front end ("server"), whose store was servers/<fe>.
    folder = entry.get("folder") or f"{SERVERS_DIR}/{entry['server']}"
    parent, _, name = str(folder).partition("/")
    if parent not in (POOLS_DIR, SERVERS_DIR) or not name or "/" in name or name in (".", ".."):
        raise StoreError(f"the file-store journal names {folder!r}, which is not a file store")
    return str(folder)


def _entries(journal: dict[str, Any]) -> list[_Entry]:
    return [_Entry(_folder(e), e["path"]) for e in journal["entries"]]


def _place(state_dir: Path, journal: dict[str, Any], checkpoint: Checkpoint) -> None:
    """Move each staged file of a recorded change into place, then drop staging and journal.

    A file no longer in staging was placed before (by a process that was then killed).
    """
    entries = _entries(journal)
    for number, entry in enumerate(entries):
        staged = _staging(state_dir, entry.folder, journal["id"], _NEW, entry.path)
        if staged.exists():
            target = _target(state_dir, entry.folder, entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        if number == 0:
            checkpoint("file-placed")
    checkpoint("all-placed")
    _drop(state_dir, journal)


def _drop(state_dir: Path, journal: dict[str, Any] | None) -> None:
    """Remove a change's staging, the folders it made if they are empty, and its journal
    (the file stores are not touched)."""
    if journal is None:
        return
    for folder in sorted({e.folder for e in _entries(journal)}):
        staging = state_dir / folder / STAGING_DIR
        shutil.rmtree(staging / journal["id"], ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()
    for folder in sorted(journal.get("made", ()), key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (state_dir / folder).rmdir()
    _remove_journal(state_dir)


def _undo_format_1(state_dir: Path, journal: dict[str, Any]) -> None:
    """Undo a format-1 change: its files were placed before the commit, the files they
    replaced kept in staging, and the folders it made listed."""
    for entry in reversed(journal["entries"]):
        target = _target(state_dir, _folder(entry), entry["path"])
        if entry["existed"]:
            backup = _staging(state_dir, _folder(entry), journal["id"], _OLD, entry["path"])
            # No backup means the target was never replaced: it is still the original.
            if backup.exists():
                os.replace(backup, target)
        else:
            target.unlink(missing_ok=True)
    for folder in sorted(journal["created"], key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (state_dir / folder).rmdir()
    _drop(state_dir, journal)


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


def move_front_end_files(state_dir: Path, pool_of: Mapping[str, str]) -> list[str]:
    """Move the file stores labs before pools kept per front end (``servers/<fe>/``) into
    their pools' (``pool_of``: front-end name to pool FQDN); the front ends moved.

    A file the pool's store already has stays as it is (front ends of one pool held the
    same files of a version). Safe to repeat after an interruption; runs under the lock.
    """
    legacy = state_dir / SERVERS_DIR
    if not any((legacy / fe / FILES_DIR).is_dir() for fe in pool_of):
        return []
    moved: list[str] = []
    with FileStoreLock(state_dir):
        for front_end, pool in sorted(pool_of.items()):
            source = legacy / front_end / FILES_DIR
            if not source.is_dir():
                continue
            target = FileStore(state_dir, pool).root
            for path in sorted(p for p in source.rglob("*") if p.is_file() or p.is_symlink()):
                destination = target / path.relative_to(source)
                if not destination.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, destination)
            shutil.rmtree(source)
            moved.append(front_end)
    return moved
