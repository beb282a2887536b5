"""The admin API's token: made at start-up into ``<state>/admin.token`` (mode 0600), read
by every client of that lab (the CLI, the console).

A module of its own outside lab.service, light to import, so that a client (a `lab`
command) reads the token without loading the service; lab.service.admin serves the API.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from lab.fileio import write_atomic

TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def make_token(state_dir: Path) -> str:
    """Make a fresh token and write it privately into the state directory."""
    token = secrets.token_urlsafe(32)
    write_atomic(state_dir / TOKEN_FILE, f"{token}\n".encode("ascii"), 0o600)
    return token


def read_token(state_dir: Path) -> str:
    """The token of the lab running from ``state_dir``."""
    return (state_dir / TOKEN_FILE).read_text(encoding="ascii").strip()
