"""Turn `./dev bench --json FILE` output into the table of BENCHMARKS.md.

    .venv/bin/python -m bench.markdown results.json
"""

from __future__ import annotations

import json
import sys


def table(figures: list[dict]) -> str:
    rows = ["| bench | figure | value | limit (same run) | ratio | target | holds |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        limit = f"{f['limit']:,.1f}" if f.get("limit") else ""
        ratio = f"{f['ratio']:.2f}" if f.get("ratio") is not None else ""
        if f.get("target") is not None:
            target = (">= " if f.get("target_kind") == "min" else "<= ") + f"{f['target']:g}"
            holds = "yes" if f.get("holds") else "**no**"
        else:
            target = holds = ""
        rows.append(
            f"| {f.get('bench', '')} | {f['name']} | {f['value']:,.1f} {f['unit']} | {limit} | {ratio} | {target} | {holds} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(json.load(open(sys.argv[1]))))
