"""Phones in a lab's own network (`lab up --netns`): each socket in its segment's namespace.

A lab that runs in network namespaces of its own names them in its lease (``netns``): the
network namespace of each segment, by the segment's name, and the user namespace that owns
them when the lab was started without root. A phone's sockets (DNS over UDP and TCP, HTTPS)
are made in the namespace of the segment its address is in, so its packets leave from that
segment and cross the lab's router as a real phone's would. The calling thread enters the
namespace just to make the socket and goes back at once: the rest of the process (and
phones on the other segment) stays where it is.

Entering a namespace owned by a user namespace needs the process to be in that user
namespace first (`join_user`), which the kernel allows only while the process has a single
thread: the `emulator` command does it before anything starts. The lab keeps its own copy
of the few lines that call setns(2), as the lab and the phones share no code.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from emulator.errors import LeaseError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, kind: int) -> None:
    if _libc.setns(fd, kind) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _same_namespace(a: str, b: str) -> bool:
    first, second = os.stat(a), os.stat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


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


@dataclass(frozen=True)
class Namespaces:
    """Where a lab's segments are: each range's network namespace, and the user namespace
    that owns them (None when the lab runs as root and needs none)."""

    segments: tuple[tuple[ipaddress.IPv4Network, str], ...]
    user: str | None = None
    home: str | None = None
    """The network a process lives in once it joined ``user`` (from there it could not
    return to the machine's own)."""

    def namespace_of(self, address: str) -> str | None:
        """The namespace of the segment ``address`` is in; None when it is in none."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for network, path in self.segments:
            if ip in network:
                return path
        return None

    def socket(self, source: str, kind: socket.SocketKind) -> socket.socket:
        """A socket of ``kind`` for a phone at ``source``, made in that segment's namespace."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        path = self.namespace_of(source)
        if path is None:
            return socket.socket(family, kind)
        with entered(path):
            return socket.socket(family, kind)

    def join_user(self) -> None:
        """Put this process into the lab's user namespace, if it has one and the process is
        not there yet, and into its ``home`` network for good. OSError (with the reason)
        when the kernel refuses."""
        if self.user is None or _same_namespace("/proc/self/ns/user", self.user):
            return
        if threading.active_count() > 1:
            raise OSError("a process can join the lab's user namespace only with one thread")
        for path, kind in ((self.user, CLONE_NEWUSER), (self.home, CLONE_NEWNET)):
            if path is None:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                _setns(fd, kind)
            finally:
                os.close(fd)


def parse_namespaces(value: object, segments: Mapping[str, str]) -> Namespaces | None:
    """The lease's ``netns`` object, with the ranges of ``segments``; None when absent."""
    if value is None:
        return None
    problem = (
        "lease key 'netns' must be {user: path or null, home: path or null, segments: {name: path}}"
    )
    if not isinstance(value, Mapping):
        raise LeaseError(problem)
    user, home, paths = value.get("user"), value.get("home"), value.get("segments")
    if not isinstance(paths, Mapping) or not all(
        path is None or isinstance(path, str) for path in (user, home)
    ):
        raise LeaseError(problem)
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    for name, path in paths.items():
        if not isinstance(path, str) or name not in segments:
            raise LeaseError(f"{problem}; {name!r} is no segment of the lease")
        try:
            network = ipaddress.IPv4Network(segments[name], strict=False)
        except ValueError:
            raise LeaseError(f"the lease's {name} segment {segments[name]!r} is no range") from None
        found.append((network, path))
    return Namespaces(segments=tuple(found), user=user, home=home)
