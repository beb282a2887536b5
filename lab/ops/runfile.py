"""Reading ``run.json``, the file a running lab publishes in its state directory.

Apart from the runner that writes it, so that what only reads it (the admin client, the
CLI's `lab status`) does not import the whole lab: the runner pulls in aiohttp, the
service and the phone wall.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab.errors import LabStateError

RUN_FILE = "run.json"


def read_run_file(state_dir: Path) -> dict[str, Any]:
    """The endpoints of the lab running from ``state_dir``; LabStateError when none is."""
    path = state_dir / RUN_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabStateError(f"no lab is running from {state_dir} (no {RUN_FILE})") from None
    except (OSError, ValueError) as exc:
        raise LabStateError(f"{path} cannot be read: {exc}") from None
    data["alive"] = _pid_alive(int(data.get("pid", 0)))
    return data


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
