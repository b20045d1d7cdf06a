"""
C{spectrum firewall ufw|nftables|iptables [--port P]}: rules for an
origin host that admit only the addresses spectrum connects from (the
admin API's C{/ips}, every node of a cluster), as the seed locks its origin
down to Cloudflare's ranges with UFW.

With C{--port}, only that port (TCP and UDP) is closed to other sources;
without it, every port is, loopback and connections already established
excepted.
"""

from __future__ import annotations

from typing import List, Optional

from spectrum.cli.client import AdminClient, CommandError

#: The nftables table and iptables chain the rules live in.
NAME = "spectrum_origin"
CHAIN = "SPECTRUM-ORIGIN"


def firewall(client: AdminClient, kind: str, port: Optional[int]) -> str:
    listing = client.call("GET", "/ips") or {}
    v4: List[str] = list(listing.get("ipv4_cidrs") or [])
    v6: List[str] = list(listing.get("ipv6_cidrs") or [])
    if not v4 and not v6:
        raise CommandError(f"{client.url} lists no egress addresses (GET /client/v4/ips); set egress.addresses")
    where = f"port {port}" if port is not None else "every port"
    header = (
        f"# spectrum firewall {kind}: {where} admits only spectrum at {client.url} (etag {listing.get('etag', '?')})\n"
    )
    render = {"ufw": ufw_rules, "nftables": nftables_rules, "iptables": iptables_rules}[kind]
    return header + render(v4, v6, port)


def ufw_rules(v4: List[str], v6: List[str], port: Optional[int]) -> str:
    lines = []
    for network in v4 + v6:
        if port is None:
            lines.append(f"ufw allow from {network}")
        else:
            lines.append(f"ufw allow from {network} to any port {port}")
    lines.append(f"ufw deny {port}" if port is not None else "ufw default deny incoming")
    lines.append("ufw --force enable")
    return "\n".join(lines) + "\n"


def nftables_rules(v4: List[str], v6: List[str], port: Optional[int]) -> str:
    match = f"meta l4proto {{ tcp, udp }} th dport {port} " if port is not None else ""
    lines = [f"table inet {NAME}", f"delete table inet {NAME}", f"table inet {NAME} {{"]
    for name, kind, networks in (("edge4", "ipv4_addr", v4), ("edge6", "ipv6_addr", v6)):
        lines.append(f"\tset {name} {{")
        lines.append(f"\t\ttype {kind}; flags interval;")
        if networks:
            lines.append(f"\t\telements = {{ {', '.join(networks)} }}")
        lines.append("\t}")
    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    if port is None:
        # Every port: loopback, answers and ICMP (IPv6 needs its neighbour
        # discovery) stay open.
        lines += [
            '\t\tiif "lo" accept',
            "\t\tct state established,related accept",
            "\t\tmeta l4proto { icmp, ipv6-icmp } accept",
        ]
    lines += [
        f"\t\t{match}ip saddr @edge4 accept",
        f"\t\t{match}ip6 saddr @edge6 accept",
        f"\t\t{match}drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def iptables_rules(v4: List[str], v6: List[str], port: Optional[int]) -> str:
    lines: List[str] = []
    for command, networks in (("iptables", v4), ("ip6tables", v6)):
        lines += [
            f"{command} -N {CHAIN} 2>/dev/null || {command} -F {CHAIN}",
            *(f"{command} -A {CHAIN} -s {network} -j ACCEPT" for network in networks),
            f"{command} -A {CHAIN} -j DROP",
        ]
        if port is None:
            icmp = "icmp" if command == "iptables" else "ipv6-icmp"
            # Inserted in this order, they end up first: loopback, answers, ICMP.
            for rule in (f"-j {CHAIN}", f"-p {icmp} -j ACCEPT", "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                         "-i lo -j ACCEPT"):  # fmt: skip
                lines.append(f"{command} -C INPUT {rule} 2>/dev/null || {command} -I INPUT {rule}")
        else:
            for protocol in ("tcp", "udp"):
                jump = f"INPUT -p {protocol} --dport {port} -j {CHAIN}"
                lines.append(f"{command} -C {jump} 2>/dev/null || {command} -I {jump}")
    return "\n".join(lines) + "\n"
