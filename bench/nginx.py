"""nginx as the reference server: a foreground process with a temporary config and prefix.

nginx answers the update check with ``return 200 '<fixed body>'`` and serves the image
files from a front end's file store, over TLS with the same certificate and key as the lab
and the bare aiohttp handler, one worker per core. Its access log records, per request,
whether the TLS session was resumed, which is how the new-connection benchmark proves
that its client resumes nothing. It never runs as a system service: ``NginxServer`` starts
``nginx -p <tmp> -c <tmp>/nginx.conf`` in the foreground (``daemon off``) and stops it
(SIGQUIT, then SIGKILL) when the ``with`` block ends.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.install import require
from bench.process import Started, end_process

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
ACCESS_LOG = "access.log"
# $ssl_session_reused is "r" for a resumed TLS session and "." for a full handshake.
LOG_FORMAT = "$ssl_session_reused $status $body_bytes_sent"


def free_port(host: str) -> int:
    """A port free on ``host`` right now (nginx cannot report one it chose itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def quote(text: str) -> str:
    """``text`` as a single-quoted nginx string."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config_text(
    prefix: Path,
    host: str,
    port: int,
    cert: Path,
    key: Path,
    *,
    check_path: str,
    check_body: bytes,
    files_path: str,
    files_root: Path,
    workers: int,
) -> str:
    """The nginx.conf of the reference server."""
    # As root the workers would otherwise run as nobody, who cannot enter the lab's
    # private state directory to read the very files being compared.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""
{user}
daemon off;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    log_format reuse '{LOG_FORMAT}';
    access_log {prefix / ACCESS_LOG} reuse;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = {check_path} {{
            default_type "text/xml; charset=utf-8";
            return 200 {quote(check_body.decode("utf-8"))};
        }}
        location {files_path}/ {{
            alias {files_root}/;
            default_type application/octet-stream;
        }}
    }}
}}
"""


class NginxServer(Started):
    """A foreground nginx serving the fixed check answer and a file store, over TLS."""

    def __init__(
        self,
        prefix: Path,
        host: str,
        cert: Path,
        key: Path,
        *,
        check_path: str,
        check_body: bytes,
        files_path: str,
        files_root: Path,
        workers: int | None = None,
    ) -> None:
        self.prefix = prefix
        self.host = host
        self.port = 0
        self.workers = workers or os.cpu_count() or 1
        self._config = dict(
            cert=cert,
            key=key,
            check_path=check_path,
            check_body=check_body,
            files_path=files_path,
            files_root=files_root,
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the config, start nginx and wait until it accepts connections."""
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            config_text(
                self.prefix,
                self.host,
                self.port,
                workers=self.workers,
                **self._config,  # type: ignore[arg-type]
            )
        )
        errors = (self.prefix / "stderr.log").open("wb")
        with errors:
            self._process = subprocess.Popen(
                [require("nginx"), "-p", str(self.prefix), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start: {self.errors()}")
            # nginx tells no one when it listens; asking again shortly is all there is.
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop nginx gracefully (its access log is flushed), or kill it."""
        process, self._process = self._process, None
        if process is not None:
            end_process(process, lambda: process.send_signal(signal.SIGQUIT), STOP_TIMEOUT)

    @property
    def pids(self) -> list[int]:
        """The master and its workers (the processes whose CPU time is nginx's)."""
        if self._process is None:
            return []
        master = self._process.pid
        pids = [master]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(entry.name))
        return pids

    def errors(self) -> str:
        """What nginx wrote to its error logs."""
        texts = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                texts.append(path.read_text(errors="replace").strip())
        return "\n".join(t for t in texts if t) or "(nothing logged)"

    def access_log(self) -> list[str]:
        """Every access log line so far: ``<r or .> <status> <body bytes>`` per request."""
        path = self.prefix / ACCESS_LOG
        return path.read_text().splitlines() if path.exists() else []
