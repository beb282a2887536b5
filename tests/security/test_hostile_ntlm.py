"""NTLM through the edge against a real `lab up`: guessing, lockout, throttle, who is recorded.

pyspnego is the attacker's client. ``\\CONTOSO\\alice`` makes it send the domain inside the
user field with an empty domain field: the form that once was checked against alice's hash
but counted against no account.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import spnego
from clients import audit_lines, check_body, ntlm_request, through_edge
from conftest import OUTSIDE_ATTACKER
from labprocess import LabProcess, stop_lab

from lab.store.store import Store

CHECK = "/RequestHandlerExt/ucdevice.upx"
SIGNIN = "/Provisioning/signin"
LOGON_FAILURE = b"the user name or password is incorrect\n"


def sign_in(lab: LabProcess, source: str, user: str, password: str, path: str = SIGNIN) -> int:
    """One sign-in on a fresh connection through the edge; the final HTTP status."""
    body = check_body(user="alice@contoso.test") if path == CHECK else b""
    with through_edge(lab, source) as conn:
        return ntlm_request(conn, "POST", path, user, password, body=body).status


@pytest.fixture(scope="module")
def guarded_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    """A lab that locks after 3 failures and throttles an address after 6."""
    return lab_factory(
        {"directory.lockout": {"threshold": 3, "address_threshold": 6, "window": 600}}
    )


def test_the_domain_inside_the_user_field_is_counted_and_locked(guarded_lab: LabProcess) -> None:
    for _ in range(3):
        assert sign_in(guarded_lab, "127.20.1.1", "\\CONTOSO\\alice", "wrong") in (401, 403)
    # Locked: the right password, in this form and the others, is refused as locked.
    for form in ("\\CONTOSO\\alice", "CONTOSO\\alice", "alice@contoso.test"):
        assert sign_in(guarded_lab, "127.20.1.2", form, "Passw0rd!") == 403
    status = guarded_lab.status()
    assert "alice" in status["pool"]["ntlm"]["locked_accounts"]
    # Counted for Prometheus: the failures, and the one that locked the account.
    metrics = guarded_lab.metrics()
    assert metrics['lab_ntlm_signins_total{outcome="failure"}'] >= 6
    assert metrics['lab_ntlm_signins_total{outcome="lockout"}'] == 1


def test_wrong_password_and_unknown_user_answer_alike(guarded_lab: LabProcess) -> None:
    answers = set()
    for user, password in [
        ("CONTOSO\\bob", "wrong"),
        ("CONTOSO\\nobody", "Summer2026!"),
        ("\\CONTOSO\\nobody", "wrong"),
        ("nobody@contoso.test", "x"),
    ]:
        with through_edge(guarded_lab, "127.20.1.3") as conn:
            answer = ntlm_request(conn, "POST", SIGNIN, user, password)
            answers.add((answer.status, answer.header("X-Ms-Diagnostics"), answer.body))
    assert answers == {
        (401, '40102;reason="the user name or password is incorrect"', LOGON_FAILURE)
    }


def test_one_address_is_throttled_and_cannot_lock_every_account(
    lab_factory: Callable[..., LabProcess],
) -> None:
    lab = lab_factory({"directory.lockout": {"threshold": 10, "address_threshold": 4}})
    for user in ("CONTOSO\\alice", "CONTOSO\\bob") * 2:
        assert sign_in(lab, OUTSIDE_ATTACKER, user, "wrong") == 401
    # Throttled: even the right password is refused before it is looked at.
    with through_edge(lab, OUTSIDE_ATTACKER) as conn:
        refused = ntlm_request(conn, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")
    assert refused.status == 429
    assert int(refused.header("Retry-After")) > 0
    # Nobody is locked, and alice signs in from her own address.
    assert sign_in(lab, "127.20.1.9", "CONTOSO\\alice", "Passw0rd!") == 200
    ntlm = lab.status()["pool"]["ntlm"]
    assert ntlm["locked_accounts"] == {}
    assert OUTSIDE_ATTACKER in ntlm["throttled_addresses"]
    shown = lab.lab("status")
    assert OUTSIDE_ATTACKER in shown.stdout
    metrics = lab.metrics()
    assert metrics['lab_ntlm_signins_total{outcome="failure"}'] == 4
    assert metrics['lab_ntlm_signins_total{outcome="throttled"}'] == 1
    assert metrics['lab_ntlm_signins_total{outcome="success"}'] == 1
    assert metrics['lab_ntlm_signins_total{outcome="lockout"}'] == 0


def test_the_authenticated_user_is_recorded(lab_factory: Callable[..., LabProcess]) -> None:
    lab = lab_factory()
    with through_edge(lab, "127.20.2.2") as conn:
        # bob signs in; the body claims alice.
        answer = ntlm_request(
            conn,
            "POST",
            CHECK,
            "CONTOSO\\bob",
            "Summer2026!",
            body=check_body(mac="00-04-F2-00-77-01", user="alice@contoso.test"),
        )
    assert answer.status == 200
    line = next(line for line in audit_lines(lab) if "00-04-F2-00-77-01" in line)
    assert line.endswith(",alice@contoso.test,bob@contoso.test")
    stop_lab(lab)  # the inventory is written whole at stop
    with Store.open(lab.state) as store:
        phone = next(p for p in store.phones() if p.mac == "00-04-F2-00-77-01")
    assert phone.last_user == "bob@contoso.test"


def test_the_challenge_names_the_lab_not_the_host(guarded_lab: LabProcess) -> None:
    client = spnego.client(
        "CONTOSO\\alice", "x", protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
    )
    negotiate = client.step()
    assert negotiate is not None
    with through_edge(guarded_lab, "127.20.3.3") as conn:
        first = conn.request(
            "POST", SIGNIN, {"Authorization": "NTLM " + base64.b64encode(negotiate).decode()}
        )
    token = base64.b64decode(first.header("WWW-Authenticate")[5:])
    length, _, offset = struct.unpack_from("<HHI", token, 40)
    info, names = token[offset : offset + length], {}
    while info[:2] != b"\x00\x00":
        av_id, size = struct.unpack_from("<HH", info)
        if av_id != 7:
            names[av_id] = info[4 : 4 + size].decode("utf-16-le")
        info = info[4 + size :]
    assert names[2] == "CONTOSO"
    assert names[4] == names[5] == "contoso.test"
    # The front end the edge forwarded to: one of the pool it publishes (pool01).
    assert (names[1], names[3]) in {("FE01", "fe01.contoso.test"), ("FE02", "fe02.contoso.test")}
    assert socket.gethostname().upper() not in names.values()
    assert "WORKSTATION" not in names.values()


def test_no_credential_file_is_left_anywhere(lab_factory: Callable[..., LabProcess]) -> None:
    temp = Path(tempfile.gettempdir())
    # What an earlier version left behind after a SIGKILL is removed at the next start.
    leftover = Path(tempfile.mkdtemp(prefix="lab-ntlm-"))
    (leftover / "ntlm-users").write_text("alice:0:0:0:[U]:LCT-0\n")
    lab = lab_factory()
    assert sign_in(lab, "127.20.4.4", "CONTOSO\\alice", "Passw0rd!") == 200
    assert not leftover.exists()
    assert not list(temp.glob("lab-ntlm-*"))
    assert not list(lab.state.rglob("*ntlm*"))
    lab.proc.kill()
    lab.proc.wait(timeout=10)
    assert not list(temp.glob("lab-ntlm-*"))


def test_curl_signs_in_through_the_edge(guarded_lab: LabProcess) -> None:
    """A normal client is not hurt: curl's own NTLM signs bob in (he is not locked)."""
    host, port = guarded_lab.endpoint("edge", "https")
    ca = json.loads((guarded_lab.state / "lease.json").read_text())["ca_cert"]
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--ntlm",
            "-u",
            "CONTOSO\\bob:Summer2026!",
            "--cacert",
            ca,
            "--interface",
            "127.20.5.5",
            "--resolve",
            f"webext.contoso.test:{port}:{host}",
            "-X",
            "POST",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"https://webext.contoso.test:{port}{SIGNIN}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "200", result.stderr
