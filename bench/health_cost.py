"""
What health checking costs: N origins probed every INTERVAL seconds with real
TCP connects against listeners in another process, measured as this
process's CPU time (user + system) over a stretch of wall-clock time.

    python bench/health_cost.py [--origins 1000] [--interval 1] [--seconds 20]

On loopback the kernel runs both ends of each TCP handshake (the listener's
SYN-ACK and accept queue included) in this process's system time, which an
origin on another host would pay itself; --instant measures the checker's
own share (timers, Deferreds, bookkeeping) with probes that pass at once.

Prints the figure and exits 1 when it is over --limit percent of one core
(5 by default). Run from the repository root (or with it on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LISTENERS = r"""
import selectors, socket, sys
count = int(sys.argv[1])
selector = selectors.DefaultSelector()
ports = []
for _ in range(count):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    s.setblocking(False)
    selector.register(s, selectors.EVENT_READ)
    ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)), flush=True)
while True:
    for key, _ in selector.select():
        try:
            while True:
                conn, _ = key.fileobj.accept()
                conn.close()
        except BlockingIOError:
            pass
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_split() -> tuple:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--origins", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--limit", type=float, default=5.0, help="percent of one core")
    parser.add_argument(
        "--instant",
        action="store_true",
        help="probes that pass at once without a socket: the checker's own cost, for comparison",
    )
    args = parser.parse_args()

    from twisted.internet import reactor

    from spectrum.balancer import Balancer
    from spectrum.health import HealthChecker
    from spectrum.model import Monitor, Origin, Pool

    listeners = subprocess.Popen(
        [sys.executable, "-c", LISTENERS, str(args.origins)], stdout=subprocess.PIPE, text=True
    )
    ports = [int(p) for p in listeners.stdout.readline().split()]
    monitor = Monitor(type="tcp", interval=args.interval, timeout=min(1.0, args.interval), retries=0)
    origins = tuple(Origin(name=f"o{i}", address="127.0.0.1", port=port) for i, port in enumerate(ports))
    pool = Pool(name="bench", origins=origins, monitor=monitor)
    instant = None
    if args.instant:
        from twisted.internet.defer import succeed

        def instant(reactor: object, origin: object, port: int, monitor: object) -> object:
            return succeed("instant")

    checker = HealthChecker(Balancer(pool), pool, 1, reactor=reactor, probe=instant)
    result = {}

    def probes() -> int:
        return sum(s["probes"] for s in checker.status())

    def begin() -> None:
        # After the first interval every origin is on its steady schedule.
        result["split"] = cpu_split()
        result["cpu"], result["wall"], result["probes"] = cpu_seconds(), time.monotonic(), probes()
        reactor.callLater(args.seconds, end)

    def end() -> None:
        result["cpu"] = cpu_seconds() - result["cpu"]
        user, system = cpu_split()
        result["split"] = (user - result["split"][0], system - result["split"][1])
        result["wall"] = time.monotonic() - result["wall"]
        result["probes"] = probes() - result["probes"]
        result["failed"] = [s for s in checker.status() if s["error"]]
        result["down"] = sum(1 for s in checker.status() if not s["healthy"])
        checker.stop()
        reactor.stop()

    checker.start()
    reactor.callLater(args.interval * 2, begin)
    reactor.run()
    listeners.kill()
    listeners.wait()

    share = 100.0 * result["cpu"] / result["wall"]
    print(
        f"health_cost: {args.origins} origins, {'instant' if args.instant else 'tcp'} probes"
        f" every {args.interval:g}s,"
        f" {result['wall']:.1f}s measured: {result['probes']} probes"
        f" ({result['probes'] / result['wall']:.0f}/s), {len(result['failed'])} origins with a failed probe,"
        f" {result['down']} down"
    )
    print(
        f"health_cost: CPU {result['cpu']:.2f}s = {share:.2f}% of one core"
        f" (user {result['split'][0]:.2f}s, system {result['split'][1]:.2f}s;"
        f" {1e6 * result['cpu'] / max(1, result['probes']):.0f} us per probe); limit {args.limit:g}%"
    )
    if result["failed"]:
        print("health_cost: a probe failed:", result["failed"][0]["error"])
        return 1
    return 0 if share < args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
