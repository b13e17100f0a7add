"""Stage lines with elapsed time: live on a terminal, plain lines elsewhere.

``Progress(msg)`` starts a stage line ``[  12.3s] msg``. On a TTY the line keeps moving: a
background thread rewrites it every ``interval`` seconds with the stage's own elapsed
time (``... (4.1s)``), so a long stage (distillation, an emit) visibly runs; ``detail``
appends a sub-step (``step 40/200``). Not on a TTY (CI logs, pipes) every stage is one
plain line and details are not printed. ``close()`` ends the live line; call it before
printing anything else.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
    """Callable stage reporter (see the module docstring)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None,
                 interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.start = time.perf_counter()
        self.interval = interval
        self._lock = threading.Lock()
        self._line: str | None = None
        self._stage_start = self.start
        self._detail = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, msg: str) -> None:
        with self._lock:
            self._end_line()
            now = time.perf_counter()
            self._line, self._stage_start, self._detail = (
                f"[{now - self.start:6.1f}s] {msg}", now, "")
            if self.live:
                self._draw()
                self._ensure_thread()
            else:
                print(self._line, file=self.stream, flush=True)
                self._line = None

    def detail(self, text: str) -> None:
        """A sub-step of the current stage (shown live on a terminal only)."""
        with self._lock:
            self._detail = text
            if self.live and self._line is not None:
                self._draw()

    def close(self) -> None:
        """End the live line and stop the ticker."""
        self._stop.set()
        with self._lock:
            self._end_line()

    # --- terminal drawing (lock held) ---------------------------------------------------
    def _draw(self) -> None:
        took = time.perf_counter() - self._stage_start
        extra = f" {self._detail}" if self._detail else ""
        self.stream.write(f"\r\x1b[2K{self._line}{extra} ({took:.1f}s)")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._line is not None and self.live:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        self._line = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._line is not None:
                    self._draw()
