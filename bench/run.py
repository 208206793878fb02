"""Run every benchmark, one line per figure with its ratio to the limit measured in the same run.

    ./dev bench [--json FILE] [--only append,project,...]

Each benchmark module accepts ``--json FILE`` and writes a list of figures
(see bench/report.py). A benchmark that fails is reported and makes the exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Figure, machine

BENCHMARKS = ("append", "ingest", "project", "agent", "load")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", dest="json_path", help="write all figures as one JSON list")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    figures: list[dict] = []
    failed = []
    print(f"# machine: {machine()}")
    for name in chosen:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            print(f"## {name}", flush=True)
            result = subprocess.run([sys.executable, "-m", f"bench.{name}", "--json", out.name])
            if result.returncode != 0:
                failed.append(name)
                continue
            found = json.loads(Path(out.name).read_text() or "[]")
        for raw in found:
            raw.setdefault("bench", name)
            figures.append(raw)
    print("\n# summary")
    for raw in figures:
        fields = {k: raw.get(k) for k in ("name", "value", "unit", "limit", "target", "target_kind")}
        print(Figure(**fields).line())
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2))
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
