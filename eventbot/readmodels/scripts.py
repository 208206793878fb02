"""The read models' Lua scripts, loaded from this package (same EVALSHA/NOSCRIPT handling as the core's)."""

from __future__ import annotations

import hashlib
from importlib import resources

from eventbot.scripts import LuaScript


class ReadModelScript(LuaScript):
    def __init__(self, name: str) -> None:  # noqa: D107 - only the source location differs
        self.source = resources.files("eventbot.readmodels").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
