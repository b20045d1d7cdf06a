"""
The C{spectrum} command (C{twistd spectrum} runs the proxy):

  - C{spectrum check [FILE]}: check a config file as a start would,
    binding nothing (C{nginx -t}, C{haproxy -c});
  - C{spectrum status}, C{spectrum apps list}, C{spectrum rules
    list|add|delete}: a running spectrum's admin API from the shell;
  - C{spectrum firewall ufw|nftables|iptables [--port P]}: origin firewall
    rules admitting only spectrum's addresses;
  - C{spectrum --version}.

Every failure is one line on stderr, C{spectrum: ...}, and exit status 1
(2 for a command line argparse refuses).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spectrum import version_line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrum",
        description="Check spectrum's config and manage a running spectrum. (twistd -n spectrum runs the proxy.)",
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser(
        "check",
        help="check a config file as a start would, binding nothing",
        description="Check a config file as twistd spectrum would at start (schema, semantic checks, certificate"
        " and GeoIP files, the admin's state file and tokens), binding nothing and writing nothing."
        " Exit 0 and a summary, or 1 and the error.",
    )
    check.add_argument("file", nargs="?", help="the config file (default: the built-in default config)")

    admin = argparse.ArgumentParser(add_help=False)
    where = admin.add_argument_group("admin API")
    where.add_argument("--admin", metavar="URL", help="the admin's URL (default: SPECTRUM_ADMIN, else --config's)")
    where.add_argument(
        "--token", help="an API token (default: SPECTRUM_TOKEN, else the token file the admin generated)"
    )
    where.add_argument(
        "--config", metavar="FILE", help="the running spectrum's config file: its admin address and token file"
    )
    where.add_argument("--cacert", metavar="FILE", help="CA certificates for an https admin")
    where.add_argument("--insecure", action="store_true", help="do not verify an https admin's certificate")
    where.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default 10)")
    where.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    commands.add_parser(
        "status", parents=[admin], help="apps, listeners, origins and open connections of a running spectrum"
    )

    apps = commands.add_parser("apps", help="Spectrum apps").add_subparsers(dest="action", metavar="ACTION")
    apps.required = True
    apps.add_parser("list", parents=[admin], help="list the apps")

    rules = commands.add_parser("rules", help="IP access rules").add_subparsers(dest="action", metavar="ACTION")
    rules.required = True
    listed = rules.add_parser("list", parents=[admin], help="list the rules (every app's and each app's)")
    listed.add_argument("--app", metavar="APP", help="only this app's rules (name or id)")
    add = rules.add_parser("add", parents=[admin], help="add a rule")
    add.add_argument("mode", choices=("block", "whitelist"))
    add.add_argument("value", help="an address, network, AS number (AS64500) or country code")
    add.add_argument("--target", choices=("ip", "ip6", "ip_range", "asn", "country"), help="default: from VALUE")
    add.add_argument("--notes", help="a note kept with the rule")
    add.add_argument("--app", metavar="APP", help="for this app only (name or id; default: every app)")
    delete = rules.add_parser("delete", parents=[admin], help="delete a rule made through the API")
    delete.add_argument("id", help="the rule's id")
    delete.add_argument("--app", metavar="APP", help="the app the rule is for (found when not given)")
    wall = commands.add_parser(
        "firewall",
        parents=[admin],
        help="print origin firewall rules that admit only spectrum's addresses",
        description="Print rules for an origin host that admit only the addresses spectrum connects from"
        " (GET /client/v4/ips: every node of a cluster) and drop every other source.",
    )
    wall.add_argument("kind", choices=("ufw", "nftables", "iptables"))
    wall.add_argument(
        "--port", type=int, metavar="P", help="only this port (TCP and UDP); default: every port but loopback"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run the command; return its exit status.
    """
    from spectrum.cli.client import CommandError

    arguments = _parser().parse_args(argv)
    try:
        output = _run(arguments)
    except CommandError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")
    sys.stdout.write(output)
    return 0


def _fail(message: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"spectrum: {' '.join(message.split())}\n")
    return 1


def _run(arguments: argparse.Namespace) -> str:
    from spectrum.cli.client import CommandError

    if arguments.command == "check":
        from spectrum.cli.check import CheckError, check

        try:
            return f"spectrum: {check(arguments.file)}\n"
        except CheckError as e:
            raise CommandError(str(e)) from None
    from spectrum.cli import admin

    client = _client(arguments)
    actions: Dict[Tuple[str, Optional[str]], Callable[[], str]] = {
        ("status", None): lambda: admin.status(client, arguments.json),
        ("apps", "list"): lambda: admin.apps_list(client, arguments.json),
        ("rules", "list"): lambda: admin.rules_list(client, arguments.app, arguments.json),
        ("rules", "add"): lambda: admin.rules_add(
            client,
            arguments.mode,
            arguments.value,
            arguments.target,
            arguments.notes,
            arguments.app,
            arguments.json,
        ),
        ("firewall", None): lambda: _firewall(client, arguments),
        ("rules", "delete"): lambda: admin.rules_delete(client, arguments.id, arguments.app, arguments.json),
    }
    return actions[(arguments.command, getattr(arguments, "action", None))]()


def _firewall(client: Any, arguments: argparse.Namespace) -> str:
    from spectrum.cli.firewall import firewall

    if arguments.port is not None and not 1 <= arguments.port <= 65535:
        from spectrum.cli.client import CommandError

        raise CommandError(f"--port: expected 1 to 65535, got {arguments.port}")
    return firewall(client, arguments.kind, arguments.port)


def _client(arguments: argparse.Namespace) -> Any:
    from spectrum.cli.client import AdminClient, AdminConfig, admin_token, admin_url

    config = AdminConfig(arguments.config)
    url = admin_url(arguments.admin, config, os.environ)
    token = admin_token(arguments.token, config, os.environ)
    return AdminClient(url, token, timeout=arguments.timeout, cafile=arguments.cacert, insecure=arguments.insecure)


__all__: List[str] = ["main"]
