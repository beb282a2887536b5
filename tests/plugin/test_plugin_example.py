"""The example test of docs/network-tests.md, run as it stands by a pytest of its own.

The example is taken from the guide at every run and run in a fresh directory by a pytest
in a child process, which finds the plugin through its entry point as a user's project
does, in pytest-asyncio's auto mode and in strict mode, with warnings as errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "network-tests.md"
README = ROOT / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def examples(text: str) -> list[str]:
    """The Python blocks of a Markdown text that are whole tests on the lab fixtures."""
    return [
        block
        for block in PYTHON_BLOCK.findall(text)
        if "async def test_" in block and "device_lab" in block
    ]


def the_example() -> str:
    (example,) = examples(GUIDE.read_text(encoding="utf-8"))
    return example


def ini(mode: str) -> str:
    """A user's pytest.ini: pytest-asyncio in ``mode``, warnings as errors."""
    return (
        "[pytest]\n"
        f"asyncio_mode = {mode}\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
        "timeout = 60\n"
    )


def run_pytest(directory: Path, ini: str) -> subprocess.CompletedProcess[str]:
    (directory / "pytest.ini").write_text(ini, encoding="utf-8")
    # What the outer run was given must not leak into the user's run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={directory / 'tmp'}",
            str(directory / "test_example.py"),
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_the_guides_example_runs_as_it_is(tmp_path: Path, mode: str) -> None:
    (tmp_path / "test_example.py").write_text(the_example(), encoding="utf-8")
    result = run_pytest(tmp_path, ini(mode))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^plugins: .*device-update-lab", result.stdout, re.MULTILINE), output
    assert re.search(r"^=+ 1 passed in ", result.stdout, re.MULTILINE), output


def test_a_broken_copy_of_the_example_fails(tmp_path: Path) -> None:
    # The run above can fail: the same example, expecting the restart a second late.
    example = the_example()
    broken = example.replace("downloaded + IDLE_WAIT", "downloaded + IDLE_WAIT + 1")
    assert broken != example
    (tmp_path / "test_example.py").write_text(broken, encoding="utf-8")
    result = run_pytest(tmp_path, ini("auto"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert ">       assert restart == downloaded + IDLE_WAIT + 1\n" in result.stdout
    assert re.search(r"^=+ 1 failed in ", result.stdout, re.MULTILINE), result.stdout


def test_the_readme_shows_the_guides_example() -> None:
    shown = examples(README.read_text(encoding="utf-8"))
    if not shown:
        pytest.skip("README.md has no example test yet")
    assert shown == [the_example()]
