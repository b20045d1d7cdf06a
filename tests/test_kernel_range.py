"""
A C{tcp/20000-29999} app (10,000 ports) on one socket through the kernel's
C{sk_lookup} steering, in a fresh network namespace (this machine's own may
have other programs on ports of the range; C{sk_lookup} attaches per
namespace): tests/netns_range.py runs twistd and its clients there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_kernel import require_kernel_filter

from conftest import IN_CI, require_program

HERE = os.path.dirname(os.path.abspath(__file__))


def test_ten_thousand_ports_on_one_socket_in_a_fresh_namespace() -> None:
    require_kernel_filter()
    unshare = require_program("unshare")
    ip = require_program("ip")
    script = os.path.join(HERE, "netns_range.py")
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", f'"{ip}" link set lo up && exec "{sys.executable}" "{script}"'],
        capture_output=True,
        text=True,
        timeout=150,
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        message = f"no new network namespace here: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, (lines[-1:] or [done.stderr.strip()[-800:]])[0]
    figures = json.loads(lines[-1])
    assert figures["descriptors"] < 50
    assert figures["ports_checked"] >= 60
    assert figures["refused_after_reload"] > 0 and figures["kept_after_reload"] >= 4
