"""The ``navistore`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from navistore._version import __version__
from navistore.errors import NavistoreError, PluginError, SettingsError
from navistore.plugins import Plugins, get_plugin_manager, plugins_report, resolve_replicator_name
from navistore.settings import Settings, add_arguments, load_settings
from navistore.shell import add_commands, run
from navistore.store import url_scheme

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in vars(args)}
    return load_settings(flags=flags, config=args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from navistore.server import serve

    return serve(_settings(args))


def _active(plugins: Plugins, settings: Settings) -> tuple[str | None, str | None, list[str]]:
    """The backend and replicator the settings would use, and why not where one is missing."""
    problems = []
    backend = replicator = None
    try:
        backend = plugins.backend_for(url_scheme(settings.store))[0].name
    except NavistoreError as exc:
        problems.append(f"store {settings.store}: {exc.description}")
    name = resolve_replicator_name(settings.replicator, list(settings.peer))
    if name:
        try:
            replicator = plugins.replicator(name)[0].name
        except NavistoreError as exc:
            problems.append(f"replicator: {exc.description}")
    return backend, replicator, problems


def cmd_plugins(args: argparse.Namespace) -> int:
    settings = _settings(args)
    plugins = get_plugin_manager()
    backend, replicator, problems = _active(plugins, settings)
    report = plugins_report(plugins, backend, replicator)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for info in report["plugins"]:
        where = (
            f"{info['distribution']} {info['version']}" if info["distribution"] else info["module"]
        )
        state = "disabled" if info["disabled"] else ("FAILED" if info["error"] else "loaded")
        print(f"{info['name']}  ({where})  {state}")
        if info["hooks"]:
            print(f"    hooks: {', '.join(info['hooks'])}")
        for b in info["backends"]:
            caps = ", ".join(b["capabilities"]) or "none"
            print(
                f"    backend {b['name']}: schemes {', '.join(b['schemes'])}; capabilities {caps}"
            )
            if b["description"]:
                print(f"        {b['description']}")
        for r in info["replicators"]:
            print(f"    replicator {r['name']}: {r['description']}")
        if info["error"]:
            print(f"    error: {info['error']}")
    if not report["plugins"]:
        print("no plugins installed")
    print(f"active backend: {backend or 'none'} (store {settings.store})")
    print(f"active replicator: {replicator or 'none'}")
    for problem in problems:
        print(f"problem: {problem}")
    return EXIT_OK


def cmd_conformance(args: argparse.Namespace) -> int:
    from navistore.testing.conformance import run

    code = run(args.url, sys.stdout, examples=args.examples, select=args.select)
    return EXIT_OK if code == 0 else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navistore", description="A key-value store that speaks HTTP."
    )
    parser.add_argument("--version", action="version", version=f"navistore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve the REST API (sqlite, 127.0.0.1:8888)")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    plugins = commands.add_parser("plugins", help="list plugins, what they provide, load errors")
    add_arguments(plugins)
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=cmd_plugins)

    conformance = commands.add_parser(
        "conformance", help="run the conformance suite against a store URL and print a report"
    )
    conformance.add_argument(
        "url",
        nargs="?",
        help="store URL; {n} marks where a fresh store's name goes (default: sqlite, temporary)",
    )
    conformance.add_argument("--examples", type=int, help="Hypothesis examples (default 200)")
    conformance.add_argument("-k", dest="select", metavar="EXPR", help="only tests matching EXPR")
    conformance.set_defaults(func=cmd_conformance)

    add_commands(commands)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``, with a command's options allowed between its positionals.

    argparse takes a command's positionals in one go where it meets the first: so
    ``navistore put KEY --ttl 60 VALUE`` read KEY and no value, then refused VALUE. When the first
    parse leaves arguments over, the command's own parser reads its arguments again, options
    first, then positionals (``parse_intermixed_args``), and reports what is still wrong.

    In ``navistore watch PREFIX -- COMMAND ARG...``, what follows ``--`` is the command to run on
    each change (``args.run``); it is kept from argparse, which would read its first word as the
    prefix when none is given."""
    run: list[str] = []
    if argv[:1] == ["watch"] and "--" in argv:  # navistore watch PREFIX -- COMMAND ARG...
        cut = argv.index("--")
        argv, run = argv[:cut], list(argv[cut + 1 :])
        if not run:
            parser.error("watch: give the command to run after --")
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = commands.choices[args.command]
        rest = argv[argv.index(args.command) + 1 :]
        args = command.parse_intermixed_args(rest, argparse.Namespace(command=args.command))
    if run:
        args.run = run
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "client_command", False):
        return run(args.func, args)
    try:
        return args.func(args)
    except (SettingsError, PluginError) as exc:
        print(f"navistore: error: {exc.description}", file=sys.stderr)
        return EXIT_USAGE
    except NavistoreError as exc:
        print(f"navistore: {exc.title.lower()}: {exc.description}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
