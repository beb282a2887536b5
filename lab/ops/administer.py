"""The administrator's side of the update store, done once for the `lab` CLI and the admin API.

What Control Panel's Device Update page and its cmdlets do lives here: import a vendor cab
into pools (Import-CsDeviceUpdate), approve, reset, restore or remove rules, name test
devices, change the device-update configuration, and build a cab with the lab's own
builder. `lab update`, `lab test-device`, `lab config` and `lab cab` call it from their
process; the running lab's admin API (lab.ops.store_api) calls it in a worker thread.

The rules every caller gets the same way:

- arguments are checked here, with the same messages for both (a pool by FQDN or first
  label; a lab of several pools must be told ``--pool`` or ``--all-pools``);
- changes are stamped with the time ``Administration.now`` gives (the lab's clock);
- every committed change is told to ``Administration.announce`` with its name, and only a
  change is (an import that finds everything in place is not): the CLI announces it to a
  running lab, the admin API refreshes the lab it serves, so the very next check sees it;
- results have one JSON form (the ``*_json`` functions): ``--json`` and the admin API
  answer alike.

Its methods block (SQLite, reading and unpacking cabs): call them off the event loop.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lab.clock import utc_now
from lab.errors import ConfigError
from lab.models import MODEL_NAMES, phone_model
from lab.net.config import LabConfig
from lab.net.pki import LabPKI, verify_vendor_signature
from lab.store.cab import (
    CAB_NAME,
    DEFAULT_IMAGE_SIZE,
    CabContents,
    Progress,
    build,
    write_file_atomic,
)
from lab.store.catalog import Signer
from lab.store.decision import Action, Rule
from lab.store.devconfig import DeviceUpdateConfig
from lab.store.importer import ImportResult, import_cab, read_cab_file, remove_rules
from lab.store.store import RuleChange, Selection, Store, TestDevice

SCRATCH_PREFIX = ".scratch-"
"""Folders of the state directory that hold a cab only while it is imported."""

_CAB_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def _nobody(action: str) -> None:
    """An announcement nobody listens to."""


# --- cabs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltCab:
    """A cab the lab's builder made: its bytes, and what it holds."""

    data: bytes
    contents: CabContents


def build_vendor_cab(
    models: Sequence[str],
    versions: Sequence[str],
    signer_for: Callable[[str], Signer],
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: Progress | None = None,
) -> BuiltCab:
    """A signed vendor cab with one update per model (every model when none is named) and
    version, its catalogs signed by ``signer_for(vendor)``, as ``lab cab build`` makes it."""
    chosen = [phone_model(name) for name in (models or MODEL_NAMES)]
    unique = list({model.name: model for model in chosen}.values())
    items = [(model, version) for model in unique for version in versions]
    signers: dict[str, Signer] = {}

    def signer(vendor: str) -> Signer:
        if vendor not in signers:
            signers[vendor] = signer_for(vendor)
        return signers[vendor]

    data, updates = build(items, signer, image_size, progress)
    return BuiltCab(data, CabContents(CAB_NAME, hashlib.sha256(data).hexdigest(), updates))


def vendor_certificates(pki: LabPKI) -> Callable[[str], bytes]:
    """Vendor name -> the certificate (PEM) of the lab PKI its catalogs must verify with,
    each read once."""
    cache: dict[str, bytes] = {}

    def trusted(vendor: str) -> bytes:
        if vendor not in cache:
            cache[vendor] = pki.vendor(vendor).certificate_pem()
        return cache[vendor]

    return trusted


def check_cab_file(
    path: Path, config: LabConfig, pki: LabPKI, progress: Progress | None = None
) -> CabContents:
    """Check the cab at ``path`` completely, as an import does, writing nothing: within
    ``[limits] cab_unpacked_max``, every catalog signed by its vendor's key of ``pki``.
    CabError names the member and what is wrong with it."""
    return read_cab_file(
        path,
        vendor_certificates(pki),
        verify_vendor_signature,
        progress,
        limit=config.limits.cab_unpacked_max,
    )


def cab_file_name(text: str) -> str:
    """``text`` if it can name an uploaded cab (a plain file name); ValueError otherwise."""
    if not _CAB_FILE_NAME.match(text) or text.strip() != text:
        raise ValueError(
            f"{text!r} is not a cab file name (letters, digits, '.', '_', '-' and spaces)"
        )
    return text


