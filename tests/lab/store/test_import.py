"""Importing cabs: files and rules together, all or nothing, even when the process is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cabarchive import CabArchive
from security.cabs import CabLayout, Folder, chunked, members_in_order, write_cab

from lab.errors import CabError, StoreError
from lab.models import phone_model
from lab.net.config import default_config
from lab.net.pki import LabPKI, verify_vendor_signature
from lab.store.cab import CabContents, build_cab, pack_cab
from lab.store.catalog import Signer
from lab.store.decision import Action
from lab.store.filestore import JOURNAL_FILE, SERVERS_DIR, FileStore
from lab.store.importer import (
    KILL_ENV,
    STEPS,
    ImportResult,
    import_cab,
    read_cab_file,
    remove_rules,
)
from lab.store.store import STORE_FILE, Selection, Store

V1, V2 = "4.0.7577.4372", "4.0.7577.4400"
FOLDER = "UCPhone\\Polycom\\CX600\\A\\ENU\\4.0.7577.4372\\CPE"
CONFIG = default_config()
POOL01, SE01 = (pool.fqdn for pool in CONFIG.pools)

IMPORT_SCRIPT = """
import sys
from pathlib import Path
from lab.net.config import default_config
from lab.store.importer import import_cab, read_cab_file
from lab.net.pki import LabPKI, verify_vendor_signature
certs, state, pool, *cabs = sys.argv[1:]
config = default_config()
pki = LabPKI(config, Path(certs))
if sys.stdin.readline().strip() != "go":
    raise SystemExit("not started")
for cab in cabs:
    contents = read_cab_file(
        Path(cab), lambda v: pki.vendor(v).certificate_pem(), verify_vendor_signature
    )
    import_cab(Path(state), contents, [config.pool(pool).fqdn])
(Path(state).parent / "imports-done").touch()
"""

# Approves while adding test devices, until the last version is approved or the importer is
# done and one more approve has run (a large limit guards against a loop that never ends).
APPROVE_SCRIPT = """
import sys
from pathlib import Path
from lab.store.decision import Action
from lab.errors import RuleError
from lab.store.store import Selection, Store
state, last, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if sys.stdin.readline().strip() != "go":
    raise SystemExit("not started")
rounds = approvals = 0
done, tried_after_done = state.parent / "imports-done", False
with Store.open(state) as store:
    while rounds < limit:
        store.add_test_device(mac=f"00-04-F2-10-{rounds // 256:02X}-{rounds % 256:02X}")
        rounds += 1
        try:
            store.change(Action.APPROVE, Selection(pool="pool01.contoso.test", model="CX600"))
            approvals += 1
        except RuleError:
            pass
        if any(rule.approved == last for rule in store.rules()):
            break
        # However slow the importer is on a loaded machine, keep approving until it is done
        # and one more approve has run after its last import (then `last` must be approved).
        if done.exists():
            if tried_after_done:
                break
            tried_after_done = True
print(rounds, approvals)
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI(CONFIG, tmp_path_factory.mktemp("certs"))


@pytest.fixture
def make_cab(pki: LabPKI, tmp_path: Path) -> Callable[..., Path]:
    """Write a cab of (model, version) pairs and return its path."""
    count = 0

    def make(*items: tuple[str, str], size: int = 4096, signer: Signer | None = None) -> Path:
        nonlocal count
        count += 1
        data = build_cab(
            [(phone_model(m), v) for m, v in items],
            (lambda vendor: signer) if signer else pki.vendor,
            size,
        )
        path = tmp_path / f"cab{count}" / "UCUpdates.cab"
        path.parent.mkdir()
        path.write_bytes(data)
        return path

    return make


def check(pki: LabPKI, cab: Path) -> CabContents:
    """What `lab cab check` does: check the whole cab, writing nothing."""
    return read_cab_file(cab, lambda v: pki.vendor(v).certificate_pem(), verify_vendor_signature)


def run_import(
    pki: LabPKI, state: Path, cab: Path, pools: tuple[str, ...] = (POOL01,)
) -> ImportResult:
    """What `lab update import` does: check the whole cab, then import it."""
    return import_cab(state, check(pki, cab), [CONFIG.pool(p).fqdn for p in pools])


