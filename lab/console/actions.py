"""What the page's buttons do: each action turns a form into one admin API request.

The console implements no operation itself: every action on the lab is the admin API
request the CLI's matching command sends (lab firewall, lab dns fault, lab maintenance,
lab update, lab test-device, lab config, lab phone), and the scenario and demo actions
start and step lab.ops.runs' runners, as `lab scenario run` and `lab demo` do. Each
answers one sentence for the page's status line. A form that makes no sense is refused
with ValueError (400); the lab's own refusals come back as the admin API words them.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any
from urllib.parse import quote

from aiohttp.web_request import FileField

from lab.console.panels import Sources

FormValue = str | bytes | bytearray | FileField
Action = Callable[[Sources, "Form"], Awaitable[str]]

ZONES = ("inside", "outside")
FAULT_KINDS = ("remove", "servfail", "delay", "drop")
TRUE = frozenset({"1", "on", "true", "yes"})


class Form:
    """A submitted form, read field by field with a clear error for what is missing."""

    def __init__(self, fields: Mapping[str, FormValue]) -> None:
        self.fields = fields

    def text(self, name: str, default: str | None = None) -> str:
        """A text field; ValueError when it is empty and has no default."""
        value = self.fields.get(name)
        text = value.strip() if isinstance(value, str) else ""
        if text:
            return text
        if default is None:
            raise ValueError(f"the form's {name!r} is empty")
        return default

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        """One of ``options``."""
        value = self.text(name, default)
        if value not in options:
            raise ValueError(f"{name!r} must be one of {', '.join(options)}, not {value!r}")
        return value

    def flag(self, name: str) -> bool:
        """A checkbox (or a hidden field saying 1 / true)."""
        value = self.fields.get(name)
        return isinstance(value, str) and value.strip().lower() in TRUE

    def number(self, name: str, default: float) -> float:
        """A number field."""
        text = self.text(name, str(default))
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name!r} must be a number, not {text!r}") from None

    def integer(self, name: str, default: int) -> int:
        """A whole number field."""
        text = self.text(name, str(default))
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name!r} must be a whole number, not {text!r}") from None

    def values(self, name: str) -> list[str]:
        """Every value of a repeated field (ticked checkboxes of one name)."""
        getall = getattr(self.fields, "getall", None)
        found = getall(name, []) if getall is not None else [self.fields.get(name)]
        return [v.strip() for v in found if isinstance(v, str) and v.strip()]

    def filename(self, name: str) -> str:
        """The name a file field's file had on the trainer's machine."""
        value = self.fields.get(name)
        return value.filename if isinstance(value, FileField) and value.filename else "upload.cab"

    def upload(self, name: str) -> IO[bytes]:
        """A file field's content, as the file aiohttp keeps it in (read as it is sent on)."""
        value = self.fields.get(name)
        if not isinstance(value, FileField):
            raise ValueError(f"choose a file for {name!r}")
        file = value.file
        if file.seek(0, io.SEEK_END) == 0:
            raise ValueError(f"the file {value.filename!r} is empty")
        file.seek(0)
        return file


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


# -- the firewall (lab firewall set|clear|flip|reset) ----------------------------------------


async def firewall_move(sources: Sources, form: Form) -> str:
    """Put an address or range inside or outside."""
    target, zone = form.text("target"), form.choice("zone", ZONES)
    await sources.api.post("/v1/firewall", {"action": "set", "target": target, "zone": zone})
    return f"{target} is now {zone} the firewall"


async def firewall_clear(sources: Sources, form: Form) -> str:
    """Drop the override for an address or range."""
    target = form.text("target")
    await sources.api.post("/v1/firewall", {"action": "clear", "target": target})
    return f"{target} is back in its own segment"


async def firewall_flip(sources: Sources, form: Form) -> str:
    """Swap inside and outside for every address (or undo it)."""
    on = form.flag("on")
    await sources.api.post("/v1/firewall", {"action": "flip", "on": on})
    return "inside and outside are swapped" if on else "inside and outside are back"


async def firewall_reset(sources: Sources, form: Form) -> str:
    """Drop every override and the flip."""
    await sources.api.post("/v1/firewall", {"action": "reset"})
    return "the firewall is back to its segments"


# -- DNS faults (lab dns fault set|clear) ----------------------------------------------------


