"""
Run one fuzz target under atheris (coverage-guided, libFuzzer options):

    python tests/fuzz/run_atheris.py proxy_header -max_total_time=60 tests/fuzz/corpus/proxy_header

New inputs that reach new code are written to the first corpus directory
given, like any libFuzzer run; a crash leaves C{crash-<hash>} in the
current directory and exits non-zero.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["spectrum"]):
        import fuzztargets as targets

    name = sys.argv[1]
    target = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