def state_bytes(state: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) of the state directory, and the store's rows."""
    found: dict[str, bytes | None] = {}
    for path in sorted(state.rglob("*")):
        name = path.relative_to(state).as_posix()
        if name.endswith(("-wal", "-shm")):
            continue  # only while a connection is open; the rows are compared below
        found[name] = None if path.is_dir() else path.read_bytes()
    db = sqlite3.connect(state / STORE_FILE)
    try:
        found["<rows>"] = "\n".join(db.iterdump()).encode()
    finally:
        db.close()
    return found


def rules(state: Path) -> list[tuple[str, str, tuple[str | None, ...]]]:
    with Store.open(state) as store:
        return [(r.pool, r.kind.model, r.versions) for r in store.rules()]


# --- importing --------------------------------------------------------------------------------


def test_an_import_writes_the_files_and_pending_rules_of_one_pool(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cab = make_cab(("CX600", V1), ("HP4110", V1))
    result = run_import(pki, state, cab)
    assert result.changed
    assert result.files_written == 4
    assert [c.action for c in result.changes] == ["created", "created"]
    assert result.pools == (POOL01,)
    assert rules(state) == [
        (POOL01, "HP4110", (V1, None, None)),
        (POOL01, "CX600", (V1, None, None)),
    ]
    members = {n.replace("\\", "/"): f.buf for n, f in CabArchive(cab.read_bytes()).items()}
    files = FileStore(state, POOL01)
    assert files.root == state / "pools" / POOL01 / "DeviceUpdateFiles"
    for name in ("CPE.nbt", "CPE.cat"):
        path = f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/{name}"
        assert files.path(path).read_bytes() == members[path]
    # One file store for the pool, whichever of its front ends serves it.
    assert sorted(p.name for p in (state / "pools").iterdir()) == [POOL01]
    assert sorted(p.name for p in (state / "pools" / POOL01).iterdir()) == ["DeviceUpdateFiles"]
    assert not (state / "servers").exists()
    assert not (state / JOURNAL_FILE).exists()


def test_an_import_into_two_pools_makes_one_rule_per_kind_in_each(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = run_import(pki, state, make_cab(("CX600", V1), ("HP4110", V1)), ("pool01", "se01"))
    assert result.pools == (POOL01, SE01)
    assert result.files_written == 8
    assert rules(state) == [
        (POOL01, "HP4110", (V1, None, None)),
        (POOL01, "CX600", (V1, None, None)),
        (SE01, "HP4110", (V1, None, None)),
        (SE01, "CX600", (V1, None, None)),
    ]
    with Store.open(state) as store:
        made = store.rules()
    assert [r.identity for r in made] == [f"service:WebServer:{r.pool}/{r.uuid}" for r in made]
    assert len({r.uuid for r in made}) == 4
    assert sorted(p.name for p in (state / "pools").iterdir()) == [POOL01, SE01]
    for pool in (POOL01, SE01):
        for folder in ("Polycom/CX600", "HP/HP4110"):
            path = f"UCPhone/{folder}/A/ENU/{V1}/CPE/CPE.nbt"
            assert FileStore(state, pool).path(path).exists()
    # Approving in one pool leaves the other's rule as it was.
    with Store.open(state) as store:
        store.change(Action.APPROVE, Selection(pool=SE01, model="CX600"))
    assert rules(state)[1] == (POOL01, "CX600", (V1, None, None))
    assert rules(state)[3] == (SE01, "CX600", (None, V1, None))


def test_importing_the_same_cab_twice_changes_nothing_the_second_time(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cab = make_cab(("CX600", V1), ("6721ip", V1))
    run_import(pki, state, cab, (POOL01, SE01))
    before = state_bytes(state)
    again = run_import(pki, state, cab, (POOL01, SE01))
    assert not again.changed
    assert {c.action for c in again.changes} == {"unchanged"}
    assert state_bytes(state) == before


def test_a_newer_version_becomes_pending_and_the_old_files_stay(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    with Store.open(state) as store:
        store.change(Action.APPROVE, Selection(all_=True))
    run_import(pki, state, make_cab(("CX600", V2)))
    assert rules(state) == [(POOL01, "CX600", (V2, V1, None))]
    kind_folder = FileStore(state, POOL01).path("UCPhone/Polycom/CX600/A/ENU")
    assert sorted(p.name for p in kind_folder.iterdir()) == [V1, V2]


def test_a_cab_with_other_images_for_a_version_replaces_its_files(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    result = run_import(pki, state, make_cab(("CX600", V1), size=8192))
    assert result.files_written == 2
    image = FileStore(state, POOL01).path(f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt")
    assert image.stat().st_size == 8192
    with Store.open(state) as store:
        (rule,) = store.rules()
    assert rule.files[V1][1].size == 8192


# --- refusals leave everything as it was --------------------------------------------------------


def _tampered_image(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    image = bytearray(files[f"{FOLDER}\\CPE.nbt"])
    image[100] ^= 0x80
    return pack_cab({**files, f"{FOLDER}\\CPE.nbt": bytes(image)})


def _other_vendor(pki: LabPKI, files: dict[str, bytes]) -> bytes:
    return build_cab([(phone_model("CX600"), V1)], lambda vendor: pki.vendor("HP"), 4096)


TAMPERING: list[tuple[str, Callable[[LabPKI, dict[str, bytes]], bytes], str]] = [
    ("one image byte", _tampered_image, r"CPE\.nbt'.*does not match the signed catalog"),
    ("another vendor's key", _other_vendor, r"CPE\.cat'.*does not verify with the Polycom"),
    ("..\\..\\evil", lambda p, f: pack_cab({**f, "..\\..\\evil": b"x"}), r"'\.\.\\\.\.\\evil'"),
    ("/etc/x", lambda p, f: pack_cab({**f, "/etc/x": b"x"}), r"'\\etc\\x': absolute path"),
]


@pytest.mark.parametrize(("name", "tamper", "message"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_a_tampered_cab_is_refused_and_nothing_changes(
    pki: LabPKI,
    make_cab: Callable[..., Path],
    tmp_path: Path,
    name: str,
    tamper: Callable[[LabPKI, dict[str, bytes]], bytes],
    message: str,
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", "4.0.7577.4366"), ("HP4110", V1)))
    before = state_bytes(state)
    good = make_cab(("CX600", V1))
    files = {n: f.buf or b"" for n, f in CabArchive(good.read_bytes()).items()}
    bad = tmp_path / "bad.cab"
    bad.write_bytes(tamper(pki, files))
    with pytest.raises(CabError, match=message):
        run_import(pki, state, bad, (POOL01, SE01))
    assert state_bytes(state) == before


# --- interrupted imports --------------------------------------------------------------------------


def _killed_import(pki: LabPKI, state: Path, cab: Path, step: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, str(pki.directory), str(state), POOL01, str(cab)],
        input="go\n",
        env={**os.environ, KILL_ENV: step},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr


BEFORE_COMMIT = STEPS[1 : STEPS.index("committed")]
AFTER_COMMIT = STEPS[STEPS.index("committed") :]


def served_files(state: Path, pool: str = POOL01) -> dict[str, bytes]:
    """Every file a pool's front ends would serve: its file store, nothing beside it."""
    root = FileStore(state, pool).root
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def cab_files(cab: Path) -> dict[str, bytes]:
    """The catalogs and images of a cab, by the file-store path they go to."""
    return {
        name.replace("\\", "/"): f.buf or b""
        for name, f in CabArchive(cab.read_bytes()).items()
        if not name.endswith("CPE.xml")
    }


def test_the_kill_steps_are_the_documented_ones_around_the_commit() -> None:
    assert BEFORE_COMMIT == ("journal-written", "staged")
    assert AFTER_COMMIT == ("committed", "file-placed", "all-placed")


@pytest.mark.parametrize("step", BEFORE_COMMIT)
def test_an_import_killed_before_its_commit_leaves_everything_as_it_was(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path, step: str
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    with Store.open(state) as store:
        store.change(Action.APPROVE, Selection(all_=True))
    before = state_bytes(state)
    served = served_files(state)
    # Replaces V1's files (other image size), adds V2 and a new device kind.
    cab = make_cab(("CX600", V1), ("CX600", V2), ("HP4120", V2), size=8192)
    _killed_import(pki, state, cab, step)
    assert (state / JOURNAL_FILE).exists()
    assert served_files(state) == served  # not one file of it is where the service looks
    Store.open(state).close()  # the next process to open the store drops what it staged
    assert state_bytes(state) == before
    result = run_import(pki, state, cab)
    assert result.files_written == 6
    assert rules(state) == [(POOL01, "HP4120", (V2, None, None)), (POOL01, "CX600", (V2, V1, None))]


def test_an_import_killed_before_its_commit_into_a_new_state_leaves_nothing(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    Store.open(state).close()
    before = state_bytes(state)
    cab = make_cab(("CX600", V1))
    process = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, str(pki.directory), str(state), "se01", str(cab)],
        input="go\n",
        env={**os.environ, KILL_ENV: "staged"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert (state / "pools" / SE01 / ".staging").is_dir()
    Store.open(state).close()
    after = state_bytes(state)
    assert after.pop("filestore.lock") == b""  # the lock file stays, as after any import
    assert after == before
    assert not (state / "pools").exists()


@pytest.mark.parametrize("step", AFTER_COMMIT)
def test_an_import_killed_after_its_commit_is_finished(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path, step: str
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    with Store.open(state) as store:
        store.change(Action.APPROVE, Selection(all_=True))
    cab = make_cab(("CX600", V1), ("CX600", V2), ("HP4120", V2), size=8192)
    _killed_import(pki, state, cab, step)
    assert (state / JOURNAL_FILE).exists()
    Store.open(state).close()  # the next process to open the store puts the files in place
    assert rules(state) == [(POOL01, "HP4120", (V2, None, None)), (POOL01, "CX600", (V2, V1, None))]
    assert not (state / JOURNAL_FILE).exists()
    assert sorted(p.name for p in (state / "pools" / POOL01).iterdir()) == ["DeviceUpdateFiles"]
    assert served_files(state) == cab_files(cab)
    assert not run_import(pki, state, cab).changed


def test_no_file_of_an_import_reaches_a_file_store_before_its_commit(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)), (POOL01, SE01))
    before = {pool: served_files(state, pool) for pool in (POOL01, SE01)}
    seen: dict[str, dict[str, dict[str, bytes]]] = {}

    def look(step: str) -> None:
        seen[step] = {pool: served_files(state, pool) for pool in (POOL01, SE01)}

    cab = make_cab(("CX600", V1), ("CX600", V2), size=8192)
    contents = check(pki, cab)
    import_cab(state, contents, [POOL01, SE01], checkpoint=look)
    assert list(seen) == list(STEPS)
    for step in ("locked", *BEFORE_COMMIT, "committed"):
        assert seen[step] == before, step
    assert seen["all-placed"] == {POOL01: cab_files(cab), SE01: cab_files(cab)}


def test_a_failure_before_the_commit_undoes_the_import_in_the_same_process(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    before = state_bytes(state)
    contents = read_cab_file(
        make_cab(("CX600", V1), ("CX600", V2), size=8192),
        lambda v: pki.vendor(v).certificate_pem(),
        verify_vendor_signature,
    )

    def fail(step: str) -> None:
        if step == "staged":
            raise OSError(28, "No space left on device")

    with pytest.raises(StoreError, match=r"No space left.*nothing was imported"):
        import_cab(state, contents, [POOL01], checkpoint=fail)
    assert state_bytes(state) == before


def test_a_failure_after_the_commit_is_finished_by_the_next_process(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    cab = make_cab(("CX600", V1), ("CX600", V2), size=8192)
    contents = check(pki, cab)

    def fail(step: str) -> None:
        if step == "file-placed":
            raise OSError(5, "Input/output error")

    with pytest.raises(StoreError, match=r"imported, but not all its files are in place yet"):
        import_cab(state, contents, [POOL01], checkpoint=fail)
    assert (state / JOURNAL_FILE).exists()
    Store.open(state).close()
    assert not (state / JOURNAL_FILE).exists()
    assert served_files(state) == cab_files(cab)
    assert rules(state) == [(POOL01, "CX600", (V2, None, None))]


def _stored_cab(path: Path, files: dict[str, bytes]) -> None:
    """``files`` as one stored folder: its headers depend only on the names and sizes."""
    named = sorted((name, len(data)) for name, data in files.items())
    data = b"".join(files[name] for name, _ in named)
    blocks = [(chunk, len(chunk)) for chunk in chunked([data])]
    with path.open("wb") as out:
        write_cab(out, CabLayout(members_in_order(named), [Folder(blocks, compression=0)]))


def test_a_change_that_cannot_be_finished_says_so_and_keeps_its_journal(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cab = make_cab(("CX600", V1))

    def fail(step: str) -> None:
        if step == "file-placed":
            raise OSError(5, "Input/output error")

    with pytest.raises(StoreError, match=r"not all its files are in place yet"):
        import_cab(state, check(pki, cab), [POOL01], checkpoint=fail)
    image = FileStore(state, POOL01).path(f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt")
    image.mkdir()  # something in the way of the image still waiting in staging
    with pytest.raises(StoreError, match=r"cannot put right the interrupted file-store change"):
        Store.open(state).close()
    assert (state / JOURNAL_FILE).exists()
    image.rmdir()
    Store.open(state).close()
    assert served_files(state) == cab_files(cab)
    assert not (state / JOURNAL_FILE).exists()


def test_a_cab_that_changes_between_check_and_import_is_refused(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    before = state_bytes(state)
    cab = tmp_path / "UCUpdates.cab"
    files = {n: f.buf or b"" for n, f in CabArchive(make_cab(("CX600", V2)).read_bytes()).items()}
    _stored_cab(cab, files)
    contents = check(pki, cab)
    # The same headers, another image: only its bytes tell.
    image = next(n for n in files if n.endswith("CPE.nbt"))
    _stored_cab(cab, {**files, image: bytes(len(files[image]))})
    with pytest.raises(CabError, match=r"CPE\.nbt' changed since the cab was checked"):
        import_cab(state, contents, [POOL01])
    assert state_bytes(state) == before
    # Another cab in its place: its headers tell.
    cab.write_bytes(make_cab(("HP4110", V2)).read_bytes())
    with pytest.raises(CabError, match=r"UCUpdates\.cab: the cab changed since it was checked"):
        import_cab(state, contents, [POOL01])
    assert state_bytes(state) == before


def _front_end_store(state: Path) -> FileStore:
    """fe01's file store as labs before pools kept it: ``servers/fe01/DeviceUpdateFiles``,
    holding what pool01's holds."""
    files = FileStore(state, "fe01", parent=SERVERS_DIR)
    shutil.copytree(FileStore(state, POOL01).root, files.root)
    return files


def _killed_earlier_import(state: Path, files: FileStore) -> None:
    """What a killed import of the earlier design left in ``files``: a replaced file (its
    original kept in staging), a new file in a new folder, and a journal without a format
    that names the front end."""
    replaced = f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt"
    added = f"UCPhone/Polycom/CX600/A/ENU/{V2}/CPE/CPE.nbt"
    backup = state / "servers/fe01/.staging/old1/old" / replaced
    backup.parent.mkdir(parents=True)
    os.link(files.path(replaced), backup)
    files.path(replaced).unlink()
    files.path(replaced).write_bytes(b"new image")
    files.path(added).parent.mkdir(parents=True)
    files.path(added).write_bytes(b"added image")
    journal = {
        "id": "old1",
        "entries": [
            {"server": "fe01", "path": replaced, "existed": True},
            {"server": "fe01", "path": added, "existed": False},
        ],
        "created": [
            f"servers/fe01/DeviceUpdateFiles/UCPhone/Polycom/CX600/A/ENU/{V2}",
            f"servers/fe01/DeviceUpdateFiles/UCPhone/Polycom/CX600/A/ENU/{V2}/CPE",
        ],
    }
    (state / JOURNAL_FILE).write_text(json.dumps(journal))


def test_a_journal_of_an_earlier_lab_is_still_undone(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1)))
    files = _front_end_store(state)
    before = state_bytes(state)
    _killed_earlier_import(state, files)
    Store.open(state).close()
    assert state_bytes(state) == before


def test_a_journal_of_a_lab_before_pools_is_undone_before_its_files_move_to_the_pool(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    # A lab before pools, killed during an import into fe01, opened by this lab with its
    # config: the change is undone in fe01's store, whose files then move to pool01's.
    state = tmp_path / "state"
    cab = make_cab(("CX600", V1))
    run_import(pki, state, cab)
    files = _front_end_store(state)
    shutil.rmtree(state / "pools")
    _killed_earlier_import(state, files)
    Store.open(state, pool_of=CONFIG.pool_of()).close()
    assert not (state / JOURNAL_FILE).exists()
    assert served_files(state) == cab_files(cab)  # the original V1 files, nothing else
    assert not files.root.exists()
    assert not (state / "servers/fe01/.staging").exists()


# --- the file store ------------------------------------------------------------------------------


def test_a_file_store_keeps_paths_inside_itself(tmp_path: Path) -> None:
    files = FileStore(tmp_path, POOL01)
    assert files.root == tmp_path / "pools" / POOL01 / "DeviceUpdateFiles"
    for name in ("", "a/b", ".", ".."):
        with pytest.raises(StoreError, match="is not a pool name"):
            FileStore(tmp_path, name)
    for bad in ("../x", "/etc/passwd", "UCPhone/../../x", ""):
        with pytest.raises(StoreError, match="not a path inside the file store"):
            files.path(bad)
    files.root.mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_text("no")
    (files.root / "link").symlink_to(outside)
    (files.root / "real").write_text("yes")
    assert files.resolve("link") is None
    assert files.resolve("real") == (files.root / "real").resolve()
    assert files.resolve("missing") is None


# --- remove ------------------------------------------------------------------------------------


def test_remove_deletes_the_rule_and_the_files_no_rule_refers_to(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    run_import(pki, state, make_cab(("CX600", V1), ("HP4110", V1)), (POOL01, SE01))
    run_import(pki, state, make_cab(("CX600", V2)))
    changes = remove_rules(state, Selection(pool=POOL01, model="CX600"))
    assert [(c.action, c.rule.pool) for c in changes] == [("removed", POOL01)]
    pool01, se01 = FileStore(state, POOL01), FileStore(state, SE01)
    assert not pool01.path("UCPhone/Polycom").exists()
    assert pool01.path(f"UCPhone/HP/HP4110/A/ENU/{V1}/CPE/CPE.nbt").exists()
    assert se01.path(f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt").exists()
    assert [r[:2] for r in rules(state)] == [
        (POOL01, "HP4110"),
        (SE01, "HP4110"),
        (SE01, "CX600"),
    ]


# --- concurrency ---------------------------------------------------------------------------------


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_approving_and_importing_at_once_lose_nothing(
    pki: LabPKI, make_cab: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    versions = [f"4.0.7577.{4400 + i}" for i in range(6)]
    cabs = [make_cab(("CX600", v)) for v in versions]
    # No store yet: the two processes also race to create it.
    importer = _start(IMPORT_SCRIPT, str(pki.directory), str(state), "pool01", *map(str, cabs))
    # The approver keeps going until it has approved the last version: if an approve ever
    # overwrote an import (or the other way round), that version would never be approved.
    approver = _start(APPROVE_SCRIPT, str(state), versions[-1], "1000000")
    for process in (importer, approver):  # both wait for this line, so they start together
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    _, err_i = importer.communicate(timeout=60)
    out_a, err_a = approver.communicate(timeout=60)
    assert importer.returncode == 0, err_i
    assert approver.returncode == 0, err_a
    rounds, approvals = map(int, out_a.split())

    with Store.open(state) as store:
        (rule,) = store.rules()
        devices = store.test_devices()
    assert rule.approved == versions[-1]
    assert rule.pending is None
    assert 1 <= approvals <= len(versions)
    # Every test device the approver added is there.
    assert len(devices) == rounds
    # Every import was recorded with its files, and the files are in the file store.
    db = sqlite3.connect(state / STORE_FILE)
    try:
        assert db.execute("SELECT count(*) FROM imports").fetchone()[0] == len(versions)
        assert db.execute("SELECT count(*) FROM versions").fetchone()[0] == len(versions)
    finally:
        db.close()
    files = FileStore(state, POOL01)
    for version in filter(None, rule.versions):
        for served in rule.files[version]:
            assert files.holds(served.path, served.size, served.sha256)
