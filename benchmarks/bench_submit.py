"""`stratalens bench submit`: a study submitted as a Ray job vs the same study run locally.

Starts a token-authenticated Ray head on this machine (``ray start --head``, its job
server on 127.0.0.1, as many CPUs as a local run's Ray gets; stopped by PID), then times,
alternately, ``stratalens run SPEC`` (which starts its own local Ray) and ``stratalens
submit SPEC --wait`` against the head (the spec and this checkout's packages uploaded
as the job's runtime env, the driver started by the job server, logs followed to the
end), each into a fresh local store. The cluster's start-up is not timed: a submitted job
finds its cluster running. The spec is the reduced study of the live submission test
(digits, small_cnn, one seed, one epoch, Ward + k-means); with ``--quick`` the same.
Prints both wall times, their ratio and the overhead in seconds (medians of --repeats).

Usage: python benchmarks/bench_submit.py [--json] [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from common import parse_args, report  # noqa: E402

from tests.integration.ray_cluster import LocalCluster  # noqa: E402
from tests.integration.test_submit_live import PACKAGES, ROOT, TINY  # noqa: E402

CLI = [sys.executable, "-c", "from jobs.cli import app; app()"]


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, repeats=1)
    cpus = os.cpu_count() or 1
    local_s, submit_s = [], []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec = root / "spec.yaml"
        spec.write_text(yaml.safe_dump(TINY))
        runtime_env = root / "runtime_env.yaml"
        runtime_env.write_text(yaml.safe_dump({"py_modules": [str(ROOT / p) for p in PACKAGES]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PYTHONPATH"] = str(ROOT)
        cluster = LocalCluster(head_cpus=cpus)
        try:
            submit_env = {**env, "RAY_AUTH_TOKEN_PATH": str(cluster.token_path)}
            for i in range(args.repeats):
                local_s.append(timed(["run", str(spec), "--store", str(root / f"l{i}")], env))
                submit = ["submit", str(spec), "--address", cluster.address, "--wait"]
                submit += ["--store", str(root / f"s{i}"), "--runtime-env", str(runtime_env)]
                submit_s.append(timed(submit, submit_env))
        finally:
            cluster.stop()
    local, submitted = statistics.median(local_s), statistics.median(submit_s)
    return report(
        {
            "cpus": cpus,
            "repeats": args.repeats,
            "local_run_s": local,
            "submitted_job_s": submitted,
            "ratio_submitted_over_local": submitted / local,
            "overhead_s": submitted - local,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