async def dns_fault_set(sources: Sources, form: Form) -> str:
    """Make a name misbehave."""
    name, kind = form.text("name"), form.choice("kind", FAULT_KINDS)
    body: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "delay":
        body["delay"] = form.number("delay", 2.0)
    await sources.api.post("/v1/dns/faults", body)
    return f"DNS: {name} now answers with fault {kind}"


async def dns_fault_clear(sources: Sources, form: Form) -> str:
    """Clear the fault on one name, or every fault."""
    name = form.text("name", "")
    await sources.api.delete("/v1/dns/faults" + (_path(name) if name else ""))
    return f"DNS: {name} answers normally again" if name else "DNS: every fault cleared"


# -- maintenance (lab maintenance enter|exit) ------------------------------------------------


async def maintenance(sources: Sources, form: Form) -> str:
    """Enter maintenance (drain or immediate, forced for a pool's last server) or exit it."""
    server = form.text("server")
    verb = form.choice("verb", ("enter", "exit"))
    if verb == "exit":
        await sources.api.post(_path("v1", "maintenance", server, "exit"))
        return f"{server} is back in production"
    mode = form.choice("mode", ("drain", "immediate"), "drain")
    await sources.api.post(
        _path("v1", "maintenance", server, "enter"),
        {"immediate": mode == "immediate", "force": form.flag("force")},
    )
    if mode == "immediate":
        return f"{server} stopped at once: transfers in progress were cut"
    return f"{server} is draining: transfers in progress finish, new requests go elsewhere"


# -- rules (lab update import|approve|reset|restore|remove, lab cab build) --------------------

RULE_ACTIONS = ("approve", "reset", "restore", "remove")


def _pools(form: Form) -> dict[str, str]:
    """An import's pools: one pool, or every pool (the form's ``pool`` says "*")."""
    pool = form.text("pool")
    return {"all_pools": "1"} if pool == "*" else {"pool": pool}


async def rules_import(sources: Sources, form: Form) -> str:
    """Import an uploaded vendor cab into one pool or every pool (its versions pending)."""
    cab = form.upload("cab")
    name = form.filename("cab")
    params = {**_pools(form), "name": name}
    result = await sources.api.post("/v1/rules/import", data=cab, params=params)
    return _import_message(result)


def _import_message(result: dict[str, Any]) -> str:
    pools = ", ".join(result["pools"])
    if not result["changed"]:
        return f"{result['cab']} was in {pools} already: nothing changed"
    pending = [c for c in result["changes"] if c["action"] in ("created", "pending")]
    return f"imported {result['cab']} into {pools}: {len(pending)} rule(s) with a pending version"


async def rules_build(sources: Sources, form: Form) -> str:
    """Build a cab with the lab's own builder for the models chosen, import it, and approve
    it when asked."""
    models = form.values("models")
    if not models:
        raise ValueError("tick at least one model for the cab")
    version = form.text("version")
    pools = _pools(form)
    body: dict[str, Any] = {
        "models": models,
        "version": version,
        "approve": form.flag("approve"),
        **({"all_pools": True} if "all_pools" in pools else pools),
    }
    published = await sources.api.post("/v1/rules/build", body)
    imported = _import_message(published["imported"])
    approved = len(published["approved"])
    return f"built a cab of {len(models)} model(s) at {version}; {imported}" + (
        f"; {approved} rule(s) approved" if approved else ""
    )


async def rules_change(sources: Sources, form: Form) -> str:
    """Approve, reset, restore or remove one rule (by identity), or every rule of a pool."""
    action = form.choice("action", RULE_ACTIONS)
    rule = form.text("rule", "")
    body: dict[str, Any] = {"rules": [rule]} if rule else {"pool": form.text("pool")}
    changes = await sources.api.post(f"/v1/rules/{action}", body)
    done = [c for c in changes if c["action"] != "skipped"]
    what = ", ".join(_rule_words(c) for c in done) or "no rule"
    return f"{action}: {what}"


def _rule_words(change: dict[str, Any]) -> str:
    rule = change["rule"]
    model = rule.get("model", "?")
    if change["action"] == "removed":
        return f"{model} removed"
    versions = [f"{k} {rule[k]}" for k in ("pending", "approved", "restore") if rule.get(k)]
    return f"{model} now {', '.join(versions) or 'without a version'}"


# -- test devices and the device-update configuration -----------------------------------------


def _device(form: Form) -> dict[str, str]:
    """A test device by MAC or serial number (the form's ``kind`` says which)."""
    kind = form.choice("kind", ("mac", "serial"), "mac")
    return {kind: form.text("value")}


