"""
What an operator installs: the distribution (C{spectrum-edge}, since
C{spectrum} on the package index is another project), its version, licence,
changelog and console script, and the systemd unit in C{contrib/systemd/},
checked by C{systemd-analyze verify} and run as the unit runs it.
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Tuple

import spectrum

from conftest import free_port, require_program
from procs import ROOT, NamedOrigin, environment, greeting, tcp_app, wait_for_port, write_config

UNIT = Path(ROOT, "contrib", "systemd", "spectrum.service")
#: Where the unit expects the install and the config (see its comments).
PREFIX = "/opt/spectrum/bin/"
CONFIG = "/etc/spectrum/spectrum.yaml"


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(Path(ROOT, "setup.cfg"))
    return parser


def test_distribution_name_version_and_console_script() -> None:
    cfg = setup_cfg()
    assert cfg["metadata"]["name"] == "spectrum-edge"
    assert cfg["metadata"]["version"] == "attr: spectrum.__version__"
    assert cfg["options.entry_points"]["console_scripts"].split() == ["spectrum", "=", "spectrum.cli:main"]
    # As installed (pip install -e or tox's install).
    dist = metadata.distribution("spectrum-edge")
    assert dist.version == spectrum.__version__
    (script,) = [e for e in dist.entry_points if e.group == "console_scripts"]
    assert (script.name, script.value) == ("spectrum", "spectrum.cli:main")
    installed = os.path.join(os.path.dirname(sys.executable), "spectrum")
    assert os.access(installed, os.X_OK), "reinstall (pip install -e '.[dev]') to get the spectrum command"
    done = subprocess.run(
        [installed, "--version"], env=environment(), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"spectrum {spectrum.__version__} (Twisted ")


def test_license_file_matches_setup_cfg() -> None:
    cfg = setup_cfg()
    assert cfg["metadata"]["license"] == "MIT"
    assert cfg["metadata"]["license_files"].split() == ["LICENSE"]
    text = Path(ROOT, "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ")
    # The MIT licence's grant and its disclaimer, as the SPDX text has them.
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_changelog_has_a_section_for_this_version() -> None:
    text = Path(ROOT, "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0].startswith(f"## {spectrum.__version__}"), headings


# the systemd unit -----------------------------------------------------------------


def unit_entries() -> List[Tuple[str, str, str]]:
    """
    (section, key, value) of every setting of the unit, in order (a key
    may be given more than once, as ExecReload is).
    """
    entries = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str, section: str = "Service") -> List[str]:
    return [v for s, k, v in unit_entries() if s == section and k == key]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Any) -> None:
    """
    The unit as shipped, with the install prefix pointed at this Python's
    scripts (verify checks that each command is executable).
    """
    analyze = require_program("systemd-analyze")
    bin_dir = os.path.dirname(sys.executable) + "/"
    unit = tmp_path / "spectrum.service"
    unit.write_text(UNIT.read_text().replace(PREFIX, bin_dir))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "spectrum.service" not in output, output


def test_the_unit_runs_in_the_foreground_reloads_on_sighup_and_drains_on_stop() -> None:
    values: Dict[str, List[str]] = {k: unit_values(k) for k in ("Type", "ExecStart", "KillSignal", "KillMode")}
    assert values["Type"] == ["simple"]
    (start,) = values["ExecStart"]
    argv = shlex.split(start)
    assert argv[0] == PREFIX + "twistd"
    assert "--nodaemon" in argv[: argv.index("spectrum")]
    assert argv[argv.index("--config") + 1] == CONFIG
    drain = float(argv[argv.index("--drain-timeout") + 1])
    assert unit_values("ExecStartPre") == [f"{PREFIX}spectrum check {CONFIG}"]
    assert unit_values("ExecReload") == [f"{PREFIX}spectrum check {CONFIG}", "/bin/kill -HUP $MAINPID"]
    assert values["KillSignal"] == ["SIGTERM"]
    # SIGTERM to twistd only: it drains, and passes SIGTERM on to its
    # workers, which get the drain timeout and 5 seconds more.
    assert values["KillMode"] == ["mixed"]
    (stop,) = unit_values("TimeoutStopSec")
    assert float(stop) > drain + 5
    capabilities = unit_values("AmbientCapabilities")[0].split()
    assert sorted(capabilities) == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
    assert sorted(unit_values("CapabilityBoundingSet")[0].split()) == sorted(capabilities)


def test_the_units_commands_start_reload_and_stop_spectrum(tmp_path: Any) -> None:
    """
    ExecStartPre, ExecStart, ExecReload and the stop signal, run as systemd
    would run them (with this install's prefix and a test config): the
    check passes, spectrum relays, a reload applies the changed file, and
    SIGTERM ends it well within TimeoutStopSec.
    """
    bin_dir = os.path.dirname(sys.executable) + "/"
    edge, second = free_port(), free_port()
    with NamedOrigin("one") as one, NamedOrigin("two") as two:
        config = write_config(tmp_path / "spectrum.json", {"apps": [tcp_app("a", edge, [one.port])]})

        def command(line: str, pid: int = 0) -> List[str]:
            line = line.replace(PREFIX, bin_dir).replace(CONFIG, config).replace("$MAINPID", str(pid))
            return shlex.split(line)

        def run(argv: List[str]) -> None:
            done = subprocess.run(argv, env=environment(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr

        for line in unit_values("ExecStartPre"):
            run(command(line))
        log_path = tmp_path / "journal.log"
        with open(log_path, "wb") as log:
            main = subprocess.Popen(
                command(unit_values("ExecStart")[0]),
                env=environment(),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(edge, process=main)
            assert greeting(edge) == b"one"
            assert not (tmp_path / "twistd.pid").exists()
            write_config(config, {"apps": [tcp_app("a", edge, [two.port]), tcp_app("b", second, [one.port])]})
            for line in unit_values("ExecReload"):
                run(command(line, main.pid))
            wait_for_port(second, process=main)
            assert greeting(edge) == b"two"
            # A bad file fails the reload at its check; nothing is signalled.
            write_config(config, {"apps": [tcp_app("a", 70000, [two.port])]})
            argv = command(unit_values("ExecReload")[0], main.pid)
            done = subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=60)
            assert done.returncode == 1
            assert done.stderr.endswith("apps[0].ports[0].destination_port: must be at most 65535, got 70000\n")
            stopping = time.monotonic()
            main.send_signal(getattr(signal, unit_values("KillSignal")[0]))
            status = main.wait(float(unit_values("TimeoutStopSec")[0]))
            assert status == -signal.SIGTERM
            assert time.monotonic() - stopping < 10
        finally:
            if main.poll() is None:
                main.kill()
                main.wait(5)
        log_text = log_path.read_text()
        assert log_text.count("reloaded") == 1, log_text
        assert "Traceback" not in log_text
        assert log_text.rstrip().endswith("Server Shut Down."), log_text
