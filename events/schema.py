"""JSON Schema of every event type, generated from the Structs in this package."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson

from events.base import Event


def schema_files(types: tuple[type[Event], ...]) -> dict[str, bytes]:
    """File name -> JSON Schema bytes, one file per type and version."""
    files: dict[str, bytes] = {}
    for cls in types:
        schema = msgspec.json.schema(cls)
        schema["title"] = cls.type_name()
        schema["x-eventbot"] = {"type": cls.type_name(), "version": cls.version, "family": cls.family}
        files[f"{cls.type_name()}.v{cls.version}.json"] = orjson.dumps(
            schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
        )
    return files


def write_schemas(directory: Path, types: tuple[type[Event], ...]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = schema_files(types)
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, body in wanted.items():
        (directory / name).write_bytes(body)
    return sorted(wanted)


def check_schemas(directory: Path, types: tuple[type[Event], ...]) -> list[str]:
    """Differences between the files and the code, as human-readable lines (empty: none)."""
    wanted = schema_files(types)
    present = {p.name: p.read_bytes() for p in directory.glob("*.json")} if directory.is_dir() else {}
    problems = [f"missing: {n}" for n in sorted(wanted.keys() - present.keys())]
    problems += [f"stale: {n}" for n in sorted(present.keys() - wanted.keys())]
    problems += [f"differs: {n}" for n in sorted(wanted.keys() & present.keys()) if wanted[n] != present[n]]
    return problems
