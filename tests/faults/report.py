"""
Render the fault tests' results (JSON lines written by C{tests/faults}) as
the Markdown table of C{docs/RELIABILITY.md}.

    SPECTRUM_FAULT_RESULTS=build/faults.jsonl python -m pytest tests/faults
    python tests/faults/report.py build/faults.jsonl > table.md

With C{--update docs/RELIABILITY.md}, the table between the
C{<!-- faults:begin -->} and C{<!-- faults:end -->} markers is replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

BEGIN = "<!-- faults:begin -->"
END = "<!-- faults:end -->"


def load(path: str) -> List[Dict[str, Any]]:
    """
    The results, the last run of each test only, in file order.
    """
    latest: Dict[str, Dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                result = json.loads(line)
                latest.pop(result["test"], None)
                latest[result["test"]] = result
    return list(latest.values())


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| Fault | Load held | Checked | Result | Time |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        checked = "; ".join(r["checked"]) or "-"
        lines.append(
            f"| {cell(r['fault'] or r['test'])} | {cell(r['load'])} | {cell(checked)} "
            f"| {'pass' if r['result'] == 'passed' else '**' + r['result'].upper() + '**'} | {r['seconds']} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--update", metavar="MARKDOWN")
    options = parser.parse_args(argv)
    rendered = table(load(options.results))
    if not options.update:
        sys.stdout.write(rendered)
        return 0
    with open(options.update) as f:
        text = f.read()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    with open(options.update, "w") as f:
        f.write(f"{head}{BEGIN}\n{rendered}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
