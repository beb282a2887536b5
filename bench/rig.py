"""A lab to measure, run the way ``lab up`` runs it: a temporary config, state and PKI.

``make_lab_files`` writes a copy of the default lab with every port 0 and its own PKI
directory and key type, makes the certificates, and puts a realistic update in the store:
a vendor cab with version APPROVED for each model asked for (the CX600 by default; the
check benchmark's phone mix, bench.phones, has four), built, checked and imported into
every front end with the lab's own code (lab.cab, lab.importer), then approved
(lab.store). A phone of such a model reporting an older version is then answered with two
downloads, the catalog and the image, and one reporting APPROVED with none.

``LabProcess`` runs ``python -m lab.cli --config <file> --state-dir <dir> up`` (uvloop,
the real store, the audit log on), waits for its ``ready`` line and reads the endpoints
from run.json. The internal site drops outside peers, and neither wrk nor h2load can
choose its source address: their connections to 127.10.0.11 leave from 127.0.0.1, which
the default segments put outside. ``admit_loopback_client`` therefore moves 127.0.0.1
inside with the lab's own firewall toggle (the admin API, as ``lab firewall set 127.0.0.1
inside`` does); the configured segments stay the default ones.
"""

from __future__ import annotations

import csv
import os
import selectors
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from bench.process import Started, end_process
from lab.models import phone_model
from lab.net.config import LabConfig, default_text, load_config
from lab.net.pki import LabPKI, verify_vendor_signature
from lab.ops.adminclient import AdminClient
from lab.ops.runner import read_run_file
from lab.store.cab import CAB_NAME, build, read_cab
from lab.store.decision import Action
from lab.store.importer import import_cab
from lab.store.store import Selection, Store

ROOT = Path(__file__).resolve().parent.parent
MODEL = "CX600"
INSTALLED = "4.0.7577.4366"
APPROVED = "4.0.7577.4372"
MAC = "00-04-F2-00-0B-01"
SERIAL = "CX6A000B01"
USER = "alice@contoso.test"
FRONT_END = "fe01"
# The address wrk's and h2load's connections leave from (the kernel's choice for 127.x).
LOOPBACK_CLIENT = "127.0.0.1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class LabFiles:
    """A lab config on disk with its PKI and state directory, and the approved update."""

    config_path: Path
    state_dir: Path
    config: LabConfig
    image_path: str  # relative to a front end's file store
    image_size: int

    @property
    def pki(self) -> LabPKI:
        """The lab's PKI."""
        return LabPKI(self.config)

    @property
    def check_path(self) -> str:
        """The update check path of the internal site."""
        return "/RequestHandler/ucdevice.upx"

    @property
    def files_path(self) -> str:
        """The image download prefix of the internal site."""
        return "/DeviceUpdateFiles_Int"


def write_config(directory: Path, key_type: str) -> Path:
    """The default lab with every port 0, its PKI in ``directory/certs`` made of ``key_type``."""
    data: dict[str, Any] = tomllib.loads(default_text())
    data["ports"] = {"dns": 0, "internal": 0, "external": 0, "edge": 0, "admin": 0}
    data["pki"] = {**data["pki"], "dir": str(directory / "certs"), "key_type": key_type}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lab.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def make_lab_files(
    directory: Path, key_type: str, image_size: int, models: Sequence[str] = (MODEL,)
) -> LabFiles:
    """Config, certificates and a store holding an approved update of ``image_size`` for
    each of ``models`` (version APPROVED); ``image_path`` is the first model's image."""
    config_path = write_config(directory, key_type)
    config = load_config(config_path)
    state = directory / "state"
    pki = LabPKI(config)
    pki.ensure()
    items = [(phone_model(name), APPROVED) for name in models]
    data, updates = build(items, pki.vendor, image_size)
    contents = read_cab(
        data,
        CAB_NAME,
        lambda vendor: pki.vendor(vendor).certificate_pem(),
        verify_vendor_signature,
    )
    import_cab(state, contents, [pool.fqdn for pool in config.pools])
    with Store.open(state) as store:
        store.change(Action.APPROVE, Selection(all_=True))
    first = phone_model(models[0]).kind()
    image = next(u.image for u in updates if u.kind == first)
    return LabFiles(config_path, state, config, str(image.path), image.size)


