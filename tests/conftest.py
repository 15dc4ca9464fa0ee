"""Shared test setup: test helpers import by module name; CI refuses skipped tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from crosslevel.model import mlperf_tiny

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The real MLPerf Tiny models (../shared/models/mlperf-tiny, or $CROSSLEVEL_MODELS)."""
    return mlperf_tiny.models_dir()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """One intra-op thread: on 2 shared cores, torch's default threads thrash each other."""
    import torch

    torch.set_num_threads(1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every capability is installed, so a skipped test is a failure."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; CI must run every test")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
