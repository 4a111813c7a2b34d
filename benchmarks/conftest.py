"""Shared fixtures of the pytest-benchmark suite (``tox -e bench``); not part of the tests.

Every benchmark runs on ``LVM_BENCH_THREADS`` torch threads (default 1), with temporaries kept on
the heap, as the sweep times its cells.
"""

from __future__ import annotations

import os

import pytest

from lvm.runtime import keep_temporaries_on_heap, set_torch_threads

THREADS = int(os.environ.get("LVM_BENCH_THREADS", "1"))


@pytest.fixture(autouse=True)
def _threads():
    keep_temporaries_on_heap()  # as the sweep times its cells
    with set_torch_threads(THREADS):
        yield
