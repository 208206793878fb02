"""One shape for every benchmark figure, so `bench/run` can collect and judge them."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    limit: float | None = None  # the raw figure this is compared with, measured in the same run
    target: float | None = None  # the target (a ratio when limit is set, else in `unit`)
    target_kind: Literal["min", "max"] | None = None

    @property
    def ratio(self) -> float | None:
        return None if not self.limit else self.value / self.limit

    def holds(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.limit else self.value
        assert measured is not None
        return measured >= self.target if self.target_kind == "min" else measured <= self.target

    def line(self) -> str:
        text = f"{self.name:<48} {self.value:>12,.1f} {self.unit}"
        if self.limit:
            text += f"   limit {self.limit:,.1f}   ratio {self.ratio:.2f}"
        if self.target is not None:
            sign = ">=" if self.target_kind == "min" else "<="
            text += f"   target {sign} {self.target:g}   {'OK' if self.holds() else 'MISSED'}"
        return text

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["holds"] = self.holds()
        return d


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def emit(figures: list[Figure], json_path: str | None = None) -> None:
    print(f"# machine: {machine()}")
    for f in figures:
        print(f.line())
    if json_path:
        with open(json_path, "w") as fh:
            json.dump([f.as_dict() for f in figures], fh, indent=2)
    sys.stdout.flush()
