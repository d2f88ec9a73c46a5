"""What every benchmark script shares: its command line and how it prints results."""

from __future__ import annotations

import argparse
import json


def parse_args(doc: str, argv: list[str] | None = None, **extra) -> argparse.Namespace:
    """``--json`` and ``--quick`` for every benchmark, plus ``extra`` ``name=default`` ints."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser.parse_args(argv)


def report(results: dict, as_json: bool) -> dict:
    """Print ``results`` as one JSON object or as an aligned table; return them."""
    if as_json:
        print(json.dumps(results))
        return results
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    return results
