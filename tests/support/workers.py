"""How the suite splits across pytest-xdist workers (`make test` runs two, `--dist loadfile`).

Each test file is one unit of work, so a module's fixtures and its tests' order stay as
they are in a single process. The real-node files share one unit: there is one real node
per machine (a fixed bridge, ports and kubelet paths), held by a session fixture, so a
second worker asking for it would wait on its lock until the first worker's session
ended. That unit is the longest, so it goes first; the other files follow in collection
order, each to whichever worker is free.

The controller that hands out the units sees node ids only, not marks, so the real-node
files are listed here by name, and collection fails if a file marked ``realnode`` is
missing from the list. (xdist's own ``--dist loadgroup`` would take the grouping from
``xdist_group`` marks, but with pytest 9 it silently stops grouping: pytest-xdist#1386.)

Without xdist (``-p no:xdist``, or ``-n 0``) only the order changes: real-node files first.
"""

from __future__ import annotations

from typing import Any

import pytest

REALNODE_UNIT = "realnode"
#: The files whose tests use the machine's one real node (marked ``realnode``).
REALNODE_FILES = frozenset({
    "tests/test_prometheus_operator.py",
    "tests/test_realnode.py",
    "tests/test_realnode_networkpolicy.py",
})


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def unit_of(nodeid: str) -> str:
    """The work unit a test belongs to: the real node's, or its own file's."""
    file = file_of(nodeid)
    return REALNODE_UNIT if file in REALNODE_FILES else file


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduler(), "kubescribe-units")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unlisted = sorted({file_of(item.nodeid) for item in items
                       if item.get_closest_marker("realnode") is not None
                       and file_of(item.nodeid) not in REALNODE_FILES})
    if unlisted:
        raise pytest.UsageError(
            f"{', '.join(unlisted)} uses the real node: add it to REALNODE_FILES in tests/support/workers.py")
    # Stable: the real node's files keep their order, and so does every other file.
    items.sort(key=lambda item: unit_of(item.nodeid) != REALNODE_UNIT)


class _Scheduler:
    """xdist's file scheduler, with the real-node files as one unit and no reordering."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class Units(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return unit_of(nodeid)

        # Keep the collection order (the real node first) instead of the largest file first.
        config.option.loadscopereorder = False
        return Units(config, log)
