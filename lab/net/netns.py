"""The lab's own network (`--netns`): segments in Linux network namespaces, a router between.

Loopback mode puts every address on ``lo``, and the firewall is a policy the servers
consult. In this mode the lab builds a small network nothing can leave, on ranges that are
never routed (RFC 2544's benchmarking range and RFC 5737's documentation range):

==========  ================  ==================================================
segment     range             hosts
==========  ================  ==================================================
inside      198.18.0.0/16     the DNS server and the front ends; phones at x.y.1.n
outside     198.19.0.0/16     phones at x.y.1.n (the internet)
perimeter   203.0.113.0/24    the edge, the reverse proxy publishing one pool
==========  ================  ==================================================

A **router** namespace joins them with one veth pair each (``r-inside`` 198.18.0.1, and so
on) and forwards between them through an nftables ``forward`` chain generated from the
lab's firewall policy (lab.net.nftables). Each segment is one namespace whose ``eth0`` holds
its servers' addresses; the phone range (x.y.1.0 on) is routed as local there, so a phone
binds any address of it as on loopback. Traffic between two hosts of one segment stays in
it, as on a switch; only what crosses segments meets the router and its rules.

Each namespace is held by a small process (``unshare --net`` running ``cat`` on a pipe from
the lab), so it goes away when the lab does, even when the lab is killed. As root that is
all; otherwise the router's holder also makes a user namespace (``unshare --user
--map-root-user``) and the lab process joins it, which gives it the right to enter the
namespaces it made. The lab process itself stays in the machine's network: the admin API
and the console keep answering on its loopback. Every socket a server needs is made in the
namespace of its address (`socket_at`), with setns(2) on the calling thread and back.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from lab.errors import NetnsError, NetnsUnavailable
from lab.net.config import REAL_PORTS, LabConfig

INSIDE = ipaddress.IPv4Network("198.18.0.0/16")
OUTSIDE = ipaddress.IPv4Network("198.19.0.0/16")
PERIMETER = ipaddress.IPv4Network("203.0.113.0/24")
# Host numbers below this are the lab's servers; phone n takes x.y.1.n (as on loopback).
PHONE_HOSTS = 256
TOOLS = ("unshare", "nsenter", "setpriv", "ip", "nft")
# The router's table until the lab applies its own rules: nothing is forwarded.
CLOSED = """table inet lab {
  chain forward {
    type filter hook forward priority filter; policy drop;
  }
}
"""

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, kind: int) -> None:
    if _libc.setns(fd, kind) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


@contextmanager
def entered(path: str) -> Iterator[None]:
    """The calling thread in the network namespace at ``path`` for the block, then back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


# -- the lab's addresses in its own network -----------------------------------------------


def _moved(
    address: ipaddress.IPv4Address,
    old: ipaddress.IPv4Network,
    new: ipaddress.IPv4Network,
    what: str,
) -> ipaddress.IPv4Address:
    """``address`` at the same offset in ``new`` as it has in ``old``."""
    offset = int(address) - int(old.network_address)
    # The first address is the network's, the second the router's, the last the broadcast.
    if not 1 < offset < new.num_addresses - 1:
        raise NetnsError(
            f"{what} {address} has no place in {new}: an address keeps its offset in its "
            f"segment, and x.y.0.1 is the router's"
        )
    return new.network_address + offset


def netns_config(config: LabConfig) -> LabConfig:
    """``config`` moved into the lab's own network: each address keeps its place in its
    segment (127.10.0.11 becomes 198.18.0.11), the edge moves to the perimeter, and the
    servers listen on Lync's ports (53, 443, 4443; the edge on 443). The admin API and the
    console stay where the config puts them, on the machine's loopback.
    """

    pools = tuple(
        dataclasses.replace(
            pool,
            front_ends=tuple(
                dataclasses.replace(
                    fe, address=_moved(fe.address, config.inside, INSIDE, f"front end {fe.name}")
                )
                for fe in pool.front_ends
            ),
        )
        for pool in config.pools
    )
    dns = config.dns_address
    dns_segment = config.inside if dns in config.inside else config.outside
    edge = config.edge
    ports = dataclasses.replace(
        config.ports,
        **{key: REAL_PORTS[key] for key in ("dns", "internal", "external", "edge")},
    )
    return dataclasses.replace(
        config,
        inside=INSIDE,
        outside=OUTSIDE,
        dns_address=_moved(
            dns, dns_segment, INSIDE if dns_segment == config.inside else OUTSIDE, "the DNS server"
        ),
        pools=pools,
        edge=dataclasses.replace(
            edge, address=_moved(edge.address, config.outside, PERIMETER, "the edge")
        ),
        ports=ports,
    )


