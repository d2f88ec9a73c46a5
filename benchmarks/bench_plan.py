"""`stratalens bench plan`: the capacity plan of a reduced spec against what a real run stored.

Runs ``jobs.pipeline.run_experiment`` on the integration tests' reduced quickstart (both
built-in datasets, small_cnn, two seeds, Ward + k-means, factors 1 and 2, two epochs; with
``--quick``: digits only, one epoch) in a temporary local store, then compares, per table,
the rows and bytes ``stratalens plan`` predicted with the rows stored and the bytes of the
data files the table's current version references (``jobs.plan.stored_bytes``; indices and
superseded versions are not predicted). Prints a Markdown table, or JSON with ``--json``.

Usage: python benchmarks/bench_plan.py [--json] [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import parse_args  # noqa: E402

from jobs.pipeline import run_experiment  # noqa: E402
from jobs.plan import plan_experiment, stored_bytes  # noqa: E402
from jobs.spec import ExperimentSpec  # noqa: E402
from storage import EmbeddingStore  # noqa: E402
from tests.integration.conftest import small_spec  # noqa: E402


def reduced_spec(quick: bool) -> ExperimentSpec:
    data = small_spec("plan", epochs=1 if quick else 2)
    if quick:
        data["datasets"] = data["datasets"][:1]
    return ExperimentSpec.from_dict(data)


def compare(spec: ExperimentSpec, root: str) -> list[dict]:
    """Per table: predicted and stored rows and bytes, and the relative error of the bytes."""
    plan = plan_experiment(spec)
    store = EmbeddingStore(root)
    rows = []
    for table in plan.tables:
        measured = stored_bytes(root, table.table)
        rows.append(
            {
                "table": table.table,
                "rows_predicted": table.rows,
                "rows_stored": store.dataset(table.table).count_rows(),
                "bytes_predicted": table.bytes,
                "bytes_stored": measured,
                "error": table.bytes / measured - 1,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(__doc__, argv)
    spec = reduced_spec(args.quick)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        run_experiment(spec, EmbeddingStore(root))
        seconds = time.perf_counter() - start
        rows = compare(spec, root)
    if args.json:
        print(json.dumps({"run_seconds": seconds, "tables": rows}))
        return rows
    print(f"reduced run: {seconds:.0f} s\n")
    print("| table | rows predicted / stored | bytes predicted | bytes stored | error |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['table']}` | {r['rows_predicted']:,} / {r['rows_stored']:,} | "
            f"{r['bytes_predicted']:,} | {r['bytes_stored']:,} | {r['error']:+.1%} |"
        )
    return rows


if __name__ == "__main__":
    main()
