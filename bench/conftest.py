"""Collects the op benchmarks' medians and writes the summary table at the end of the session."""
from __future__ import annotations

import os
import sys

import pytest

from bench_report import RESULTS  # noqa: F401  (HSC_BENCH_RESULTS moves it; bench_distributed writes there)


def machine() -> dict:
    """The machine (hsc.apps.machine_info) and the command that measured on it."""
    from hsc.apps import machine_info

    return {**machine_info(), "command": command()}


def command() -> str:
    """The command line, with the HSC_BENCH_* size settings that changed what was measured."""
    run = "python -m pytest " + " ".join(sys.argv[1:]) if "pytest" in sys.argv[0] else " ".join(sys.argv)
    sizes = [f"{k}={v}" for k, v in sorted(os.environ.items())
             if k.startswith("HSC_BENCH_") and k != "HSC_BENCH_RESULTS"]
    return " ".join(sizes + [run])


class Collector:
    """Benchmarks register (table, row key, method) -> seconds per call and per-row metadata."""

    def __init__(self):
        self.tables: dict[str, dict] = {}

    def add(self, table: str, key: tuple, method: str, seconds: float, **meta):
        row = self.tables.setdefault(table, {}).setdefault(key, {"key": key, "seconds": {}})
        row["seconds"][method] = seconds
        row.update(meta)


_collector = Collector()


@pytest.fixture(scope="session")
def collector() -> Collector:
    return _collector


def pytest_terminal_summary(terminalreporter):
    from bench_report import REPORTERS

    info = machine()
    info["gemm_gflops"] = {r["dtype"]: r["gflops"] for r in _collector.tables.get("gemm", {}).values()}
    for table, rows in _collector.tables.items():
        if table in REPORTERS and rows:
            text = REPORTERS[table](list(rows.values()), info)
            terminalreporter.write_line("")
            terminalreporter.write_line(text)