@dataclass(frozen=True)
class Segment:
    """One segment of the lab's network: its namespace's name, range and the router's
    address on it, the lab's servers on it, and whether phones take addresses there."""

    name: str
    network: ipaddress.IPv4Network
    hosts: tuple[ipaddress.IPv4Address, ...]
    phones: bool

    @property
    def router(self) -> ipaddress.IPv4Address:
        """The router's address on the segment: the first of its range."""
        return self.network.network_address + 1

    @property
    def phone_ranges(self) -> list[ipaddress.IPv4Network]:
        """The phones' part of the range (x.y.1.0 to the end) as the fewest CIDR blocks."""
        first = self.network.network_address + PHONE_HOSTS
        return list(ipaddress.summarize_address_range(first, self.network.broadcast_address))


def segments_of(config: LabConfig) -> tuple[Segment, ...]:
    """The three segments of ``config`` once moved by `netns_config`."""
    inside_hosts = [fe.address for fe in config.front_ends]
    outside_hosts: list[ipaddress.IPv4Address] = []
    (inside_hosts if config.dns_address in INSIDE else outside_hosts).append(config.dns_address)
    return (
        Segment("inside", INSIDE, tuple(inside_hosts), phones=True),
        Segment("outside", OUTSIDE, tuple(outside_hosts), phones=True),
        Segment("perimeter", PERIMETER, (config.edge.address,), phones=False),
    )


# -- building it ---------------------------------------------------------------------------


def check_available() -> None:
    """NetnsUnavailable, in one line, unless this machine can build the lab's network."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(
            f"--netns needs {', '.join(missing)} (Debian: iproute2, nftables, util-linux)"
        )
    command = ["unshare", "--net", "true"]
    if os.geteuid() != 0:
        command[1:1] = ["--user", "--map-root-user"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["refused"])[-1]
        raise NetnsUnavailable(
            f"--netns needs network namespaces{'' if os.geteuid() == 0 else ' in a user namespace'}"
            f", which this machine refuses ({reason})"
        )


class _Holder:
    """A process that holds one namespace open while its stdin is open."""

    def __init__(self, name: str, user: bool) -> None:
        command = ["unshare", "--net", "--", "sh", "-c", "echo ready; exec cat"]
        if user:
            command[1:1] = ["--user", "--map-root-user"]
        self.name = name
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        # The namespace exists once the shell inside it speaks.
        if stdout.readline() != b"ready\n":
            problem = (
                self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            )
            self.process.wait()
            raise NetnsError(
                f"cannot make the {name} namespace: {problem.strip() or 'no reason given'}"
            )
        self.net = f"/proc/{self.process.pid}/ns/net"
        self.user = f"/proc/{self.process.pid}/ns/user"

    def close(self) -> None:
        """End the holder (its stdin closes): the namespace goes with the last socket in it."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetnsError(
            f"the admin API cannot listen on {host}:{port}: {exc.strerror}; is another lab "
            "running? (ports.admin in the config)"
        ) from None
    return sock


_active: LabNetwork | None = None