async def test_device_add(sources: Sources, form: Form) -> str:
    """Name a test device (it receives pending versions)."""
    body = _device(form)
    name = form.text("name", "")
    if name:
        body["name"] = name
    device = await sources.api.post("/v1/test-devices", body)
    return f"test device {device['value']} added: it receives pending versions"


async def test_device_remove(sources: Sources, form: Form) -> str:
    """Remove a test device."""
    device = await sources.api.delete("/v1/test-devices", _device(form))
    return f"test device {device['value']} removed"


async def devconfig_set(sources: Sources, form: Form) -> str:
    """Set one device-update setting (or put it back to its default)."""
    name, value = form.text("setting"), form.text("value", "default")
    values = await sources.api.post("/v1/device-config", {"settings": {name: value}})
    return f"{name} is now {values.get(name) or '(not set)'}"


# -- the phone wall (lab phone) ---------------------------------------------------------------


async def phones_add(sources: Sources, form: Form) -> str:
    """Add N phones of a model, inside or outside, with a user and plugged in if asked."""
    body: dict[str, Any] = {
        "model": form.text("model"),
        "count": form.integer("count", 1),
        "location": form.choice("location", ZONES, "inside"),
        "plug_in": form.flag("plug_in"),
    }
    user = form.text("user", "")
    if user:
        body["user"] = user
    return str((await sources.api.post("/v1/phones", body))["message"])


PHONE_ACTIONS = ("plug-in", "unplug", "sign-in", "sign-out", "call-start", "call-end", "power-cut")


async def phone_act(sources: Sources, form: Form) -> str:
    """Do to one phone what a person at it would."""
    mac, act = form.text("mac"), form.choice("act", PHONE_ACTIONS)
    body = {"user": form.text("user")} if act == "sign-in" else {}
    result = await sources.api.post(_path("v1", "phones", mac, act), body)
    return str(result["message"])


async def phone_remove(sources: Sources, form: Form) -> str:
    """Take a phone off the wall."""
    result = await sources.api.delete(_path("v1", "phones", form.text("mac")))
    return str(result["message"])


# -- scenarios and the demo (in the console's process: lab.ops.runs) --------------------------


async def scenario_run(sources: Sources, form: Form) -> str:
    """Run a scenario of the catalogue on a fresh lab."""
    run = sources.training.scenario
    run.start(form.text("scenario"), fault=not form.flag("no_fault"))
    return f"running {run.describe()} on a fresh lab: its timeline follows"


async def scenario_cancel(sources: Sources, form: Form) -> str:
    """Stop the scenario run."""
    await sources.training.scenario.cancel()
    return "the scenario run was stopped"


async def demo_start(sources: Sources, form: Form) -> str:
    """Start the demo on a fresh lab, waiting for Next between chapters."""
    training = sources.training
    training.demo.start(step=True, scale=training.demo_scale)
    return "the demo started on a fresh lab: chapter 1 is told, then it waits for Next"


async def demo_next(sources: Sources, form: Form) -> str:
    """Go on with the demo's next chapter."""
    demo = sources.training.demo
    waiting = demo.waiting_for
    demo.next()
    return f"chapter {waiting.number}: {waiting.title}" if waiting else "going on"


async def demo_cancel(sources: Sources, form: Form) -> str:
    """Stop the demo."""
    await sources.training.demo.cancel()
    return "the demo was stopped"


ACTIONS: dict[str, Action] = {
    "firewall-move": firewall_move,
    "firewall-clear": firewall_clear,
    "firewall-flip": firewall_flip,
    "firewall-reset": firewall_reset,
    "dns-fault-set": dns_fault_set,
    "dns-fault-clear": dns_fault_clear,
    "maintenance": maintenance,
    "rules-import": rules_import,
    "rules-build": rules_build,
    "rules-change": rules_change,
    "test-device-add": test_device_add,
    "test-device-remove": test_device_remove,
    "devconfig-set": devconfig_set,
    "phones-add": phones_add,
    "phone-act": phone_act,
    "phone-remove": phone_remove,
    "scenario-run": scenario_run,
    "scenario-cancel": scenario_cancel,
    "demo-start": demo_start,
    "demo-next": demo_next,
    "demo-cancel": demo_cancel,
}
"""Every action, by the name its form posts to (``POST /actions/NAME``)."""
