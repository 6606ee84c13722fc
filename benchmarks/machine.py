"""What a result was measured on: date, CPUs, CPU model, memory, load, kernel, git commit."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def _mem_total_gib() -> float | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return round(int(match.group(1)) / 1024 / 1024, 1) if match else None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def machine_info() -> dict:
    """The facts a reader needs to compare this run with another one."""
    try:
        nproc = len(os.sched_getaffinity(0))  # what `nproc` prints
    except AttributeError:
        nproc = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "loadavg_at_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def finish(machine: dict) -> None:
    """Record the load at the end: a busy shared machine shows in it."""
    machine["loadavg_at_end"] = list(os.getloadavg())


def describe(machine: dict, versions: dict) -> str:
    """One line: 'on 2 CPUs (model), 23.5 GiB, PostgreSQL 15.x, PgBouncer 1.18, commit …'."""
    commit = machine.get("git_commit") or "unknown"
    if machine.get("git_dirty"):
        commit += " (with uncommitted changes)"
    load = f"load {machine['loadavg_at_start'][0]:.2f} at start"
    if machine.get("loadavg_at_end"):
        load += f", {machine['loadavg_at_end'][0]:.2f} at end"
    return (f"{machine['date']}, {machine['nproc']} CPUs ({machine['cpu_model']}), "
            f"{machine.get('mem_total_gib')} GiB RAM, {load}; "
            f"{versions.get('postgresql', '?')}; {versions.get('pgbouncer', '?')}; "
            f"Python {versions.get('python', '?')}; tenantgate commit {commit}")
