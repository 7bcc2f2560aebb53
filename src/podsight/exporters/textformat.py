"""Prometheus text exposition (format 0.0.4), written directly.

A scrape of a busy node has tens of thousands of samples; building a
prometheus_client ``Metric`` object per sample costs more than reading the
kernel maps.  Here a sample is one f-string, and the rendered label set of a
workload is cached across scrapes (label tuples are themselves cached by the
labeler, so the same tuple object comes back every scrape).  Pure; no I/O.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["CONTENT_TYPE", "LabelCache", "Writer", "escape"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _num(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class LabelCache:
    """``a="x",b="y"`` for a tuple of label values, reused across scrapes."""

    MAX = 200_000  # bounded: cleared when label churn has filled it

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self._rendered: dict[tuple, str] = {}

    def __call__(self, values: tuple) -> str:
        s = self._rendered.get(values)
        if s is None:
            s = ",".join(f'{n}="{escape(str(v))}"' for n, v in zip(self.names, values))
            if len(self._rendered) >= self.MAX:
                self._rendered.clear()
            self._rendered[values] = s
        return s


class Writer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """HELP and TYPE; counters are named without ``_total`` here, as in OpenMetrics."""
        full = f"{name}_total" if kind == "counter" else name
        self.parts.append(f"# HELP {full} {help_text}\n# TYPE {full} {kind}\n")

    def sample(self, name: str, labels: str, value: float | int) -> None:
        self.parts.append(f"{name}{{{labels}}} {_num(value)}\n" if labels else f"{name} {_num(value)}\n")

    def samples(self, name: str, rows: Iterable[tuple[str, float | int]]) -> None:
        self.parts.extend(f"{name}{{{labels}}} {_num(v)}\n" for labels, v in rows)

    def text(self) -> str:
        return "".join(self.parts)
