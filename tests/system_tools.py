"""System tools for the container and cluster tests: install with apt-get, or skip/fail.

These tests are heavy (a container build, a SLURM cluster), so outside CI they run only
when asked (``BIDS_QC_SYSTEM_TESTS=1``); under ``CI=true`` they always run, and a missing
tool is a failure, never a skip: a skip would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


def under_ci() -> bool:
    """Whether this is a CI run (``CI=true``), where these tests must not skip."""
    return os.environ.get("CI", "").lower() == "true"


def require_system_tests(what: str) -> None:
    """Skip ``what`` outside CI unless ``BIDS_QC_SYSTEM_TESTS=1`` asks for it."""
    if under_ci() or os.environ.get("BIDS_QC_SYSTEM_TESTS") == "1":
        return
    pytest.skip(f"{what} runs under CI=true, or locally with BIDS_QC_SYSTEM_TESTS=1 "
                "(needs root, apt-get and several minutes)")


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    if under_ci():
        pytest.fail(f"{reason} (under CI a skip is a failure)")
    pytest.skip(reason)


def apt_install(packages: list[str], commands: list[str]) -> float:
    """Install Debian ``packages`` unless every one of ``commands`` is on PATH.

    Returns the seconds it took (0 when nothing was needed); skips/fails with apt-get's
    complaint when a command is still missing afterwards.
    """
    if all(shutil.which(c) for c in commands):
        return 0.0
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        unavailable(f"{', '.join(commands)} missing and apt-get unusable (needs root)")
    started = time.perf_counter()
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # stale or missing package lists: update once, then retry
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        unavailable(f"apt-get install {' '.join(packages)} left {missing} missing: "
                    f"{(done.stderr or done.stdout)[-500:]}")
    return time.perf_counter() - started


def say(config, text: str) -> None:
    """A line on the terminal even when pytest captures output (timings, artefact paths)."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{text}")
