"""The serving side: ONNX Runtime sessions per variant and switching without losing a
request.

``infer`` takes the current (variant, session) pair under a lock and runs outside it, so
a switch never waits for inference and never interrupts one: a request that started on
the old session finishes on it (the reference keeps the session alive even after it is
evicted), and every request is answered exactly once. Sessions need not all be resident:
``switch`` creates a missing one (its time counts in the switch time) and evicts others
while the resident memory exceeds ``memory_limit_bytes``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from crosslevel.control.variants import Variant
from crosslevel.runtime.ort import make_session, run_session


class Controller:
    def __init__(self, variants: Sequence[Variant], initial: str, preload: bool = True) -> None:
        self.variants = {v.name: v for v in variants}
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        if preload:
            for v in variants:
                self._sessions[v.name] = make_session(v.onnx_path.read_bytes())
        self.switch(initial)

    @property
    def current(self) -> str:
        return self._current[0]

    def resident_bytes(self) -> int:
        return sum(self.variants[n].memory_bytes for n in list(self._sessions))

    def switch(self, name: str, memory_limit_bytes: int | None = None) -> float:
        """Make ``name`` current; seconds taken (session creation included)."""
        start = time.perf_counter()
        session = self._sessions.get(name)
        if session is None:
            session = make_session(self.variants[name].onnx_path.read_bytes())
            self._sessions[name] = session
        with self._lock:
            self._current = (name, session)
        if memory_limit_bytes is not None:
            self.evict(memory_limit_bytes)
        return time.perf_counter() - start

    def evict(self, memory_limit_bytes: int) -> None:
        """Drop non-current sessions, largest first, until the resident memory fits."""
        current = self.current
        others = sorted((n for n in self._sessions if n != current),
                        key=lambda n: -self.variants[n].memory_bytes)  # fmt: skip
        for name in others:
            if self.resident_bytes() <= memory_limit_bytes:
                break
            del self._sessions[name]

    def infer(self, x: np.ndarray) -> tuple[str, list[np.ndarray]]:
        """Run one request on the current variant: (variant name, outputs)."""
        with self._lock:
            name, session = self._current
        return name, run_session(session, [x])
