"""The plugin's guards, each run by a pytest of its own in a child process: without the test
extra pytest still starts and says the lab fixtures are off; a test that forgets its
looptime mark fails at setup saying to add it, instead of waiting on the real clock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "network-tests.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

INI = "[pytest]\nfilterwarnings = error\ntimeout = 60\n"
ASYNCIO = "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"

# First on the path, in place of the named package: importing it fails as where it was never
# installed. (A meta path finder would not do: pytest's assertion rewriter, ahead of it,
# imports the packages of pytest plugins itself.)
UNINSTALLED = """\
raise ModuleNotFoundError("No module named {name!r}", name={name!r})
"""

# The plugins of the test extra that import the blocked package, turned off as they would
# be absent along with it.
NEEDING = {
    "pytest_asyncio": ["asyncio", "aiohttp"],
    "looptime": ["looptime_plugin", "looptime_chronometers", "looptime_timeproxies"],
}

WITHOUT_THE_EXTRA = """\
def test_the_suite_still_runs():
    assert True


def test_a_lab_fixture_says_why_it_is_off(phones):
    raise AssertionError("never reached")
"""


def run_pytest(
    directory: Path, *args: str, ini: str = INI + ASYNCIO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A user's pytest run in ``directory``: the plugin found by its entry point."""
    (directory / "pytest.ini").write_text(ini, encoding="utf-8")
    # What the outer run was given must not leak into the user's run.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={directory / 'tmp'}",
            *args,
        ],
        cwd=directory,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def without(tmp_path: Path, package: str) -> dict[str, str]:
    """An environment where ``package`` cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{package}.py").write_text(UNINSTALLED.format(name=package), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.getenv("PYTHONPATH")])])}


@pytest.mark.parametrize("package", sorted(NEEDING))
def test_without_the_test_extra_pytest_starts_and_says_the_fixtures_are_off(
    tmp_path: Path, package: str
) -> None:
    (tmp_path / "test_user.py").write_text(WITHOUT_THE_EXTRA, encoding="utf-8")
    off = [arg for plugin in NEEDING[package] for arg in ("-p", f"no:{plugin}")]
    ini = INI if package == "pytest_asyncio" else INI + ASYNCIO  # its options unknown without it
    result = run_pytest(tmp_path, *off, "test_user.py", ini=ini, env=without(tmp_path, package))
    output = result.stdout + result.stderr
    installed_as = package.replace("_", "-")
    line = f"device-update-lab: lab fixtures off, {installed_as} is not installed"
    line += " (install device-update-lab[test])"
    assert result.returncode == 1, output
    assert re.search(r"^plugins: .*device-update-lab", result.stdout, re.MULTILINE), output
    assert f"\n{line}\n" in result.stdout, output  # in the header
    setup = rf" ERROR at setup of test_a_lab_fixture_says_why_it_is_off _+\n{re.escape(line)}\n="
    assert re.search(setup, result.stdout), output  # one line, no traceback
    assert re.search(r"^=+ 1 passed, 1 error in ", result.stdout, re.MULTILINE), output


def test_with_the_test_extra_the_header_says_nothing_of_it(tmp_path: Path) -> None:
    # The check above can fail: here nothing is missing, and the header has no such line.
    first = WITHOUT_THE_EXTRA.split("\n\n\n")[0]
    (tmp_path / "test_user.py").write_text(first + "\n", encoding="utf-8")
    result = run_pytest(tmp_path, "test_user.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lab fixtures off" not in result.stdout
    assert re.search(r"^=+ 1 passed in ", result.stdout, re.MULTILINE), result.stdout


def the_example() -> str:
    """The guide's example test (tests/plugin/test_plugin_example.py runs it as it is)."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks: list[str] = PYTHON_BLOCK.findall(text)
    (example,) = [block for block in blocks if "async def test_" in block]
    return example


def test_a_test_without_its_looptime_mark_fails_at_setup_saying_to_add_it(
    tmp_path: Path,
) -> None:
    example = the_example()
    unmarked = example.replace("@pytest.mark.looptime\n", "")
    assert unmarked != example
    (tmp_path / "test_example.py").write_text(unmarked, encoding="utf-8")
    result = run_pytest(tmp_path, "test_example.py")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    # At setup, before any phone is made: an error in one line, not a timeout.
    assert re.search(
        r" ERROR at setup of (test_\w+) _+\n\1 has no looptime mark, so its phones would "
        r"run on the real clock .* mark it @pytest.mark.looptime \(fake time\), or "
        r"@pytest.mark.looptime\(False\) to mean the real clock\n=",
        result.stdout,
        re.MULTILINE,
    ), output
    assert re.search(r"^=+ 1 error in ", result.stdout, re.MULTILINE), output


def test_the_option_is_a_choice_too(tmp_path: Path) -> None:
    # --looptime says what the mark would: the unmarked example runs, on fake time.
    unmarked = the_example().replace("@pytest.mark.looptime\n", "")
    (tmp_path / "test_example.py").write_text(unmarked, encoding="utf-8")
    result = run_pytest(tmp_path, "--looptime", "test_example.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^=+ 1 passed in ", result.stdout, re.MULTILINE), result.stdout
