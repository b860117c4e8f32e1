"""Throughput lines for long preprocessing runs: documents/s, MB/s, tokens/s and ETA."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def format_duration(seconds: float) -> str:
    """H:MM:SS (hours unbounded), for ETAs and elapsed times."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Accumulates counts and prints one line every `interval` seconds (0: never)."""

    total_input_bytes: int
    total_shards: int
    interval: float = 10.0

    def __post_init__(self) -> None:
        self.start = self._last_print = time.monotonic()
        self.documents = self.tokens = self.input_bytes = self.position = 0
        self.shards_done = 0

    def update(self, documents: int, tokens: int, input_bytes: int, position: int) -> None:
        """Add counts; `position` is compressed input bytes consumed (drives the ETA)."""
        self.documents += documents
        self.tokens += tokens
        self.input_bytes += input_bytes
        self.position += position
        now = time.monotonic()
        if self.interval and now - self._last_print >= self.interval:
            self._last_print = now
            print(self.line(), file=sys.stderr, flush=True)

    def rates(self) -> tuple[float, float, float]:
        """(documents/s, bytes/s, tokens/s) since the start."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return self.documents / elapsed, self.input_bytes / elapsed, self.tokens / elapsed

    def line(self) -> str:
        docs_s, bytes_s, tokens_s = self.rates()
        elapsed = time.monotonic() - self.start
        done = self.position / self.total_input_bytes if self.total_input_bytes else 1.0
        eta = format_duration(elapsed * (1 - done) / done) if done > 0 else "?"
        return (
            f"progress: {self.shards_done}/{self.total_shards} shards {100 * done:.1f}% | "
            f"{_si(self.documents)} docs {_si(docs_s)}/s | {bytes_s / 1e6:.1f} MB/s | "
            f"{_si(self.tokens)} tokens {_si(tokens_s)}/s | ETA {eta}"
        )