def check_request(
    *,
    model: str = MODEL,
    mac: str = MAC,
    serial: str = SERIAL,
    installed: str = INSTALLED,
    user: str | None = USER,
) -> bytes:
    """A phone's update check (docs/wire-protocol.md); by default a CX600's, one version
    behind the approved one. ``user`` None: nobody has signed in on the phone yet."""
    kind = phone_model(model).kind()
    signed_in = f"<LastSignedInUser>{user}</LastSignedInUser>" if user else ""
    return (
        "<DeviceUpdateRequest>"
        f"<DeviceType>{kind.device_type}</DeviceType><Vendor>{kind.vendor}</Vendor>"
        f"<Model>{kind.model}</Model><Revision>{kind.revision}</Revision>"
        f"<Locale>{kind.locale}</Locale>"
        f"<MacAddress>{mac}</MacAddress><SerialNumber>{serial}</SerialNumber>"
        f'<Modules><Module name="CPE.nbt" version="{installed}" '
        'timestamp="2012-11-02T10:00:00Z"/></Modules>'
        f"{signed_in}"
        "</DeviceUpdateRequest>"
    ).encode()


def lab_command(files: LabFiles, *args: str) -> list[str]:
    """``python -m lab.cli --config ... --state-dir ... <args>``."""
    return [
        sys.executable,
        "-m",
        "lab.cli",
        "--config",
        str(files.config_path),
        "--state-dir",
        str(files.state_dir),
        *args,
    ]


def wait_for_line(
    process: subprocess.Popen[bytes], wanted: str, timeout: float
) -> tuple[str, float]:
    """Read ``process``'s stdout until a line is ``wanted`` or starts with ``wanted`` and a
    space; that line and the monotonic time it arrived."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"no {wanted!r} line within {timeout} s")
            chunk = os.read(fd, 65536)
            seen = time.monotonic()
            if not chunk:
                raise RuntimeError(f"the process ended before saying {wanted!r}")
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line == wanted or line.startswith(wanted + " "):
                    return line, seen


class LabProcess(Started):
    """``lab up`` in a subprocess, from start to its ``ready`` line and on until stopped."""

    def __init__(
        self, files: LabFiles, *, log: Path | None = None, scale: float | None = None
    ) -> None:
        self.files = files
        # Lab seconds per real second (`lab up --scale`): phones of the lease follow it.
        self.scale = scale
        self.log = log or files.state_dir.parent / "lab-up.log"
        self.started = 0.0
        self.ready = 0.0
        self.endpoints: dict[str, Any] = {}
        self.pid = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start ``lab up`` and wait for ``ready``; the endpoints come from run.json."""
        with self.log.open("ab") as errors:
            self.started = time.monotonic()
            self._process = subprocess.Popen(
                lab_command(
                    self.files, "up", *(["--scale", f"{self.scale:g}"] if self.scale else [])
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
            )
        self.pid = self._process.pid
        try:
            _, self.ready = wait_for_line(self._process, "ready", READY_TIMEOUT)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"lab up did not come up: {exc}; see {self.log}") from None
        self.endpoints = read_run_file(self.files.state_dir)["endpoints"]

    @property
    def startup_seconds(self) -> float:
        """From starting the process to its ``ready`` line."""
        return self.ready - self.started

    def internal_site(self, front_end: str = FRONT_END) -> tuple[str, int]:
        """The address of a front end's internal site."""
        host, port = str(self.endpoints[front_end]["internal"]).rsplit(":", 1)
        return host, int(port)

    def admit_loopback_client(self) -> None:
        """Put 127.0.0.1 inside through the admin API, as ``lab firewall set`` does."""
        AdminClient(self.files.state_dir).post(
            "/v1/firewall", {"action": "set", "target": LOOPBACK_CLIENT, "zone": "inside"}
        )

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is not None:
            end_process(process, lambda: process.send_signal(signal.SIGTERM), STOP_TIMEOUT)


def _audit_files(files: LabFiles, front_end: str) -> list[Path]:
    return sorted((files.state_dir / "servers" / front_end / "AuditLogs").glob("*.log"))


def audit_lines(files: LabFiles, front_end: str = FRONT_END) -> int:
    """How many requests a front end's audit logs record."""
    total = 0
    for path in _audit_files(files, front_end):
        with path.open("rb") as handle:
            total += max(0, sum(1 for _ in handle) - 1)  # minus the header line
    return total


def audit_records(files: LabFiles, front_end: str = FRONT_END) -> Iterator[dict[str, str]]:
    """A front end's audit lines as they were written, keyed by the header's column names."""
    for path in _audit_files(files, front_end):
        with path.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)
