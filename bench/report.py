"""
The benchmark's report: cells, the machine's facts, the Markdown table and
its place in bench/RESULTS.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from typing import Dict, List, Sequence

from benchkit import ROOT, which
from loads import Options, Scenario
from peers import Peer


def fmt_cell(values: List[float], pattern: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return pattern.format(med)
    return f"{pattern.format(med)} ({pattern.format(min(values))}-{pattern.format(max(values))})"


def machine_facts() -> List[str]:
    def first(cmd: List[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"

    def matching(cmd: List[str], start: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (done.stdout + done.stderr).splitlines()
        return next((line.strip() for line in lines if line.startswith(start)), "?")

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        "python": sys.version.split()[0],
        "twisted": first([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "haproxy": first(["haproxy", "-v"]) if which("haproxy") else "missing",
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        if which("nginx")
        else "missing",
        "socat": matching(["socat", "-V"], "socat version") if which("socat") else "missing",
        "stunnel": matching(["stunnel4", "-version"], "stunnel ") if which("stunnel4") else "missing",
        "iperf3": first(["iperf3", "-v"]) if which("iperf3") else "missing",
        "wrk": first(["wrk", "-v"]) if which("wrk") else "missing",
        "openssl": first(["openssl", "version"]) if which("openssl") else "missing",
    }
    git = first(["git", "-C", ROOT, "log", "-1", "--format=%h %s"])
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"spectrum commit: {git}",
        f"nproc: {os.cpu_count()}; CPU: {cpu}; kernel: {platform.release()}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ] + [f"{k}: {v}" for k, v in versions.items()]


RATIO_BASE = {"pps": "nginx", "loss": "nginx"}
LOWER_IS_BETTER = {"p50", "p99", "loss", "kib"}


def render(scenarios: Sequence[Scenario], peers: Sequence[Peer], figures: Dict, notes: Dict, runs: int) -> str:
    # A ratio column for spectrum and for each other runtime of it.
    ours_names = [n for n in ("spectrum", "spectrum-pypy") if n in {p.name for p in peers}] or ["spectrum"]
    header = ["figure"] + [p.name for p in peers] + [f"{n} vs" for n in ours_names]
    rows = [header]
    for scenario in scenarios:
        for key, label, pattern in scenario.metrics:
            row = [label]
            for peer in peers:
                cell = (scenario.key, peer.name)
                got = figures.get(cell, {})
                values = got.get(key, [])
                if values:
                    text = fmt_cell(values, pattern)
                    if got.get("failed"):
                        text += f" [{len(got['failed'])} failed]"
                    if got.get("errors"):
                        text += " [errors]"
                elif cell in notes:
                    text = notes[cell]
                elif got.get("failed"):
                    text = "failed"
                else:
                    text = "-"
                row.append(text)
            base = RATIO_BASE.get(key, "haproxy")
            for name in ours_names:
                ours = figures.get((scenario.key, name), {}).get(key)
                theirs = figures.get((scenario.key, base), {}).get(key)
                if ours and theirs and statistics.median(theirs) > 0:
                    ratio = statistics.median(ours) / statistics.median(theirs)
                    row.append(f"{ratio:.2f}x {base}")
                else:
                    row.append("")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append("")
    out.append(f"Median of {runs} run(s), (min-max) where more than one. Lower is better for latency, loss, memory.")
    return "\n".join(out)


BEGIN, END = "<!-- bench/run.py output: begin -->", "<!-- bench/run.py output: end -->"


def save_results(path: str, generated: str) -> None:
    """
    Write C{generated} into C{path} between the markers, keeping whatever
    else the file says (the analysis written by hand around it).
    """
    block = f"{BEGIN}\n{generated}\n{END}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = "# Benchmark results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def results_markdown(command: str, table: str, facts: List[str], missing: List[str], runs: int, opts: Options) -> str:
    # Other work: the load before the first run (the 15-minute figure at
    # the end is mostly the benchmark's own load generators).
    start = [f for f in facts if f.startswith("load average at start: ")]
    before = float(start[0].split(": ")[1].split()[0]) if start else os.getloadavg()[0]
    loaded = before > 0.75 * (os.cpu_count() or 1)
    parts = [
        "Made with:",
        "",
        f"    {command}",
        "",
        f"({runs} run(s) per figure, {opts.duration} s per load test, {opts.idle_connections} idle connections.)",
        "",
        "## Machine",
        "",
    ]
    parts += [f"- {fact}" for fact in facts]
    if loaded:
        parts += [
            "",
            "The machine was loaded by other work while these figures were taken (see the load",
            "averages): absolute figures are noisy; compare columns within this table.",
        ]
    if missing:
        parts += ["", "Missing:"] + [f"- {m}" for m in missing]
    parts += ["", "## Figures", "", table, ""]
    return "\n".join(parts)