class LabNetwork:
    """The lab's own network, built by `build` and taken down by `close`."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.segments = segments_of(config)
        self.as_root = os.geteuid() == 0
        self._router: _Holder | None = None
        self._holders: dict[str, _Holder] = {}
        self._admin: socket.socket | None = None

    # -- life cycle --------------------------------------------------------------------------

    def build(self) -> LabNetwork:
        """Make the namespaces, wire them, and start forwarding with every packet dropped
        until the first ruleset is applied. NetnsError (nothing left behind) on failure."""
        global _active
        if _active is not None:
            raise NetnsError("this process already runs a lab network; one at a time")
        check_available()
        try:
            # Bound before anything moves: the admin API stays on the machine's loopback.
            self._admin = _listen("127.0.0.1", self.config.ports.admin)
            self._router = _Holder("router", user=not self.as_root)
            if not self.as_root:
                self._join_user(self._router.user, self._router.net)
            for segment in self.segments:
                self._holders[segment.name] = _Holder(segment.name, user=False)
            self._wire()
        except BaseException:
            self.close()
            raise
        _active = self
        return self

    def close(self) -> None:
        """Take the network down: every holder ends, and the namespaces with them."""
        global _active
        if _active is self:
            _active = None
        for holder in [*self._holders.values(), *([self._router] if self._router else [])]:
            holder.close()
        self._holders.clear()
        self._router = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def take_admin_socket(self) -> socket.socket:
        """The admin API's listening socket on the machine's loopback, bound by `build`
        before the process moved (the caller owns it from now on)."""
        if self._admin is None:
            raise NetnsError("the lab's network holds no admin socket (built? taken?)")
        sock, self._admin = self._admin, None
        return sock

    def __enter__(self) -> LabNetwork:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _join_user(user: str, home: str) -> None:
        """Join the user namespace ``user`` and move into the network namespace ``home``
        for good: from the user namespace there is no way back into the machine's own
        network, and a thread entering a segment must be able to return."""
        if threading.active_count() > 1:
            raise NetnsError(
                "the lab must join its user namespace before it starts any thread (a bug)"
            )
        for path, kind in ((user, CLONE_NEWUSER), (home, CLONE_NEWNET)):
            fd = os.open(path, os.O_RDONLY)
            try:
                _setns(fd, kind)
            except OSError as exc:
                raise NetnsUnavailable(
                    f"cannot enter the lab's namespaces: {exc.strerror}"
                ) from None
            finally:
                os.close(fd)

    def _wire(self) -> None:
        router = ["link set lo up"]
        for segment in self.segments:
            holder = self._holders[segment.name]
            link = f"r-{segment.name}"
            router += [
                f"link add {link} type veth peer name eth0 netns {holder.process.pid}",
                f"address add {segment.router}/{segment.network.prefixlen} dev {link}",
                f"link set {link} up",
            ]
        self.run(self.router_path, ["ip", "-batch", "-"], input="\n".join(router) + "\n")
        for segment in self.segments:
            # A segment without servers still needs an address of its own (x.y.0.254).
            hosts = list(segment.hosts) or [segment.network.network_address + 254]
            commands = ["link set lo up"]
            commands += [
                f"address add {host}/{segment.network.prefixlen} dev eth0" for host in hosts
            ]
            commands += ["link set eth0 up", f"route add default via {segment.router}"]
            if segment.phones:
                commands += [f"route add local {block} dev lo" for block in segment.phone_ranges]
            self.run(
                self.path(segment.name), ["ip", "-batch", "-"], input="\n".join(commands) + "\n"
            )
        # Nothing is forwarded before the first ruleset says what may pass.
        self.apply_rules(CLOSED)
        self.run(self.router_path, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])

    # -- using it ----------------------------------------------------------------------------

    @property
    def router_path(self) -> str:
        """The router's network namespace (``/proc/PID/ns/net`` of its holder)."""
        if self._router is None:
            raise NetnsError("the lab's network is not built")
        return self._router.net

    @property
    def user_path(self) -> str | None:
        """The user namespace that owns the network; None when the lab runs as root."""
        if self._router is None or self.as_root:
            return None
        return self._router.user

    def path(self, segment: str) -> str:
        """The network namespace of ``segment``."""
        holder = self._holders.get(segment)
        if holder is None:
            raise NetnsError(f"no segment {segment!r} in the lab's network")
        return holder.net

    def namespace_of(self, address: str) -> str | None:
        """The namespace of the segment ``address`` is in; None when it is in none."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for segment in self.segments:
            if ip in segment.network:
                return self.path(segment.name)
        return None

    def run(self, namespace: str, command: Sequence[str], input: str | None = None) -> str:
        """Run ``command`` in ``namespace``; its output, or NetnsError with what it said."""
        result = subprocess.run(
            ["nsenter", f"--net={namespace}", "--", *command],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            said = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
            raise NetnsError(f"{' '.join(command)} failed in the lab's network: {said}")
        return result.stdout

    def apply_rules(self, ruleset: str) -> None:
        """Replace the router's ``inet lab`` table with ``ruleset``, atomically."""
        self.run(
            self.router_path,
            ["nft", "-f", "-"],
            input="table inet lab\ndelete table inet lab\n" + ruleset,
        )

    def rules(self) -> str:
        """The router's ruleset as nftables lists it now (counters included)."""
        return self.run(self.router_path, ["nft", "list", "ruleset"])

    def lease(self) -> dict[str, object]:
        """The lease's ``netns``: where phones' sockets are made (emulator/netns.py), and
        for a lab without root its user namespace and the network a phone process lives in
        once it joined that (the router's)."""
        return {
            "user": self.user_path,
            "home": None if self.user_path is None else self.router_path,
            "segments": {name: self.path(name) for name in ("inside", "outside")},
        }

    def describe(self) -> dict[str, object]:
        """run.json's ``network``: the namespaces and segments, for tools and people."""
        return {
            "router": self.router_path,
            "user": self.user_path,
            "segments": {
                segment.name: {
                    "range": str(segment.network),
                    "router": str(segment.router),
                    "netns": self.path(segment.name),
                    "hosts": [str(host) for host in segment.hosts],
                }
                for segment in self.segments
            },
        }


def socket_at(host: str, kind: socket.SocketKind) -> socket.socket:
    """A new socket for an address of the lab: made in the namespace of ``host``'s segment
    when the lab runs in its own network, an ordinary one otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    network = _active
    path = network.namespace_of(host) if network is not None else None
    if path is None:
        return socket.socket(family, kind)
    with entered(path):
        return socket.socket(family, kind)
