"""
How long an access decision takes with 50,000 rules, side by side with a
plain scan of the same rules.

    python bench/firewall_bench.py [--rules 50000] [--decisions 200000] [--seed 1]

Rules: IPv4 and IPv6 addresses, IPv4 and IPv6 ranges of every prefix length,
ASNs and countries, mixed globally and per app. Clients: addresses that hit
an address rule, that fall in a range, and that match nothing (the worst
case: every prefix length in use is probed). Each figure is the time of one
C{Firewall.decide} call (address parsing included), from batches timed with
perf_counter_ns; the target is under 20 microseconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import sys
import time
from typing import Callable, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spectrum.firewall import DuplicateRule, Firewall, make_rule
from spectrum.model import AccessRule

APPS = ("ssh", "rdp", "game", "mqtt", "db")
COUNTRIES = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]


def build_rules(count: int, rng: random.Random) -> List[AccessRule]:
    rules: List[AccessRule] = []
    seen = set()

    def add(target: str, value: object) -> None:
        app = rng.choice(APPS) if rng.random() < 0.1 else None
        rule = make_rule(rng.choice(("block", "block", "whitelist")), target, value, app=app)
        if rule.id in seen:
            return
        seen.add(rule.id)
        rules.append(rule)

    shares = [("ip", 0.5), ("ip6", 0.2), ("range4", 0.15), ("range6", 0.13), ("asn", 0.015), ("country", 0.005)]
    for kind, share in shares:
        target = len(rules) + int(count * share)
        while len(rules) < min(target, count):
            if kind == "ip":
                add("ip", str(ipaddress.IPv4Address(rng.getrandbits(32))))
            elif kind == "ip6":
                add("ip6", str(ipaddress.IPv6Address(rng.getrandbits(128))))
            elif kind == "range4":
                length = rng.randint(1, 31)
                add("ip_range", str(ipaddress.ip_network((rng.getrandbits(32), length), strict=False)))
            elif kind == "range6":
                length = rng.randint(1, 127)
                add("ip_range", str(ipaddress.ip_network((rng.getrandbits(128), length), strict=False)))
            elif kind == "asn":
                add("asn", rng.randint(1, 400000))
            else:
                add("country", rng.choice(COUNTRIES))
    while len(rules) < count:
        add("ip", str(ipaddress.IPv4Address(rng.getrandbits(32))))
    return rules[:count]


def clients(rules: List[AccessRule], rng: random.Random, n: int) -> List[Tuple[str, str, str, int]]:
    """
    (app, ip, country, asn) tuples: a third exact hits, a third inside
    ranges, a third random (mostly no match).
    """
    exact = [r.value for r in rules if r.target in ("ip", "ip6")]
    ranges = [ipaddress.ip_network(r.value) for r in rules if r.target == "ip_range"]
    result = []
    for i in range(n):
        if i % 3 == 0:
            ip = rng.choice(exact)
        elif i % 3 == 1:
            network = rng.choice(ranges)
            ip = str(network.network_address + rng.randrange(network.num_addresses))
        elif rng.random() < 0.5:
            ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        else:
            ip = str(ipaddress.IPv6Address(rng.getrandbits(128)))
        result.append((rng.choice(APPS), ip, rng.choice(COUNTRIES), rng.randint(1, 400000)))
    return result


def per_call(fn: Callable[[str, str, str, int], object], inputs, batch: int = 1000) -> List[float]:
    """
    Microseconds per call, one figure per batch.
    """
    figures = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        began = time.perf_counter_ns()
        for app, ip, country, asn in chunk:
            fn(app, ip, country, asn)
        figures.append((time.perf_counter_ns() - began) / len(chunk) / 1000)
    return figures


def scan(rules: List[AccessRule]) -> Callable[[str, str, str, int], object]:
    """
    The naive alternative: test every rule (precomputed networks).
    """
    compiled = []
    for rule in rules:
        if rule.target in ("ip", "ip6", "ip_range"):
            compiled.append((rule, ipaddress.ip_network(rule.value)))
        else:
            compiled.append((rule, None))

    def decide(app: str, ip: str, country: str, asn: int) -> object:
        address = ipaddress.ip_address(ip)
        best = None
        for rule, network in compiled:
            if rule.app not in (None, app):
                continue
            if network is not None:
                if network.version == address.version and address in network:
                    best = rule
            elif rule.target == "asn" and rule.value == f"AS{asn}" or rule.value == country:
                best = rule
        return best

    return decide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=50000)
    parser.add_argument("--decisions", type=int, default=200000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    began = time.perf_counter()
    rules = build_rules(args.rules, rng)
    built = time.perf_counter()
    firewall = Firewall(rules)
    indexed = time.perf_counter()
    inputs = clients(rules, rng, args.decisions)
    counts = {}
    for rule in rules:
        counts[rule.target] = counts.get(rule.target, 0) + 1
    print(f"rules: {len(firewall)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    print(f"index built in {(indexed - built) * 1000:.0f} ms (rules made in {(built - began) * 1000:.0f} ms)")

    # Rules added and removed at run time, as the admin API would.
    extras = [make_rule("block", "ip_range", f"198.51.{n // 256}.{n % 256}/32") for n in range(1000)]
    began = time.perf_counter_ns()
    for rule in extras:
        firewall.add(rule)
    for rule in extras:
        firewall.remove(rule.id)
    print(f"add + remove one rule at run time: {(time.perf_counter_ns() - began) / 1000 / len(extras):.1f} us")

    decide = firewall.decide
    per_call(decide, inputs[:5000])  # warm up
    figures = per_call(decide, inputs)
    worst_v6 = [("db", str(ipaddress.IPv6Address(rng.getrandbits(128) | (1 << 127))), "ZZ", 0)] * 20000
    worst = per_call(decide, worst_v6)
    blocked = sum(1 for app, ip, country, asn in inputs if not decide(app, ip, country, asn).allowed)
    print(f"decisions: {len(inputs)} mixed clients ({blocked} blocked)")
    print(
        f"  Firewall.decide   mean {statistics.fmean(figures):6.2f} us   "
        f"median batch {statistics.median(figures):6.2f} us   "
        f"p99 of batches {sorted(figures)[int(len(figures) * 0.99) - 1]:6.2f} us   "
        f"max batch {max(figures):6.2f} us"
    )
    print(f"  IPv6 clients matching nothing: mean {statistics.fmean(worst):6.2f} us")
    # The structure's worst case: a prefix of every length 1..128 around one
    # address, and a client that shares only its first 64 bits with it: the
    # 64 longer lengths listed for its chunk are probed before the /64 matches.
    center = rng.getrandbits(128) | 1
    nested = []
    for length in range(1, 129):
        network = ipaddress.ip_network((center, length), strict=False)
        try:
            nested.append(firewall.add(make_rule("block", "ip_range", str(network))))
        except DuplicateRule:
            pass
    probe = str(ipaddress.IPv6Address(center ^ (1 << 63)))
    adversarial = per_call(decide, [("db", probe, "ZZ", 0)] * 20000)
    for rule in nested:
        firewall.remove(rule.id)
    print(f"  adversarial (128 nested IPv6 prefixes, match at /64): mean {statistics.fmean(adversarial):6.2f} us")
    naive = per_call(scan(rules), inputs[:30], batch=10)
    print(f"  plain scan        mean {statistics.fmean(naive):9.2f} us  (the same rules, for comparison)")
    verdict = "PASS" if statistics.fmean(figures) < 20 and statistics.fmean(worst) < 20 else "FAIL"
    print(f"target: under 20 us per decision: {verdict}")


if __name__ == "__main__":
    main()