def scratch_folder(state_dir: Path) -> Path:
    """A new private folder in ``state_dir`` for a cab on its way to an import."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=state_dir))


def remove_scratch(folder: Path) -> None:
    """Remove a folder ``scratch_folder`` made, with what is in it."""
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_file(state_dir: Path, name: str) -> Iterator[Path]:
    """A path called ``name`` in a scratch folder of ``state_dir``, removed afterwards
    whatever happens."""
    folder = scratch_folder(state_dir)
    try:
        yield folder / name
    finally:
        remove_scratch(folder)


# --- pools -----------------------------------------------------------------------------------


def pool_fqdn(config: LabConfig, name: str | None) -> str | None:
    """A pool's FQDN when the config knows ``name`` (FQDN or first label); else ``name``
    as given (a filter that matches nothing)."""
    if name is None:
        return None
    try:
        return config.pool(name).fqdn
    except ConfigError:
        return name


def import_pools(config: LabConfig, pool: str | None, all_pools: bool) -> list[str]:
    """The FQDNs of the pools an import goes into: ``pool``, every pool, or the lab's only
    pool; ConfigError when a lab of several pools is told neither."""
    if all_pools and pool is not None:
        raise ConfigError(config.source, "pools", "name one pool or all pools, not both")
    if all_pools:
        return [p.fqdn for p in config.pools]
    if pool is not None:
        return [config.pool(pool).fqdn]
    if len(config.pools) == 1:
        return [config.pools[0].fqdn]
    names = ", ".join(p.fqdn for p in config.pools)
    raise ConfigError(
        config.source,
        "pools",
        f"the lab has {len(config.pools)} pools ({names}): "
        "name one with --pool POOL, or import into all with --all-pools",
    )


# --- the operations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What building and importing a cab of the lab's own did, and what it approved."""

    built: BuiltCab
    imported: ImportResult
    approved: tuple[RuleChange, ...]


