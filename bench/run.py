#!/usr/bin/env python3
"""
Benchmark spectrum against its peers, side by side, in one invocation.

    python bench/run.py                 # every scenario, 3 runs each
    python bench/run.py --quick         # 1 run, shorter tests, 2,000 idle conns
    python bench/run.py --only bulk1,rps --runs 5
    python bench/run.py --save bench/RESULTS.md

Every proxy runs as its own process with a generated configuration in a
temporary directory, on free loopback ports: a direct connection (the
limit), spectrum (the real C{python -m twisted spectrum}), HAProxy (one
thread), nginx stream (one worker), socat, stunnel (TLS only) and Twisted's
own portforward.  Origins and load generators are real programs: iperf3, wrk
against an nginx origin, C{openssl s_time}, and a small C program (hold.c,
compiled here with gcc) that holds idle connections.  This script only
starts things, waits and parses their output; nothing on the data path is
Python except the proxies under test.

Each figure is the median of --runs runs, with the spread (min-max).  Runs
are interleaved across proxies so that background load hits all of them
alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from benchkit import PACKAGES, NotApplicable, Origin, Workdir, nofile_limit, which
from loads import PEERS, SCENARIOS, SKIP, Options, Scenario
from peers import Direct, Peer, PortForward, Running, Spectrum
from report import machine_facts, render, results_markdown, save_results


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    # SIGTERM (and SIGINT, which a background shell job ignores) stop the
    # peers and print what was measured so far.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 2 s tests, 2,000 idle connections")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per load test (default 3; --quick 2)")
    parser.add_argument("--idle-connections", type=int, help="default 10000; --quick 2000")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(s.key for s in SCENARIOS))
    parser.add_argument("--peers", help="comma-separated proxies: " + ",".join(p.name for p in PEERS))
    parser.add_argument("--save", metavar="FILE", help="also write the table, command and machine facts here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy spectrum and portforward during each run, into DIR")
    args = parser.parse_args(argv)

    opts = Options()
    runs = args.runs or (1 if args.quick else 3)
    opts.duration = args.duration or (2 if args.quick else 3)
    opts.idle_connections = args.idle_connections or (2000 if args.quick else 10000)
    if args.profile:
        if not which("py-spy"):
            parser.error("--profile needs py-spy (pip install py-spy)")
        os.makedirs(args.profile, exist_ok=True)
        opts.profile = args.profile
    scenarios = SCENARIOS
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {s.key for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.key in wanted]
    peers = PEERS
    if args.peers:
        names = args.peers.split(",")
        unknown = set(names) - {p.name for p in PEERS}
        if unknown:
            parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
        peers = [p for p in PEERS if p.name in names]

    # 10,000 idle connections are 20,000 descriptors in a proxy.
    want = max(65536, 2 * opts.idle_connections + 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = nofile_limit()
    if 2 * opts.idle_connections + 200 > limit:
        # A proxy holds two descriptors per relayed connection.
        opts.idle_connections = (limit - 200) // 2
        print(
            f"note: the open files limit is {limit} and cannot be raised here; "
            f"idle memory uses {opts.idle_connections} connections",
            file=sys.stderr,
        )

    missing_tools = sorted({t for s in scenarios for t in s.needs if not which(t)})
    missing_peers = {p.name: p.missing() for p in peers if p.missing()}
    lines = []
    for tool in missing_tools:
        lines.append(f"missing load generator/origin: {tool} (Debian: apt-get install {PACKAGES.get(tool, tool)})")
    for name, progs in missing_peers.items():
        lines.append(
            f"missing peer: {name} needs {', '.join(progs)} (Debian: apt-get install "
            f"{' '.join(PACKAGES.get(p, p) for p in progs if p in PACKAGES) or 'libnginx-mod-stream'})"
        )
    for line in lines:
        print(line, file=sys.stderr)

    facts = machine_facts()
    work = Workdir(args.keep)
    # figures[(scenario, peer)][metric] = [values]; notes[(scenario, peer)] = why no figure
    figures: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    notes: Dict[Tuple[str, str], str] = {}
    try:
        work.prepare()
        for scenario in scenarios:
            lacking = [t for t in scenario.needs if not which(t)]
            if lacking:
                for peer in peers:
                    notes[(scenario.key, peer.name)] = f"needs {', '.join(lacking)}"
                continue
            print(f"== {scenario.title}", file=sys.stderr, flush=True)
            try:
                run_scenario(scenario, peers, runs, opts, work, figures, notes)
            except RuntimeError as e:
                # The origin would not start: this scenario's cells say so,
                # the others are still measured.
                print(f"  {scenario.key}: {e}", file=sys.stderr, flush=True)
                for peer in peers:
                    notes.setdefault((scenario.key, peer.name), "origin failed")
    except KeyboardInterrupt:
        print("interrupted; partial table follows", file=sys.stderr)
    finally:
        work.cleanup()

    table = render(scenarios, peers, figures, notes, runs)
    print(table)
    if args.save:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        command = "python bench/run.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
        for name in ("SPECTRUM_BENCH_BASELINE", "SPECTRUM_BENCH_PYPY"):
            if os.environ.get(name):
                command = f"{name}={shlex.quote(os.environ[name])} {command}"
        facts.append(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        save_results(args.save, results_markdown(command, table, facts, lines, runs, opts))
        print(f"saved to {args.save}", file=sys.stderr)
    return 0


def start_origin(scenario: Scenario, work: Workdir, tries: int = 3) -> Origin:
    """
    C{scenario}'s origin, on fresh ports each try: a port free a moment ago
    may be taken by other work on the machine before the origin binds it.
    """
    for attempt in range(tries):
        try:
            return scenario.origin(work)
        except RuntimeError as e:
            if attempt == tries - 1:
                raise
            print(f"  origin: {e}; again on other ports", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run_scenario(
    scenario: Scenario, peers: Sequence[Peer], runs: int, opts: Options, work: Workdir, figures: Dict, notes: Dict
) -> None:
    # Fresh scenarios (memory) get a new origin and proxy for every run.
    origin = None if scenario.fresh else start_origin(scenario, work)
    running: Dict[str, Running] = {}
    live: List[Peer] = []
    try:
        for peer in peers:
            cell = (scenario.key, peer.name)
            if peer.missing():
                notes[cell] = "missing"
                continue
            if cell in SKIP:
                notes[cell] = f"n/a ({SKIP[cell]})"
                continue
            if scenario.kind not in peer.kinds:
                notes[cell] = "n/a"
                continue
            if scenario.key == "idle_mem" and isinstance(peer, Direct):
                notes[cell] = "n/a"
                continue
            if not scenario.fresh:
                try:
                    running[peer.name] = peer.start(scenario.kind, origin, work, peers.index(peer), scenario.cores)
                    if getattr(peer, "warmup", False):
                        scenario.measure(running[peer.name], origin, work, opts)
                        print(f"  {peer.name}: warmed up (one unrecorded run)", file=sys.stderr, flush=True)
                except NotApplicable as e:
                    notes[cell] = f"n/a ({e.short})"
                    if e.detail:
                        print(f"  {peer.name}: n/a: {e.detail}", file=sys.stderr)
                    continue
                except Exception as e:
                    notes[cell] = "failed to start"
                    print(f"  {peer.name}: {e}", file=sys.stderr)
                    continue
            live.append(peer)
        # Interleave: run 1 of every proxy, then run 2, ...
        for run in range(runs):
            for peer in live:
                cell = (scenario.key, peer.name)
                if cell in notes:
                    continue
                proxy = running.get(peer.name)
                try:
                    if scenario.fresh:
                        here = start_origin(scenario, work)
                        try:
                            proxy = peer.start(scenario.kind, here, work, peers.index(peer), scenario.cores)
                            try:
                                result = scenario.measure(proxy, here, work, opts)
                            finally:
                                proxy.stop()
                        finally:
                            here.stop()
                    elif opts.profile and isinstance(peer, (Spectrum, PortForward)):
                        result = profiled(scenario, peer, run, proxy, origin, work, opts)
                    else:
                        result = scenario.measure(proxy, origin, work, opts)
                except NotApplicable as e:
                    notes[cell] = f"n/a ({e.short})"
                    continue
                except Exception as e:
                    print(f"  {peer.name} run {run + 1}: {e}", file=sys.stderr, flush=True)
                    figures.setdefault(cell, {}).setdefault("failed", []).append(1)
                    continue
                shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items())
                print(f"  {peer.name} run {run + 1}: {shown}", file=sys.stderr, flush=True)
                for key, value in result.items():
                    figures.setdefault(cell, {}).setdefault(key, []).append(value)
                if not scenario.fresh and proxy and any(p.poll() is not None for p in proxy.procs):
                    notes[cell] = "proxy died"
    finally:
        for proxy in running.values():
            proxy.stop()
        if origin is not None:
            origin.stop()


def profiled(
    scenario: Scenario, peer: Peer, run: int, proxy: Running, origin: Origin, work: Workdir, opts: Options
) -> Dict[str, float]:
    """
    C{scenario.measure}, with py-spy sampling spectrum meanwhile: a flame
    graph (.svg) and collapsed stacks (.txt, for grep and sort).
    """
    assert opts.profile
    stem = os.path.join(opts.profile, f"{scenario.key}-{peer.name}-{run + 1}")
    spies = [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "--rate",
                "400",
                "--pid",
                str(proxy.procs[0].pid),
                "--format",
                fmt,
                "-o",
                f"{stem}.{ext}",
                "-d",
                str(opts.duration + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
    ]
    time.sleep(0.5)
    try:
        return scenario.measure(proxy, origin, work, opts)
    finally:
        for spy in spies:
            spy.wait(30)


#: the peer each ratio compares spectrum with, per figure


if __name__ == "__main__":
    sys.exit(main())
