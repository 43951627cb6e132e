"""Find, load and look up plugins: the pluggy PluginManager behind Navistore.

Plugins come only from the ``navistore`` entry-point group, ours included. Each one is imported,
registered and checked on its own, so one broken plugin is reported, not fatal: it becomes fatal
only when the settings ask for the backend or replicator it would have provided.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any

import pluggy

from navistore import hookspecs
from navistore.errors import PluginError
from navistore.replication import Replicator
from navistore.store import Backend

DISABLE_VARIABLE = "NAVISTORE_DISABLE_PLUGINS"


@dataclasses.dataclass
class PluginInfo:
    """What ``navistore plugins`` reports of one plugin."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str] = dataclasses.field(default_factory=list)
    backends: list[Backend] = dataclasses.field(default_factory=list)
    replicators: list[Replicator] = dataclasses.field(default_factory=list)
    error: str | None = None
    disabled: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "backends": [
                {
                    "name": b.name,
                    "schemes": list(b.schemes),
                    "description": b.description,
                    "capabilities": sorted(b.capabilities),
                }
                for b in self.backends
            ],
            "replicators": [
                {"name": r.name, "description": r.description} for r in self.replicators
            ],
            "error": self.error,
            "disabled": self.disabled,
        }


def disabled_from_environment() -> set[str]:
    """The plugin names ``NAVISTORE_DISABLE_PLUGINS`` blocks."""
    raw = os.environ.get(DISABLE_VARIABLE, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


class Plugins:
    """The loaded plugins and what they provide: backends by scheme, replicators by name."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
        self.pm = pm
        self.infos = infos

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def backend_for(self, url_scheme: str) -> tuple[Backend, PluginInfo]:
        """The backend that claims ``url_scheme``; PluginError when none or several do."""
        claims = [
            (backend, info)
            for info in self.infos
            for backend in info.backends
            if url_scheme in backend.schemes
        ]
        if len(claims) > 1:
            names = " and ".join(f"{i.name} ({i.distribution})" for _, i in claims)
            raise PluginError(f"scheme {url_scheme!r} is claimed by more than one plugin: {names}")
        if claims:
            return claims[0]
        raise PluginError(self._missing("scheme", url_scheme, self.schemes(), "backends"))

    def replicator(self, name: str) -> tuple[Replicator, PluginInfo]:
        """The replication strategy called ``name``; PluginError when there is none."""
        for info in self.infos:
            for replicator in info.replicators:
                if replicator.name == name:
                    return replicator, info
        names = sorted(r.name for i in self.infos for r in i.replicators)
        raise PluginError(self._missing("replicator", name, names, "replicators"))

    def schemes(self) -> list[str]:
        return sorted({s for info in self.infos for b in info.backends for s in b.schemes})

    def _missing(self, what: str, wanted: str, installed: list[str], provides: str) -> str:
        message = (
            f"no plugin provides the {what} {wanted!r}; installed: "
            f"{', '.join(installed) or 'none'}. The plugin that provides it may not be installed"
        )
        failed = [i for i in self.infos if i.error or i.disabled]
        for info in failed:
            why = "disabled by " + DISABLE_VARIABLE if info.disabled else info.error
            message += (
                f"; plugin {info.name!r} ({info.distribution or info.module}) did not load: {why}"
            )
        return message + "."


def get_plugin_manager(disabled: set[str] | None = None) -> Plugins:
    """Load every ``navistore`` entry point, one at a time, and return the Plugins."""
    if disabled is None:
        disabled = disabled_from_environment()
    pm = pluggy.PluginManager("navistore")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group="navistore"):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        # A distribution listed twice on sys.path (it happens in virtualenvs) loads once.
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist_name,
            version=dist.version if dist is not None else None,
        )
        infos.append(info)
        if ep.name in disabled:
            info.disabled = True
            pm.set_blocked(ep.name)
            continue
        _load_one(pm, ep, info)
    return Plugins(pm, infos)


def _load_one(
    pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint, info: PluginInfo
) -> None:
    """Import, register and check one plugin; on any failure record it and leave it out."""
    plugin = None
    try:
        plugin = ep.load()
        if pm.get_plugin(ep.name) is not None:
            raise PluginError(f"another plugin is already registered as {ep.name!r}")
        pm.register(plugin, name=ep.name)
        pm.check_pending()
        info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        info.backends = _provided(pm, plugin, "navistore_backends", Backend)
        info.replicators = _provided(pm, plugin, "navistore_replicators", Replicator)
    except Exception as exc:  # a plugin may fail in any way; none may take the others down
        info.error = f"{type(exc).__name__}: {exc}"
        info.hooks, info.backends, info.replicators = [], [], []
        if plugin is not None and pm.is_registered(plugin):
            pm.unregister(plugin)


def _provided(pm: pluggy.PluginManager, plugin: object, hook_name: str, kind: type) -> list:
    """Call one plugin's implementation of a list-returning hook and check what it gave."""
    impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is plugin]
    provided: list = []
    for impl in impls:
        for item in impl.function() or []:
            if not isinstance(item, kind):
                raise PluginError(
                    f"{hook_name} returned {item!r}; "
                    f"it must return navistore.{kind.__name__} entries"
                )
            provided.append(item)
    return provided


def plugins_report(
    plugins: Plugins, backend: str | None = None, replicator: str | None = None
) -> dict[str, Any]:
    """What ``navistore plugins`` and ``GET /v1/plugins`` show."""
    return {
        "plugins": [info.as_json() for info in plugins.infos],
        "active": {"backend": backend, "replicator": replicator},
    }


def resolve_replicator_name(setting: str | None, peers: list[str]) -> str | None:
    """The replicator to start: the setting, else ``peer-push`` when any peer is configured."""
    if setting:
        return None if setting == "none" else setting
    return "peer-push" if peers else None