@dataclass(frozen=True, kw_only=True)
class Administration:
    """The administrator's operations on the update store of ``state_dir`` (see the module
    docstring for what every caller can rely on)."""

    config: LabConfig
    state_dir: Path
    pki: LabPKI
    now: Callable[[], datetime] = utc_now
    """Lab time, which changes are stamped with."""
    announce: Callable[[str], None] = _nobody
    """Told the name of every change committed (``import``, ``approve``, ``test-device.add``...)."""

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The update store, open for one operation (a store from before pools moves to
        the config's pools)."""
        with Store.open(self.state_dir, now=self.now, pool_of=self.config.pool_of()) as store:
            yield store

    def selection(
        self,
        refs: Sequence[str] = (),
        *,
        pool: str | None = None,
        model: str | None = None,
        all_: bool = False,
    ) -> Selection:
        """Rules named by identity or uuid prefix, or chosen by pool, model or all."""
        return Selection(tuple(refs), pool_fqdn(self.config, pool), model, all_)

    def pools(self, pool: str | None, all_pools: bool) -> list[str]:
        """The pools an import goes into (``import_pools``)."""
        return import_pools(self.config, pool, all_pools)

    # --- rules ---

    def rules(self, pool: str | None = None, model: str | None = None) -> list[Rule]:
        """The rules, of one pool and/or model, ordered by pool and device kind."""
        with self.store() as store:
            return store.rules(pool_fqdn(self.config, pool), model)

    def check_cab(self, path: Path, progress: Progress | None = None) -> CabContents:
        """Check the cab at ``path`` as an import does (``check_cab_file``)."""
        return check_cab_file(path, self.config, self.pki, progress)

    def import_cab(
        self, cab: CabContents, pools: Sequence[str], progress: Progress | None = None
    ) -> ImportResult:
        """Import a checked cab into ``pools`` (FQDNs), all or nothing: its versions are
        pending in each pool's rules."""
        result = import_cab(
            self.state_dir,
            cab,
            pools,
            progress=progress,
            now=self.now,
            pool_of=self.config.pool_of(),
        )
        if result.changed:
            self.announce("import")
        return result

    def change(self, action: Action, selection: Selection) -> list[RuleChange]:
        """Approve, reset or restore the selected rules (lab.store.store.Store.change)."""
        with self.store() as store:
            changes = store.change(action, selection)
        if _changed(changes):
            self.announce(str(action))
        return changes

    def remove(self, selection: Selection) -> list[RuleChange]:
        """Remove the selected rules, and the files no rule left refers to."""
        changes = remove_rules(
            self.state_dir, selection, now=self.now, pool_of=self.config.pool_of()
        )
        if _changed(changes):
            self.announce("remove")
        return changes

    def publish(
        self,
        models: Sequence[str],
        version: str,
        pools: Sequence[str],
        *,
        image_size: int = DEFAULT_IMAGE_SIZE,
        approve: bool = False,
    ) -> Published:
        """Build a cab of ``models`` at ``version`` with the lab's own builder and vendor
        keys, import it into ``pools`` as an uploaded cab is (checked from a file of the
        state directory), and approve what it made pending when ``approve``."""
        built = build_vendor_cab(models, [version], self.pki.vendor, image_size=image_size)
        with scratch_file(self.state_dir, CAB_NAME) as path:
            write_file_atomic(path, built.data)
            imported = self.import_cab(self.check_cab(path), pools)
        versions = {update.version for update in built.contents.updates}
        pending = [c.rule.identity for c in imported.changes if c.rule.pending in versions]
        approved: list[RuleChange] = []
        if approve and pending:
            approved = self.change(Action.APPROVE, Selection(tuple(pending)))
        return Published(built, imported, tuple(approved))

    # --- test devices ---

    def test_devices(self) -> list[TestDevice]:
        """Every test device, MAC addresses first."""
        with self.store() as store:
            return store.test_devices()

    def add_test_device(
        self, mac: str | None = None, serial: str | None = None, name: str | None = None
    ) -> TestDevice:
        """Make a device (by MAC address or serial number) a test device."""
        with self.store() as store:
            device = store.add_test_device(mac, serial, name)
        self.announce("test-device.add")
        return device

    def remove_test_device(self, mac: str | None = None, serial: str | None = None) -> TestDevice:
        """Stop treating a device (by MAC address or serial number) as a test device."""
        with self.store() as store:
            device = store.remove_test_device(mac, serial)
        self.announce("test-device.remove")
        return device

    # --- device-update configuration ---

    def device_config(self) -> DeviceUpdateConfig:
        """The device-update configuration in force."""
        with self.store() as store:
            return store.device_update_config()

    def set_settings(self, changes: Mapping[str, str]) -> DeviceUpdateConfig:
        """Change settings (name -> text, ``default`` restores one), all or none."""
        with self.store() as store:
            config = store.set_settings(changes)
        self.announce("device-config.set")
        return config


def _changed(changes: Sequence[RuleChange]) -> bool:
    return any(c.action != "skipped" for c in changes)


# --- JSON forms --------------------------------------------------------------------------------


def rules_json(rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """Rules (identity, pool, device kind, pending / approved / restore)."""
    return [rule.as_dict() for rule in rules]


def changes_json(changes: Sequence[RuleChange]) -> list[dict[str, Any]]:
    """What a command did to each rule, and the rule after it."""
    return [change.as_dict() for change in changes]


def import_json(result: ImportResult) -> dict[str, Any]:
    """What an import did."""
    return {
        "cab": result.cab,
        "pools": list(result.pools),
        "changed": result.changed,
        "files_written": result.files_written,
        "recovered": result.recovered,
        "changes": changes_json(result.changes),
    }


def contents_json(contents: CabContents) -> dict[str, Any]:
    """What a cab holds: per update its device kind, version and files."""
    return {
        "cab": contents.name,
        "sha256": contents.sha256,
        "updates": [
            {
                "device_type": u.kind.device_type,
                "vendor": u.kind.vendor,
                "model": u.kind.model,
                "revision": u.kind.revision,
                "locale": u.kind.locale,
                "version": u.version,
                "files": [
                    {"module": f.module, "path": str(f.path), "size": f.size, "sha256": f.sha256}
                    for f in u.files
                ],
            }
            for u in contents.updates
        ],
    }


def published_json(published: Published) -> dict[str, Any]:
    """What building, importing and approving a cab of the lab's own did."""
    built = published.built
    return {
        "built": {"size": len(built.data), **contents_json(built.contents)},
        "imported": import_json(published.imported),
        "approved": changes_json(published.approved),
    }


def devices_json(devices: Sequence[TestDevice]) -> list[dict[str, str]]:
    """Test devices."""
    return [device.as_dict() for device in devices]


def settings_json(config: DeviceUpdateConfig) -> dict[str, str]:
    """Every device-update setting's value as text, by Lync's name."""
    return config.texts()
