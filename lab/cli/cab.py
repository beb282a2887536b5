"""`lab cab build` and `lab cab check`: make a vendor cab, or check one without importing it."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import (
    Progress as ProgressBar,
)
from rich.table import Table

from lab.cli import common
from lab.errors import CabError
from lab.models import MODEL_NAMES
from lab.store.cab import (
    CAB_NAME,
    DEFAULT_IMAGE_SIZE,
    CabContents,
    Progress,
    check_image_size,
    write_file_atomic,
)

_SIZE = re.compile(r"^(?P<n>\d+)\s*(?P<unit>|b|k|kb|kib|m|mb|mib|g|gb|gib)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cab build`` and ``cab check``."""
    cab = common.subcommand(sub, "cab", "build or check vendor firmware cabs (UCUpdates.cab)")
    actions = cab.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = common.subcommand(actions, "build", "make a signed UCUpdates.cab with synthetic images")
    build.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help=f"a phone model, repeatable (default: every model: {', '.join(MODEL_NAMES)})",
    )
    build.add_argument(
        "--version",
        action="append",
        required=True,
        metavar="VERSION",
        help="a firmware version such as 4.0.7577.4372, repeatable",
    )
    build.add_argument(
        "--image-size",
        type=parse_size,
        default=DEFAULT_IMAGE_SIZE,
        metavar="SIZE",
        help="size of each image: bytes, or with K/M/G (default: 1M)",
    )
    build.add_argument(
        "--output", "-o", type=Path, default=Path(CAB_NAME), help=f"default: ./{CAB_NAME}"
    )
    build.add_argument("--json", action="store_true", help="print JSON")
    build.set_defaults(func=cmd_build)

    check = common.subcommand(actions, "check", "check a cab as an import would, change nothing")
    check.add_argument("file", type=Path, help="the cab file")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_check)


def parse_size(text: str) -> int:
    """``1048576``, ``64K``, ``1M``, ``2MiB``: a size in bytes for argparse."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or with K, M or G)")
    size = int(match["n"]) * _UNITS[match["unit"].lower()[:1]]
    try:
        return check_image_size(size)
    except CabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextmanager
def tty_progress(title: str) -> Iterator[Progress | None]:
    """A progress reporter drawing a bar on a terminal (stderr), or None when not a TTY."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with ProgressBar(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{title}: {what}", completed=done, total=total)

        yield report


def contents_table(contents: CabContents) -> Table:
    """A readable table of what a cab holds."""
    table = Table(title=f"{contents.name} (sha256 {contents.sha256[:16]}…)", title_justify="left")
    for column in ("vendor", "model", "revision", "locale"):
        table.add_column(column)
    table.add_column("version", no_wrap=True)
    table.add_column("image bytes", justify="right")
    table.add_column("image sha256")
    for u in contents.updates:
        kind = u.kind
        table.add_row(
            kind.vendor,
            kind.model,
            kind.revision,
            kind.locale,
            u.version,
            str(u.image.size),
            u.image.sha256[:16] + "…",
        )
    return table


def cmd_build(args: argparse.Namespace) -> int:
    """Build a cab for the chosen models and versions and write it atomically."""
    from lab.net.pki import LabPKI
    from lab.ops.administer import build_vendor_cab, contents_json

    pki = LabPKI(common.config_from(args))
    with tty_progress("building") as progress:
        built = build_vendor_cab(
            args.model or (),
            args.version,
            pki.vendor,
            image_size=args.image_size,
            progress=progress,
        )
    output: Path = args.output
    data = built.data
    try:
        write_file_atomic(output, data)
    except OSError as exc:
        raise CabError(f"{output}: cannot be written: {exc.strerror or exc}") from None
    contents = dataclasses.replace(built.contents, name=output.name)
    if args.json:
        common.print_json({"path": str(output), "size": len(data), **contents_json(contents)})
        return 0
    console = Console()
    console.print(contents_table(contents))
    console.print(f"wrote {output} ({len(data)} bytes, {len(contents.updates)} updates)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check a cab as an import would; exit 2 with what is wrong with which member."""
    from lab.net.pki import LabPKI
    from lab.ops.administer import check_cab_file, contents_json

    config = common.config_from(args)
    with tty_progress("checking") as progress:
        contents = check_cab_file(args.file, config, LabPKI(config), progress)
    if args.json:
        common.print_json(contents_json(contents))
        return 0
    console = Console()
    console.print(contents_table(contents))
    console.print(f"{args.file}: every member name, description, signature and hash is good")
    return 0
