"""
The addresses origins see this node's connections come from: what
C{GET /client/v4/ips} lists and C{spectrum firewall} admits.

C{egress.addresses} in the config names them (a NAT or a pinned source);
otherwise they are found from the kernel's routes: for each origin given
as an address, the source address a connection to it would leave from
(C{connect()} on a UDP socket sends nothing and picks it), and for origins
given by name, the source of the default route of each family.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from typing import Any, Dict, Iterable, List, Optional

#: Documentation addresses standing for "somewhere beyond the default route".
_BEYOND = {4: "192.0.2.1", 6: "2001:db8::1"}


def source_address(destination: str) -> Optional[str]:
    """
    The address the kernel would connect to C{destination} from, or None
    when there is no route.
    """
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, 9))
            return str(probe.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return None


def node_networks(config: Any) -> List[str]:
    """
    This node's egress as CIDRs: the config's, else the sources towards
    its origins.
    """
    if config.egress.networks:
        return list(config.egress.networks)
    found = set()
    named = False
    for app in config.apps:
        for origin in app.pool.origins:
            try:
                ip = ipaddress.ip_address(origin.address)
            except ValueError:
                named = True
                continue
            source = source_address(str(ip))
            if source is not None:
                found.add(source)
    if named:
        for destination in _BEYOND.values():
            source = source_address(destination)
            if source is not None:
                found.add(source)
    return [str(ipaddress.ip_network(address)) for address in found]


def listing(networks: Iterable[str]) -> Dict[str, Any]:
    """
    Cloudflare's C{/ips} result for C{networks}: C{ipv4_cidrs},
    C{ipv6_cidrs} (sorted, each once) and an C{etag} that changes with them.
    """
    parsed = {ipaddress.ip_network(text, strict=False) for text in networks}
    v4 = [str(n) for n in sorted(n for n in parsed if n.version == 4)]
    v6 = [str(n) for n in sorted(n for n in parsed if n.version == 6)]
    etag = hashlib.sha256(json.dumps([v4, v6]).encode("ascii")).hexdigest()[:32]
    return {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "etag": etag}
