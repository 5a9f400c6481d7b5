"""Where the suite's minutes go: wall time per test file, printed at the end of every run.

A session fixture's setup (a control plane, a real node) counts towards the file of the
first test that asks for it.
"""

from __future__ import annotations

from collections import defaultdict

_PER_FILE: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    _PER_FILE[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _PER_FILE:
        return
    total = sum(_PER_FILE.values())
    terminalreporter.write_sep("=", f"time per test file (setup, call, teardown): {total / 60:.1f} min in all")
    for name, seconds in sorted(_PER_FILE.items(), key=lambda kv: -kv[1])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f}s {seconds / total:6.1%}  {name}")
