"""One TOML file describes a whole lab; this module loads and validates it.

Every rule about what a valid lab looks like lives here. A problem is reported as one
ConfigError naming the file, the dotted key and what is wrong, for example
``lab.toml: pools[0].front_ends[1].address: '127.10.0.300' is not an IPv4 address``.
The default lab ships inside the package (``default.toml``) and needs no privileges.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from lab.errors import ConfigError
from lab.models import MODEL_NAMES

DEFAULT_SOURCE = "<default config>"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")

HIGH_PORTS = {
    "dns": 10053,
    "internal": 10443,
    "external": 14443,
    "edge": 10443,
    "admin": 10080,
    "console": 10081,
}
REAL_PORTS = {
    "dns": 53,
    "internal": 443,
    "external": 4443,
    "edge": 443,
    "admin": 10080,
    "console": 10081,
}

LOCATIONS = ("inside", "outside")
KEY_TYPES = ("ecdsa-p256", "rsa-2048")
# Models the lab knows (the emulator carries their full description); a fleet entry names one.
MODELS = MODEL_NAMES

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")

T = TypeVar("T")


@dataclass(frozen=True)
class FrontEnd:
    """One front-end server: its short name, FQDN, inside address and the pool it is in."""

    name: str
    fqdn: str
    address: ipaddress.IPv4Address
    pool: str = ""


@dataclass(frozen=True)
class Pool:
    """A pool of front ends sharing one file store and one rule set, named by its FQDN.

    A Standard Edition server is a pool of one, whose FQDN is the server's.
    """

    fqdn: str
    front_ends: tuple[FrontEnd, ...]

    @property
    def name(self) -> str:
        """The pool's first label (``pool01`` of ``pool01.contoso.test``)."""
        return self.fqdn.split(".", 1)[0]


@dataclass(frozen=True)
class Edge:
    """The edge (reverse proxy) on an outside address publishing the external web name
    of one pool."""

    fqdn: str
    address: ipaddress.IPv4Address
    external_web: str
    pool: str = ""


@dataclass(frozen=True)
class Ports:
    """Every port the lab binds; 0 means any free port (read back after binding)."""

    dns: int
    internal: int
    external: int
    edge: int
    admin: int
    # The lab console's page on 127.0.0.1 (`lab console`; the lab itself never binds it).
    console: int


@dataclass(frozen=True)
class User:
    """A directory user: NTLM identity and the NT hash of the password (never plaintext)."""

    name: str
    domain: str
    upn: str
    nt_hash: str
    # The FQDN of the pool the user is homed on (in-band provisioning comes from it).
    pool: str = ""


@dataclass(frozen=True)
class Lockout:
    """Per-account lockout and per-source-address throttle of NTLM sign-ins.

    The account side follows Active Directory's recommended policy: ``threshold`` failures
    within ``window`` seconds lock the account for ``duration`` seconds. The address side
    keeps one source address from guessing at speed or locking every account: past
    ``address_threshold`` failures within ``window`` the address is refused for
    ``address_duration`` seconds, before any answer is checked.
    """

    threshold: int = 10
    window: float = 900.0
    duration: float = 900.0
    address_threshold: int = 20
    address_duration: float = 900.0


@dataclass(frozen=True)
class Limits:
    """What one peer may hold and how slowly it may talk; the ``[limits]`` table.

    The timeouts follow Apache's mod_reqtimeout: the request headers must arrive within
    ``header_timeout`` seconds; the body within ``body_timeout`` seconds, extended by one
    second for every ``body_min_rate`` bytes received.
    """

    connections_per_address: int = 256
    handshake_timeout: float = 10.0
    header_timeout: float = 20.0
    body_timeout: float = 20.0
    body_min_rate: int = 500
    keepalive_timeout: float = 120.0
    dns_tcp_idle_timeout: float = 10.0
    dns_tcp_message_timeout: float = 5.0
    # File descriptors kept free for the admin API when the listeners take no more.
    admin_reserve: int = 64
    # Device logs kept per front end in all, oldest deleted first (200 x MaxLogCacheLimit).
    device_logs_per_front_end: int = 102_400_000
    # What one audit field (installed modules, user, ...) may write, in characters.
    audit_field_max: int = 1024
    # Largest total a cab may unpack to, read from its own headers before expanding.
    cab_unpacked_max: int = 2 * 1024**3
    # Seconds between two log lines about one kind of fault (counted in between).
    fault_log_interval: float = 60.0


