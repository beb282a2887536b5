"""`lab up --netns` end to end: real namespaces, real ports, nftables, tcpdump and tshark.

One lab for the module (`lab up --netns --scale 600` in a process of its own); phones are
`emulator run` processes that make their sockets in their segment's namespace; what went
over the router is read back from the captures with tshark.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from labprocess import LabProcess, lab_cmd, run_phone, start_lab, stop_lab, write_config
from netns_helpers import connect_from, tshark

from lab.ops.harness import FACTORY

FE01 = "198.18.0.11"
EDGE = "203.0.113.10"


def codes(phone: dict[str, object], code: str) -> list[dict[str, object]]:
    log = phone["log"]
    assert isinstance(log, list)
    return [entry for entry in log if entry["code"] == code]


def capture(up: LabProcess, action: str, *name: str) -> dict[str, object]:
    done = up.lab("capture", action, *name, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def uncounted(rules: str) -> str:
    """A ruleset without its counters' figures."""
    return re.sub(r"packets \d+ bytes \d+", "", rules)


def router_rules(up: LabProcess) -> str:
    """The router's ruleset read straight from its namespace, not through the lab."""
    router = up.info["network"]["router"]
    done = subprocess.run(
        ["nsenter", f"--net={router}", "nft", "list", "table", "inet", "lab"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_servers_listen_on_lyncs_ports_in_their_segments(netns_lab: LabProcess) -> None:
    endpoints = netns_lab.status()["endpoints"]
    assert endpoints["dns"] == {"udp": "198.18.0.2:53", "tcp": "198.18.0.2:53"}
    assert endpoints["fe01"] == {"internal": f"{FE01}:443", "external": f"{FE01}:4443"}
    assert endpoints["se01"] == {"internal": "198.18.0.21:443", "external": "198.18.0.21:4443"}
    assert endpoints["edge"]["https"] == f"{EDGE}:443"
    # The admin API stays on the machine's loopback, where the CLI and the console are.
    assert endpoints["admin"]["http"].startswith("127.0.0.1:")
    segments = netns_lab.info["network"]["segments"]
    assert {name: s["range"] for name, s in segments.items()} == {
        "inside": "198.18.0.0/16",
        "outside": "198.19.0.0/16",
        "perimeter": "203.0.113.0/24",
    }
    lease = json.loads((netns_lab.state / "lease.json").read_text())
    assert lease["dns"] == ["198.18.0.2", 53]
    assert lease["https_port"] == 443
    assert set(lease["netns"]["segments"]) == {"inside", "outside"}


def test_an_inside_phone_updates_through_the_real_ports(
    netns_lab: LabProcess, published: str
) -> None:
    phone = run_phone(netns_lab.state, 1)
    assert phone["address"] == "198.18.1.1"
    assert phone["version"] == published
    [asked] = codes(phone, "checking")[:1]
    assert "https://ucupdates-r2.contoso.test:443/RequestHandler/ucdevice.upx" in str(asked)
    # The front ends saw the phone's own address, from its segment.
    audit = "".join(path.read_text() for path in netns_lab.state.glob("servers/*/AuditLogs/*.log"))
    assert "198.18.1.1" in audit


def test_outside_a_phone_without_a_user_is_refused_and_a_syn_to_an_inside_site_dropped(
    netns_lab: LabProcess,
) -> None:
    started = capture(netns_lab, "start", "refusals")
    assert started["running"] is True

    phone = run_phone(netns_lab.state, 2, location="outside")
    assert phone["version"] == FACTORY
    assert codes(phone, "denied"), "the edge must have refused the check"
    # A host on the internet tries the internal site itself: the router drops its SYNs.
    assert connect_from(netns_lab.state, "198.19.1.77", FE01, 443) == "timed out"

    stopped = capture(netns_lab, "stop")
    pcap, keys = Path(str(stopped["file"])), Path(str(stopped["keys"]))
    packets = stopped["packets"]
    assert isinstance(packets, int)
    assert packets > 0

    syns = tshark(
        pcap,
        f"ip.src==198.19.1.77 && ip.dst=={FE01} && tcp.dstport==443 && tcp.flags.syn==1",
        ["tcp.flags.ack"],
    )
    assert syns
    assert all(ack in ("False", "0") for [ack] in syns)
    answers = tshark(pcap, f"ip.src=={FE01} && ip.dst==198.19.1.77", ["tcp.flags"])
    assert answers == []  # no SYN-ACK, no reset: nothing came back
    # The phone's check got as far as the edge, which answered it (decrypted: 401 or 403).
    refusals = tshark(pcap, f"ip.src=={EDGE} && http.response.code", ["http.response.code"], keys)
    assert {code for [code] in refusals} & {"401", "403"}
    assert 'counter name "dropped" drop' in router_rules(netns_lab)


def test_a_firewall_change_rewrites_the_routers_rules(netns_lab: LabProcess) -> None:
    before = router_rules(netns_lab)
    assert "ip saddr 198.18.0.0/16 jump from_inside" in before

    flipped = netns_lab.lab("firewall", "flip")
    assert flipped.returncode == 0, flipped.stderr
    rules = router_rules(netns_lab)
    assert "ip saddr 198.18.0.0/16 jump from_outside" in rules
    assert "jump from_inside" in rules.split("jump from_outside")[1]
    # Flipped, the internet is the inside: the same SYN now gets through.
    assert connect_from(netns_lab.state, "198.19.1.78", FE01, 443) == "connected"

    moved = netns_lab.lab("firewall", "reset")
    assert moved.returncode == 0, moved.stderr
    moved = netns_lab.lab("firewall", "set", "198.19.1.79", "inside")
    assert moved.returncode == 0, moved.stderr
    rules = router_rules(netns_lab)
    assert "ip saddr 198.19.1.79 jump from_inside" in rules
    assert connect_from(netns_lab.state, "198.19.1.79", FE01, 443) == "connected"
    assert connect_from(netns_lab.state, "198.19.1.80", FE01, 443) == "timed out"

    reset = netns_lab.lab("firewall", "reset")
    assert reset.returncode == 0, reset.stderr
    assert uncounted(router_rules(netns_lab)) == uncounted(before)
    shown = netns_lab.lab("firewall", "show", "--rules")
    assert "ip saddr 198.18.0.0/16 jump from_inside" in shown.stdout


def test_tshark_decrypts_the_checks_and_the_ntlm_exchange_of_a_capture(
    netns_lab: LabProcess, published: str
) -> None:
    capture(netns_lab, "start", "signed-in")
    phone = run_phone(netns_lab.state, 3, location="outside", user="alice")
    assert phone["version"] == published
    stopped = capture(netns_lab, "stop")
    pcap, keys = Path(str(stopped["file"])), Path(str(stopped["keys"]))
    assert (
        keys.read_text().count("CLIENT_TRAFFIC_SECRET_0") + keys.read_text().count("CLIENT_RANDOM")
        > 0
    )

    # Without the keys, nothing of HTTP shows: it is all TLS.
    assert tshark(pcap, "http.request", ["http.request.uri"]) == []
    checks = tshark(
        pcap,
        'xml.tag contains "DeviceUpdateRequest"',
        ["ip.src", "ip.dst", "http.request.uri"],
        keys,
    )
    sources = {source for source, _, _ in checks}
    assert phone["address"] in sources  # the phone to the edge
    assert EDGE in sources  # the edge to a front end's external site
    assert {uri for _, _, uri in checks} >= {"/RequestHandlerExt/ucdevice.upx"}
    ntlm = tshark(pcap, "ntlmssp.messagetype == 3", ["ip.src", "ntlmssp.auth.username"], keys)
    assert [phone["address"], "alice"] in ntlm
    downloads = tshark(pcap, "http.request.method == GET", ["http.request.uri"], keys)
    assert any(uri.endswith("/CPE/CPE.nbt") for [uri] in downloads)


def test_capture_commands_refuse_what_they_cannot_do(netns_lab: LabProcess) -> None:
    stop = netns_lab.lab("capture", "stop")
    assert stop.returncode != 0
    assert "no capture is running" in stop.stderr
    bad = netns_lab.lab("capture", "start", "../escape")
    assert bad.returncode != 0
    assert "is no capture name" in bad.stderr
    capture(netns_lab, "start", "twice")
    again = netns_lab.lab("capture", "start", "twice-more")
    assert "a capture is already running" in again.stderr
    capture(netns_lab, "stop")
    same = netns_lab.lab("capture", "start", "twice")
    assert "exists already" in same.stderr


def test_a_scenario_keeps_the_capture_of_its_network(require_netns: None, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.cli",
            "--state-dir",
            str(tmp_path / "runs"),
            "scenario",
            "run",
            "outside-no-user",
            "--netns",
            "--capture",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Result:   as expected" in done.stdout
    [pcap] = (tmp_path / "runs").glob("scenario-outside-no-user-*/state/captures/*.pcap")
    assert pcap.name == "outside-no-user.pcap"
    assert f"The capture of its network: {pcap}" in done.stdout.replace("\n", "")
    to_edge = tshark(pcap, f"ip.dst=={EDGE} && tcp.dstport==443", ["ip.src"])
    assert to_edge


def test_a_lab_on_loopback_has_no_network_to_capture(tmp_path: Path) -> None:
    up = start_lab(tmp_path / "lab")
    try:
        done = up.lab("capture", "start")
        assert done.returncode == 1
        assert "the lab runs on loopback" in done.stderr
    finally:
        stop_lab(up)


@pytest.mark.parametrize(
    ("args", "path", "said"),
    [
        # A machine without the tools: one line, exit 2, nothing started.
        (("--netns",), "no-tools", "lab: --netns needs unshare, nsenter, setpriv, ip, nft"),
        (("--capture",), None, "lab: --capture records the lab's own network: give --netns too"),
    ],
)
def test_what_the_mode_cannot_do_is_said_in_one_line_with_exit_2(
    tmp_path: Path, args: tuple[str, ...], path: str | None, said: str
) -> None:
    env = {**os.environ, "PATH": str(tmp_path / path)} if path else None
    done = subprocess.run(
        lab_cmd(write_config(tmp_path), tmp_path / "state", "up", *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(said)
    assert not (tmp_path / "state" / "run.json").exists()


def test_the_console_can_start_its_lab_in_a_network_of_its_own(
    require_netns: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    console = subprocess.Popen(
        lab_cmd(config, state, "console", "--port", "0", "--netns", "--capture", "console"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert console.stdout is not None
        # Blocking reads: the console prints its login link once it serves.
        for line in console.stdout:
            if "log in with this link" in line:
                break
        else:
            raise AssertionError(
                f"the console ended: {console.stderr.read() if console.stderr else ''}"
            )
        status = json.loads(
            subprocess.run(
                lab_cmd(config, state, "status", "--json"),
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        )
        assert status["endpoints"]["edge"]["https"] == f"{EDGE}:443"
        assert status["network"]["capture"]["running"] is True
    finally:
        console.terminate()
        console.wait(timeout=30)
        for stream in (console.stdout, console.stderr):
            if stream is not None:
                stream.close()
    # Stopped with the lab, the capture is complete.
    assert (state / "captures" / "console.pcap").stat().st_size >= 24


def _exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ends within ``timeout`` seconds (told by its pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_a_killed_lab_takes_its_network_and_capture_with_it(
    require_netns: None, tmp_path: Path
) -> None:
    up = start_lab(tmp_path / "lab", up_args=("--netns", "--capture", "killed"))
    network = up.info["network"]
    holders = [int(network["router"].split("/")[2])] + [
        int(segment["netns"].split("/")[2]) for segment in network["segments"].values()
    ]
    pcap = str(up.state / "captures" / "killed.pcap")
    [capture] = [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and pcap.encode() in _cmdline(int(pid))
    ]
    up.proc.kill()
    up.proc.wait(timeout=30)
    assert up.proc.stdout is not None
    up.proc.stdout.close()
    for pid in [*holders, capture]:
        assert _exited(pid, timeout=10), f"process {pid} outlived the killed lab"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_the_demo_runs_in_a_network_of_its_own(require_netns: None, tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A fixed admin port, as the default config has: the network binds it before the demo
    # looks for ports in use, which must not take it for another lab's.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin = probe.getsockname()[1]
    config = write_config(tmp_path, {"ports": {"admin": admin}})
    done = subprocess.run(
        lab_cmd(config, state, "demo", "--scale", "600", "--netns", "--capture"),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DNS 198.18.0.2:53 (ucupdates-r2 at pool01.contoso.test)" in done.stdout
    assert f"edge edge01.contoso.test {EDGE}:443" in done.stdout
    assert "Every phone ended as it should." in done.stdout
    [pcap] = (state / "captures").glob("capture-*.pcap")
    # The demo's outside phones went through the router to the edge.
    assert tshark(pcap, f"ip.dst=={EDGE} && tcp.dstport==443", ["ip.src"])