@dataclass(frozen=True)
class FleetPhone:
    """One entry of the demo fleet."""

    model: str
    location: Literal["inside", "outside"]
    user: str | None = None
    test_device: bool = False
    busy: bool = False
    count: int = 1


@dataclass(frozen=True)
class PKIConfig:
    """Where the lab PKI lives and what kind of keys it makes."""

    dir: Path
    key_type: Literal["ecdsa-p256", "rsa-2048"]
    validity_days: int


@dataclass(frozen=True)
class LabConfig:
    """A whole lab as one value; made by load_config or default_config."""

    source: str
    name: str
    dhcp_domain: str
    sip_domain: str
    inside: ipaddress.IPv4Network
    outside: ipaddress.IPv4Network
    dns_address: ipaddress.IPv4Address
    ports: Ports
    pools: tuple[Pool, ...]
    # The FQDN of the pool ``ucupdates-r2.<zone>`` points at (phones with no provisioning).
    ucupdates_pool: str
    edge: Edge
    pki: PKIConfig
    users: tuple[User, ...] = ()
    fleet: tuple[FleetPhone, ...] = field(default=())
    lockout: Lockout = field(default=Lockout())
    limits: Limits = field(default=Limits())

    @property
    def zones(self) -> tuple[str, ...]:
        """The DNS zones the lab is authoritative for (DHCP domain first)."""
        return tuple(dict.fromkeys((self.dhcp_domain, self.sip_domain)))

    @property
    def ucupdates_names(self) -> tuple[str, ...]:
        """``ucupdates-r2.<zone>`` for every lab zone: the names phones look up."""
        return tuple(f"ucupdates-r2.{zone}" for zone in self.zones)

    @property
    def front_ends(self) -> tuple[FrontEnd, ...]:
        """Every front end of every pool, in config order."""
        return tuple(fe for pool in self.pools for fe in pool.front_ends)

    @property
    def discovery_pool(self) -> Pool:
        """The pool ``ucupdates-r2`` points at."""
        return self.pool(self.ucupdates_pool)

    @property
    def edge_pool(self) -> Pool:
        """The pool the edge publishes."""
        return self.pool(self.edge.pool)

    def front_end(self, name: str) -> FrontEnd:
        """The front end called ``name`` (short name or FQDN)."""
        name = name.lower()
        for fe in self.front_ends:
            if name in (fe.name, fe.fqdn):
                return fe
        known = ", ".join(fe.name for fe in self.front_ends)
        raise ConfigError(self.source, "pools.front_ends", f"no front end {name!r} (have {known})")

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` (FQDN, or its first label when that is unambiguous)."""
        fqdns = [pool.fqdn for pool in self.pools]
        found = _pool_named(fqdns, name)
        if found is None:
            wanted = name.lower().rstrip(".")
            raise ConfigError(self.source, "pools", f"no pool {wanted!r} (have {', '.join(fqdns)})")
        return self.pools[fqdns.index(found)]

    def pool_of(self) -> dict[str, str]:
        """Each front end's short name to its pool's FQDN."""
        return {fe.name: fe.pool for fe in self.front_ends}

    def home_pool(self, user: User) -> Pool:
        """The pool ``user`` is homed on."""
        return self.pool(user.pool)

    def user(self, name: str) -> User:
        """The directory user called ``name`` (short name or UPN)."""
        for user in self.users:
            if name.lower() in (user.name.lower(), user.upn.lower()):
                return user
        raise ConfigError(self.source, "directory.users", f"no user {name!r}")

    def with_ports(self, **ports: int) -> LabConfig:
        """A copy with some ports replaced (tests pass 0 for free ports)."""
        merged = {**self.ports.__dict__, **ports}
        return _replace(self, ports=Ports(**merged))

    def with_pki_dir(self, directory: Path) -> LabConfig:
        """A copy whose PKI lives in ``directory``."""
        return _replace(self, pki=_replace(self.pki, dir=directory))


def _pool_named(fqdns: Sequence[str], name: str) -> str | None:
    """The one of ``fqdns`` that ``name`` names: the FQDN itself, or its first label when
    no other pool has it (``pool01``); None when none or several do."""
    wanted = name.lower().rstrip(".")
    found = [fqdn for fqdn in fqdns if wanted in (fqdn, fqdn.split(".", 1)[0])]
    return found[0] if len(found) == 1 else None


def _replace(obj: T, **changes: Any) -> T:
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


class _Reader:
    """Reads typed values out of nested TOML tables, naming the dotted key on error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    def table(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(_join(path, key), f"must be a table, not {_kind(value)}")
        return value

    def tables(self, data: Mapping[str, Any], key: str, path: str) -> list[Mapping[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(_join(path, key), "must be an array of tables ([[...]])")
        return value

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        kind: type[T],
        default: T | None = None,
    ) -> T:
        full = _join(path, key)
        if key not in data:
            if default is None:
                raise self.fail(full, "is required")
            return default
        value = data[key]
        # bool is an int in Python; a port of `true` must still be refused.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(full, f"must be {kind.__name__}, not {_kind(value)} {value!r}")
        return value

    def check(self, ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise self.fail(key, problem)

    def convert(self, key: str, value: str, parse: Callable[[str], T], what: str) -> T:
        try:
            return parse(value)
        except ValueError:
            raise self.fail(key, f"{value!r} is not {what}") from None

    def reject_unknown(self, data: Mapping[str, Any], path: str, known: set[str]) -> None:
        for key in data:
            if key not in known:
                raise self.fail(_join(path, key), f"unknown key (expected one of {sorted(known)})")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _fqdn(r: _Reader, key: str, name: str) -> str:
    name = name.lower().rstrip(".")
    labels = name.split(".")
    r.check(
        len(labels) >= 2 and all(_LABEL.match(label) for label in labels) and len(name) <= 253,
        key,
        f"{name!r} is not a DNS name (letters, digits and hyphens, at least two labels)",
    )
    return name


def _loopback(r: _Reader, key: str, text: str) -> ipaddress.IPv4Address:
    address = r.convert(key, text, ipaddress.IPv4Address, "an IPv4 address")
    r.check(address in LOOPBACK, key, f"{address} is not a loopback address (127.0.0.0/8)")
    return address


def _segment(r: _Reader, key: str, text: str) -> ipaddress.IPv4Network:
    net = r.convert(key, text, ipaddress.IPv4Network, "an IPv4 network such as 127.10.0.0/16")
    r.check(net.subnet_of(LOOPBACK), key, f"{net} is not inside 127.0.0.0/8")
    return net


def parse_config(data: Mapping[str, Any], source: str) -> LabConfig:
    """Validate parsed TOML ``data`` and build a LabConfig; ``source`` names it in errors."""
    r = _Reader(source)
    r.reject_unknown(
        data,
        "",
        {
            "lab",
            "domains",
            "network",
            "ports",
            "pool",
            "pools",
            "edge",
            "pki",
            "directory",
            "fleet",
            "limits",
        },
    )

    lab = r.table(data, "lab", "")
    name = r.get(lab, "name", "lab", str, "lab")

    domains = r.table(data, "domains", "")
    r.reject_unknown(domains, "domains", {"dhcp", "sip"})
    dhcp = _fqdn(r, "domains.dhcp", r.get(domains, "dhcp", "domains", str))
    sip = _fqdn(r, "domains.sip", r.get(domains, "sip", "domains", str, dhcp))

    network = r.table(data, "network", "")
    r.reject_unknown(network, "network", {"inside", "outside", "dns", "ucupdates"})
    inside = _segment(r, "network.inside", r.get(network, "inside", "network", str))
    outside = _segment(r, "network.outside", r.get(network, "outside", "network", str))
    r.check(
        not inside.overlaps(outside),
        "network.outside",
        f"{outside} overlaps the inside segment {inside}",
    )
    dns = _loopback(r, "network.dns", r.get(network, "dns", "network", str))

    ports_t = r.table(data, "ports", "")
    r.reject_unknown(ports_t, "ports", {"mode", *HIGH_PORTS})
    mode = r.get(ports_t, "mode", "ports", str, "high")
    r.check(mode in ("high", "real"), "ports.mode", f"{mode!r} is not 'high' or 'real'")
    chosen = dict(HIGH_PORTS if mode == "high" else REAL_PORTS)
    for key in HIGH_PORTS:
        if key in ports_t:
            port = r.get(ports_t, key, "ports", int)
            r.check(0 <= port <= 65535, f"ports.{key}", f"{port} is not a port (0-65535)")
            chosen[key] = port
    ports = Ports(**chosen)

    pools = _pools(r, data, sip, inside)
    pool_names = [pool.fqdn for pool in pools]

    def pool_ref(table: Mapping[str, Any], key: str, path: str) -> str:
        # A pool named by FQDN or first label; the first pool when the key is absent.
        if key not in table:
            return pool_names[0]
        given = r.get(table, key, path, str)
        found = _pool_named(pool_names, given)
        if found is None:
            wanted = given.lower().rstrip(".")
            raise r.fail(
                _join(path, key),
                f"{wanted!r} is not one of the lab's pools ({', '.join(pool_names)})",
            )
        return found

    edge_t = r.table(data, "edge", "")
    r.reject_unknown(edge_t, "edge", {"fqdn", "address", "external_web", "pool"})
    edge_address = _loopback(r, "edge.address", r.get(edge_t, "address", "edge", str))
    r.check(edge_address in outside, "edge.address", f"{edge_address} is not in outside {outside}")
    edge = Edge(
        fqdn=_fqdn(r, "edge.fqdn", r.get(edge_t, "fqdn", "edge", str)),
        address=edge_address,
        external_web=_fqdn(r, "edge.external_web", r.get(edge_t, "external_web", "edge", str)),
        pool=pool_ref(edge_t, "pool", "edge"),
    )

    pki_t = r.table(data, "pki", "")
    r.reject_unknown(pki_t, "pki", {"dir", "key_type", "validity_days"})
    key_type = r.get(pki_t, "key_type", "pki", str, "ecdsa-p256")
    r.check(key_type in KEY_TYPES, "pki.key_type", f"{key_type!r} is not one of {KEY_TYPES}")
    validity = r.get(pki_t, "validity_days", "pki", int, 397)
    r.check(1 <= validity <= 3650, "pki.validity_days", f"{validity} is not in 1..3650")
    pki = PKIConfig(
        dir=Path(r.get(pki_t, "dir", "pki", str, "certs")),
        key_type=key_type,  # type: ignore[arg-type]
        validity_days=validity,
    )

    directory = r.table(data, "directory", "")
    r.reject_unknown(directory, "directory", {"users", "lockout"})
    lockout = _numbers(r, r.table(directory, "lockout", "directory"), "directory.lockout", Lockout)
    users: list[User] = []
    for i, u in enumerate(r.tables(directory, "users", "directory")):
        path = f"directory.users[{i}]"
        r.check("password" not in u, f"{path}.password", "plaintext passwords are not accepted")
        r.reject_unknown(u, path, {"name", "domain", "upn", "nt_hash", "pool"})
        user_name = r.get(u, "name", path, str)
        nt_hash = r.get(u, "nt_hash", path, str).lower()
        r.check(
            bool(_HEX32.match(nt_hash)),
            f"{path}.nt_hash",
            "must be 32 hex digits (MD4 of the UTF-16LE password)",
        )
        upn = r.get(u, "upn", path, str, f"{user_name}@{sip}")
        r.check("@" in upn, f"{path}.upn", f"{upn!r} is not a user principal name")
        domain = r.get(u, "domain", path, str, "CONTOSO").upper()
        users.append(User(user_name, domain, upn, nt_hash, pool_ref(u, "pool", path)))

    fleet: list[FleetPhone] = []
    known_users = {u.name.lower() for u in users}
    for i, p in enumerate(r.tables(data, "fleet", "")):
        path = f"fleet[{i}]"
        r.reject_unknown(p, path, {"model", "location", "user", "test_device", "busy", "count"})
        model = r.get(p, "model", path, str)
        r.check(model in MODELS, f"{path}.model", f"{model!r} is not a known model {MODELS}")
        location = r.get(p, "location", path, str, "inside")
        r.check(location in LOCATIONS, f"{path}.location", f"{location!r} is not inside/outside")
        user = p.get("user")
        if user is not None:
            user = r.get(p, "user", path, str)
            r.check(user.lower() in known_users, f"{path}.user", f"no directory user {user!r}")
        count = r.get(p, "count", path, int, 1)
        r.check(1 <= count <= 100_000, f"{path}.count", f"{count} is not in 1..100000")
        fleet.append(
            FleetPhone(
                model=model,
                location=location,  # type: ignore[arg-type]
                user=user,
                test_device=r.get(p, "test_device", path, bool, False),
                busy=r.get(p, "busy", path, bool, False),
                count=count,
            )
        )

    return LabConfig(
        source=source,
        name=name,
        dhcp_domain=dhcp,
        sip_domain=sip,
        inside=inside,
        outside=outside,
        dns_address=dns,
        ports=ports,
        pools=tuple(pools),
        ucupdates_pool=pool_ref(network, "ucupdates", "network"),
        edge=edge,
        pki=pki,
        users=tuple(users),
        fleet=tuple(fleet),
        lockout=lockout,
        limits=_numbers(r, r.table(data, "limits", ""), "limits", Limits),
    )


def _pools(
    r: _Reader, data: Mapping[str, Any], sip: str, inside: ipaddress.IPv4Network
) -> list[Pool]:
    """``[[pools]]`` (or one ``[pool]``), each with its ``front_ends``, checked as a whole."""
    if "pool" in data:
        r.check("pools" not in data, "pool", "give [pool] or [[pools]], not both")
        tables, base = [r.table(data, "pool", "")], ["pool"]
    else:
        tables = r.tables(data, "pools", "")
        base = [f"pools[{i}]" for i in range(len(tables))]
        r.check(bool(tables), "pools", "the lab needs at least one pool ([[pools]])")
    pools: list[Pool] = []
    seen: list[FrontEnd] = []
    for table, path in zip(tables, base, strict=True):
        r.reject_unknown(table, path, {"fqdn", "front_ends"})
        fqdn = _fqdn(r, f"{path}.fqdn", r.get(table, "fqdn", path, str))
        r.check(all(fqdn != p.fqdn for p in pools), f"{path}.fqdn", f"duplicate pool {fqdn!r}")
        front_ends: list[FrontEnd] = []
        for i, fe in enumerate(r.tables(table, "front_ends", path)):
            where = f"{path}.front_ends[{i}]"
            r.reject_unknown(fe, where, {"name", "address", "fqdn"})
            short = r.get(fe, "name", where, str).lower()
            r.check(bool(_LABEL.match(short)), f"{where}.name", f"{short!r} is not a host name")
            fe_fqdn = _fqdn(r, f"{where}.fqdn", r.get(fe, "fqdn", where, str, f"{short}.{sip}"))
            address = _loopback(r, f"{where}.address", r.get(fe, "address", where, str))
            r.check(address in inside, f"{where}.address", f"{address} is not in inside {inside}")
            r.check(all(short != other.name for other in seen), f"{where}.name", "duplicate name")
            r.check(
                all(address != other.address for other in seen),
                f"{where}.address",
                f"{address} is already used by another front end",
            )
            front_end = FrontEnd(short, fe_fqdn, address, fqdn)
            seen.append(front_end)
            front_ends.append(front_end)
        r.check(bool(front_ends), f"{path}.front_ends", "a pool needs at least one front end")
        # A Standard Edition server's pool FQDN is its own; otherwise the names must differ.
        clash = [fe for fe in seen if fe.fqdn == fqdn]
        r.check(
            not clash or (len(front_ends) == 1 and clash == front_ends),
            f"{path}.fqdn",
            f"{fqdn!r} is also a front end's FQDN (only a pool of one may share its server's)",
        )
        pools.append(Pool(fqdn, tuple(front_ends)))
    for pool, path in zip(pools, base, strict=True):
        for member in seen:
            r.check(
                member.fqdn != pool.fqdn or member.pool == pool.fqdn,
                f"{path}.fqdn",
                f"{pool.fqdn!r} is also the FQDN of {member.name}, a front end of pool "
                f"{member.pool!r}",
            )
    return pools


N = TypeVar("N", Lockout, Limits)


def _numbers(r: _Reader, table: Mapping[str, Any], path: str, kind: type[N]) -> N:
    """A table of positive numbers whose keys and defaults are the fields of ``kind``."""
    defaults = {f.name: f.default for f in dataclasses.fields(kind)}
    r.reject_unknown(table, path, set(defaults))
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        if key not in table:
            continue
        value = table[key]
        number_kind: tuple[type, ...] = (int,) if isinstance(default, int) else (int, float)
        r.check(
            isinstance(value, number_kind) and not isinstance(value, bool),
            f"{path}.{key}",
            f"must be {'a whole number' if number_kind == (int,) else 'a number'}, "
            f"not {_kind(value)} {value!r}",
        )
        r.check(value > 0, f"{path}.{key}", f"{value} must be more than 0")
        values[key] = float(value) if isinstance(default, float) else int(value)
    return kind(**values)


def parse_toml(text: str, source: str) -> LabConfig:
    """Parse TOML ``text`` and validate it as a lab config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return parse_config(data, source)


def load_config(path: Path | str | None = None) -> LabConfig:
    """Load the lab config at ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return default_config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot be read: {exc}") from None
    return parse_toml(text, str(path))


def default_text() -> str:
    """The text of the embedded default config."""
    return resources.files("lab").joinpath("default.toml").read_text(encoding="utf-8")


def default_config() -> LabConfig:
    """The embedded default lab, which runs without privileges."""
    return parse_toml(default_text(), DEFAULT_SOURCE)
