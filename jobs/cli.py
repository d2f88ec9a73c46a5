"""The ``stratalens`` command line (typer + rich)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from storage import DEFAULT_STORE, EmbeddingStore, StoreError
from storage import schema as S

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="stratalens: probe the clusters that live inside a network's layers.",
)
console = Console()
err_console = Console(stderr=True)

STORE_OPTION = typer.Option(
    DEFAULT_STORE, "--store", help="store root: a local path or s3://bucket/prefix"
)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _open_existing(store: str) -> EmbeddingStore:
    opened = EmbeddingStore(store)
    if "://" not in store and not Path(store).exists():
        _fail(f"store {store!r} does not exist; run `stratalens run SPEC` first or pass --store")
    try:
        opened.check_reachable()
    except StoreError as exc:
        _fail(str(exc))
    return opened


@app.command()
def run(
    spec_path: Path = typer.Argument(..., help="experiment spec (YAML)"),
    store: str = STORE_OPTION,
    address: str = typer.Option(
        None, "--address", help="Ray cluster address; default: start a local Ray"
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="delete this experiment's rows first and start over"
    ),
    force: bool = typer.Option(
        False, "--force", help="store layer sets over storage.max_bytes_per_sample"
    ),
) -> None:
    """Train, extract, cluster and score everything the spec asks for (resumable)."""
    from actors.datasets import DatasetError
    from jobs.pipeline import WorkerLostError, run_experiment
    from jobs.plan import PlanError
    from jobs.spec import ExperimentSpec, SpecError

    try:
        spec = ExperimentSpec.from_yaml(spec_path, force=force)
        EmbeddingStore(store).check_reachable()
        start = time.perf_counter()
        counts = run_experiment(
            spec, EmbeddingStore(store), address=address, fresh=fresh, console=err_console
        )
    except (SpecError, StoreError, DatasetError, PlanError) as exc:
        # raised in a Ray worker, it arrives wrapped; its cause holds the one sentence
        _fail(str(getattr(exc, "cause", None) or exc))
    except WorkerLostError as exc:  # not bad input: exit 1, and re-running resumes
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    elapsed = time.perf_counter() - start
    done = (
        ", ".join(f"{n} {stage}" for stage, n in counts.committed.items())
        or "nothing new (all committed)"
    )
    err_console.print(f"committed {done} in {elapsed:.1f} s")
    _print_profile(EmbeddingStore(store), spec.experiment_id, spec.clustering.methods[0])
    console.print(
        f"next: stratalens report {spec.experiment_id} --store {store} --out stratalens-report"
    )


@app.command()
def plan(
    spec_path: Path = typer.Argument(..., help="experiment spec (YAML)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    worker_memory_gb: float = typer.Option(
        None,
        "--worker-memory-gb",
        help="memory of one clustering worker; default: the spec's "
        "resources.worker_memory_gb, else what this machine has available",
    ),
    assume_counts: str = typer.Option(
        None,
        "--assume-counts",
        help="samples per split for datasets whose images are elsewhere, training split "
        "first, e.g. train=88400,val=3400 (spread evenly over the hierarchy's subclasses)",
    ),
) -> None:
    """What SPEC will run, store and need, without running anything (exit 2 if it cannot fit)."""
    import json

    from actors.datasets import DatasetError
    from jobs.plan import PlanError, assumed_counts, parse_counts, plan_experiment
    from jobs.spec import ExperimentSpec, SpecError

    if worker_memory_gb is not None and worker_memory_gb <= 0:
        _fail(f"--worker-memory-gb {worker_memory_gb} should be > 0; pass the GiB of one worker")
    try:
        counts = parse_counts(assume_counts) if assume_counts else None
        with assumed_counts(counts):
            spec = ExperimentSpec.from_yaml(spec_path)
            capacity = plan_experiment(
                spec, worker_memory_gb=worker_memory_gb, assume_counts=counts
            )
    except (SpecError, PlanError, DatasetError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(capacity.to_json(), indent=2))
    else:
        _print_plan(capacity)
    try:
        capacity.check_memory()
    except PlanError as exc:
        _fail(str(exc))


def _print_plan(capacity) -> None:
    """The plan as three tables: units per stage, table growth, clustering peaks."""
    if capacity.assumed:
        console.print(f"assumed samples per split (images not read): {capacity.assumed}")
    units = Table("stage", "units", title=f"{capacity.experiment_id}: units of work")
    for stage, n in capacity.units.items():
        units.add_row(stage, f"{n:,}")
    console.print(units)
    tables = Table("table", "rows", "bytes", title="what the store gains (compacted data files)")
    for t in capacity.tables:
        tables.add_row(t.table, f"{t.rows:,}", _size(t.bytes))
    tables.add_row("total", "", _size(capacity.total_bytes), end_section=True)
    console.print(tables)
    peaks = Table(
        "method",
        "backend (auto)",
        "algorithm",
        "largest fit",
        "dim",
        "peak memory",
        "fits",
        title=f"largest clustering task per method; worker budget "
        f"{_size(capacity.worker_memory_bytes)} ({capacity.memory_source})",
    )
    for p in capacity.clustering:
        peaks.add_row(
            p.method,
            p.backend,
            p.algorithm,
            f"{p.n_samples:,} of {p.split_samples:,}",
            str(p.dim),
            _size(p.peak_bytes),
            "yes" if p.fits else "[bold red]no[/]",
        )
    console.print(peaks)


ADDRESS_OPTION = typer.Option(
    ..., "--address", help="Ray job server (dashboard) address, e.g. http://HEAD:8265"
)
JOB_POLL_SECONDS = 2.0


@app.command()
def submit(
    spec_path: Path = typer.Argument(..., help="experiment spec (YAML)"),
    address: str = ADDRESS_OPTION,
    store: str = typer.Option(None, "--store", help="store root the job writes (s3://...)"),
    wait: bool = typer.Option(False, "--wait", help="wait, print the logs, exit with the outcome"),
    runtime_env: Path = typer.Option(None, "--runtime-env", help="extra Ray runtime env (YAML)"),
) -> None:
    """Submit `stratalens run SPEC` to a Ray cluster as a job (the spec travels with it)."""
    import yaml

    from jobs.spec import ExperimentSpec, SpecError
    from jobs.submit import SubmitError
    from jobs.submit import submit as submit_job

    try:
        ExperimentSpec.from_yaml(spec_path)
        env = yaml.safe_load(runtime_env.read_text()) if runtime_env else None
        job_id = submit_job(spec_path, address, store=store, runtime_env=env)
    except (SpecError, SubmitError) as exc:
        _fail(str(exc))
    console.print(job_id)
    if wait:
        _follow(address, job_id)


def _follow(address: str, job_id: str) -> None:
    """Wait for ``job_id`` to end, print its logs, exit non-zero unless it succeeded."""
    from ray.job_submission import JobStatus

    from jobs.submit import client

    jobs = client(address)
    while jobs.get_job_status(job_id) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        time.sleep(JOB_POLL_SECONDS)
    print(jobs.get_job_logs(job_id), end="")
    status = jobs.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        _fail(f"job {job_id} ended {status.value}; read its logs: stratalens jobs logs {job_id}")


@app.command()
def jobs(
    action: str = typer.Argument(..., help="ls | status | logs | stop"),
    job_id: str = typer.Argument(None, help="job id (status, logs, stop)"),
    address: str = ADDRESS_OPTION,
) -> None:
    """List, inspect, read or stop the Ray jobs of a cluster."""
    from jobs.submit import SubmitError, client

    if action not in ("ls", "status", "logs", "stop"):
        _fail(f"unknown jobs action {action!r}; choose one of ls, status, logs, stop")
    if action != "ls" and not job_id:
        _fail(f"`stratalens jobs {action}` needs a JOB_ID; list them with `stratalens jobs ls`")
    try:
        jobs_client = client(address)
    except SubmitError as exc:
        _fail(str(exc))
    if action == "ls":
        table = Table("job", "status", "entrypoint")
        for job in jobs_client.list_jobs():
            table.add_row(job.submission_id or job.job_id or "", job.status.value, job.entrypoint)
        console.print(table)
    elif action == "status":
        console.print(jobs_client.get_job_status(job_id).value)
    elif action == "logs":
        print(jobs_client.get_job_logs(job_id), end="")
    else:
        console.print("stopped" if jobs_client.stop_job(job_id) else "already finished")


@app.command()
def hierarchy(
    name: str = typer.Argument(
        ..., help="DATASET-HIERARCHY, e.g. breeds-living17, cifar100-superclass, shapes-natural"
    ),
    options: str = typer.Option(
        "{}", "--options", help='dataset options as JSON, e.g. \'{"hierarchy_file": "h.yaml"}\''
    ),
    seed: int = typer.Option(0, "--seed", help="hierarchy_seed (shuffled hierarchies)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print the superclasses of a hierarchy and their subclasses, without reading images."""
    import json

    from actors.datasets import DatasetConfig, DatasetError, build_hierarchy, list_datasets

    try:
        parsed = json.loads(options)
    except json.JSONDecodeError as exc:
        _fail(f'--options is not valid JSON ({exc}); pass an object like \'{{"root": "..."}}\'')
    if not isinstance(parsed, dict):
        _fail(f"--options should be a JSON object, got {type(parsed).__name__}")
    dataset, _, hierarchy_name = name.partition("-")
    if dataset == "breeds":
        dataset, hierarchy_name = "imagenet", name
    known = list_datasets()
    if dataset not in known or hierarchy_name not in known[dataset]:
        choices = [
            h if h.startswith("breeds-") else f"{d}-{h}" for d, hs in known.items() for h in hs
        ]
        _fail(f"unknown hierarchy {name!r}; choose one of {choices}")
    try:
        h = build_hierarchy(DatasetConfig(dataset, hierarchy_name, seed, parsed))
    except DatasetError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(h.to_json(), indent=2))
        return
    table = Table(
        "#",
        "superclass",
        "wnid",
        "subclasses",
        title=f"{name}: {h.n_superclasses} superclasses, {h.n_subclasses} subclasses",
    )
    for i, sup in enumerate(h.to_json()["superclasses"]):
        members = [h.subclass_names[c] for c in h.members(i)]
        table.add_row(str(i), sup["name"], sup["wnid"] or "", ", ".join(members))
    console.print(table)


@app.command()
def schema() -> None:
    """Print the JSON schema of experiment specs (for editors and validators)."""
    import json

    from jobs.spec import ExperimentSpec

    print(json.dumps(ExperimentSpec.model_json_schema(), indent=2))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")):
    """List the models a spec's archs can name (`stratalens layers NAME` for their layers)."""
    import json

    from actors.models import list_models, model_entry

    entries = [model_entry(name) for name in list_models()]
    if as_json:
        rows = [{"name": e.name, "family": e.family, "source": e.source} for e in entries]
        print(json.dumps(rows, indent=2))
        return
    table = Table("arch", "family", "source", title=f"{len(entries)} models")
    for e in entries:
        table.add_row(e.name, e.family, e.source)
    console.print(table)


@app.command()
def layers(
    arch: str = typer.Argument(..., help="model name, e.g. resnet50 (see `stratalens models`)"),
    image_size: int = typer.Option(None, "--image-size", help="input size; default: the arch's"),
    channels: int = typer.Option(3, "--channels", help="image channels"),
    options: str = typer.Option("{}", "--options", help="builder options as JSON"),
    nodes: bool = typer.Option(False, "--nodes", help="every layer name a spec may list"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print an arch's default probed layers and the dimension each is stored with."""
    import json

    from actors.models import FLOAT_BYTES, ModelConfig, ModelError, layer_dims, probeable_layers

    try:
        parsed = json.loads(options)
        if not isinstance(parsed, dict):
            raise ValueError(type(parsed).__name__)
    except ValueError as exc:
        _fail(f"--options should be a JSON object like '{{\"num_layers\": 2}}' ({exc})")
    try:
        config = ModelConfig(arch, options=parsed)
        size = image_size or config.entry.image_size
        if nodes:
            model = config.create(in_channels=channels, num_classes=2, device="meta")
            names = probeable_layers(model, config.entry)
            print(json.dumps(names, indent=2) if as_json else "\n".join(names))
            return
        dims = layer_dims(config, (channels, size, size), num_classes=2)
    except ModelError as exc:
        _fail(str(exc))
    total = sum(dims.values()) * FLOAT_BYTES["float32"]
    if as_json:
        rows = [{"layer": name, "dim": d} for name, d in dims.items()]
        summary = {"arch": arch, "image_size": size, "layers": rows, "bytes_per_sample": total}
        print(json.dumps(summary, indent=2))
        return
    table = Table("layer", "dim", title=f"{arch} at {size} px")
    for name, d in dims.items():
        table.add_row(name, str(d))
    console.print(table)
    console.print(f"{len(dims)} layers, {total:,} bytes per sample as float32")


@app.command("ls")
def list_experiments(store: str = STORE_OPTION) -> None:
    """List the experiments in a store."""
    opened = _open_existing(store)
    experiments = opened.read(S.EXPERIMENTS, columns=["experiment_id", "created_at"]).to_pylist()
    runs = opened.read(S.RUNS, columns=["experiment_id"]).column(0).to_pylist()
    table = Table("experiment", "created", "finished runs")
    for row in experiments:
        table.add_row(
            row["experiment_id"],
            f"{row['created_at']:%Y-%m-%d %H:%M}",
            str(runs.count(row["experiment_id"])),
        )
    console.print(table)


@app.command()
def show(
    experiment: str = typer.Argument(..., help="experiment id (its spec's name)"),
    store: str = STORE_OPTION,
    method: str = typer.Option("ward", help="clustering method whose scores to show"),
) -> None:
    """Show an experiment's runs and its per-layer scores at each probe epoch."""
    from services.report import runs_frame

    opened = _open_existing(store)
    _register_archs(opened, experiment)
    try:
        runs = runs_frame(opened, experiment)
    except StoreError as exc:
        _fail(str(exc))
    table = Table(
        "dataset",
        "hierarchy",
        "arch",
        "seed",
        "train acc",
        "test acc",
        "train s",
        title="runs (superclass accuracy)",
    )
    for r in runs.itertuples():
        table.add_row(
            r.dataset,
            r.hierarchy,
            r.arch,
            str(r.seed),
            f"{r.train_accuracy:.3f}",
            f"{r.test_accuracy:.3f}",
            f"{r.train_seconds:.1f}",
        )
    console.print(table)
    _print_finding(opened, experiment)  # first: the profile may fail on a method not run
    _print_profile(opened, experiment, method)


def _print_finding(store: EmbeddingStore, experiment: str) -> None:
    """Print the paper's finding and its verdict when the experiment is a reproduction."""
    from services.findings import finding, finding_lines

    found = finding(store, experiment)
    if found is not None:
        for line in finding_lines(found):
            console.print(line, highlight=False, markup=False)


@app.command()
def compare(
    experiments: list[str] = typer.Argument(..., help="experiment ids (one or more)"),
    archs: str = typer.Option(None, "--archs", help="comma-separated archs; default all"),
    epochs: str = typer.Option(None, "--epochs", help="comma-separated probe epochs; default all"),
    metrics: str = typer.Option(
        "ari,cka", "--metrics", help="comma-separated: ari, ami, nmi, cka, cka_debiased, mknn"
    ),
    k: int = typer.Option(10, "--k", min=1, help="neighbours for mknn"),
    plan: bool = typer.Option(
        False, "--plan", help="print the pairs, rows and bytes it will take; compute nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="with --plan: one JSON object"),
    store: str = STORE_OPTION,
) -> None:
    """Layer x layer scores between every pair of runs (seeds, archs, experiments, probe
    epochs) over the same dataset and split, into the pairs table (resumable)."""
    from jobs.compare import CompareError, run_compare
    from jobs.plan import plan_compare

    opened = _open_existing(store)
    try:
        epoch_list = [int(e) for e in epochs.split(",")] if epochs else None
    except ValueError:
        _fail(f"--epochs {epochs!r} should be comma-separated integers, e.g. --epochs 1,2")
    start = time.perf_counter()
    selection = dict(
        archs=archs.split(",") if archs else None,
        epochs=epoch_list,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
        k=k,
    )
    try:
        if plan:
            _print_compare_plan(plan_compare(opened, list(experiments), **selection), as_json)
            return
        committed, skipped = run_compare(opened, list(experiments), **selection)
    except (CompareError, StoreError) as exc:
        _fail(str(exc))
    console.print(
        f"committed {committed} compare units ({skipped} already there) "
        f"in {time.perf_counter() - start:.1f} s"
    )


def _print_compare_plan(plan, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(plan.to_json()))
        return
    console.print(
        f"{plan.sides} runs x probe epochs; {plan.units} compare units "
        f"({plan.pending} to compute): {plan.rows:,} pairs rows, "
        f"{_size(plan.pairs_bytes)} stored; reads {_size(plan.read_bytes)}; "
        f"CKA moments {_size(plan.cka_memory_bytes)} (float64)"
    )


def _register_archs(store: EmbeddingStore, experiment: str) -> None:
    """Tell the model registry the layer sets of the experiment's arch keys (its stored spec)."""
    from jobs.spec import register_stored_archs
    from storage.filters import where

    rows = store.read(S.EXPERIMENTS, columns=["spec"], filter=where(experiment_id=experiment))
    for spec_json in rows.column("spec").to_pylist():
        register_stored_archs(spec_json)


def _print_profile(store: EmbeddingStore, experiment: str, method: str) -> None:
    """Print the per-layer scores, one block of rows per probe epoch (never averaged over)."""
    from services.report import layer_profile

    try:
        profile = layer_profile(store, experiment, method=method)
    except StoreError as exc:
        _fail(str(exc))
    factor = int(profile.overclustering_factor.iloc[0])
    shown = {  # column title: metric, for the metrics the spec stored
        title: metric
        for title, metric in (
            ("AMI", "ami"),
            ("purity", "purity"),
            ("NCC sub", "ncc_subclass"),
            ("NCC super", "ncc_superclass"),
            ("CLP", "clp_accuracy"),
            ("LP fine", "linear_probe_fine"),
        )
        if f"{metric}_mean" in profile
    }
    table = Table(
        "dataset / hierarchy",
        "arch",
        "epoch",
        "layer",
        *shown,
        title=f"{method}, k = subclasses x {factor}, per probe epoch, mean ± sd over seeds",
    )
    profile = profile.sort_values(["epoch", "dataset_id", "arch", "layer_index"])
    last_of_epoch = profile.epoch.ne(profile.epoch.shift(-1))
    for r, end_section in zip(profile.itertuples(), last_of_epoch, strict=True):
        cells = [f"{getattr(r, f'{m}_mean'):.3f}" for m in shown.values()]
        if "ami" in shown.values():
            cells[0] += f" ± {np.nan_to_num(r.ami_std):.3f}"
        table.add_row(
            f"{r.dataset} / {r.hierarchy}",
            r.arch,
            str(r.epoch),
            r.layer,
            *cells,
            end_section=bool(end_section),
        )
    console.print(table)


@app.command()
def embeddings(
    experiment: str = typer.Argument(..., help="experiment id"),
    arch: str = typer.Option(..., "--arch", help="model architecture, e.g. small_cnn"),
    layer: str = typer.Option(..., "--layer", help="probed layer, e.g. fc2"),
    out: Path = typer.Option(..., "--out", help="output file: .npy, .parquet or .arrow"),
    run: str = typer.Option(None, "--run", help="run id (see the runs table)"),
    seed: int = typer.Option(None, "--seed"),
    epoch: int = typer.Option(None, "--epoch"),
    split: str = typer.Option(None, "--split", help="train or test"),
    superclass: int = typer.Option(None, "--superclass"),
    dataset: str = typer.Option(None, "--dataset", help="dataset id (see `stratalens show`)"),
    version: str = typer.Option(None, "--version", help="read an older version (number or tag)"),
    store: str = STORE_OPTION,
) -> None:
    """Export one layer's embeddings, filtered by key columns (streamed: any size fits)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from storage.export import export_format, export_layer

    try:
        export_format(out)
    except StoreError as exc:
        _fail(str(exc))
    opened = _open_existing(store)
    query = dict(
        run_id=run,
        seed=seed,
        epoch=epoch,
        split=split,
        superclass=superclass,
        dataset_id=dataset,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("export {task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(layer, total=None)
        try:
            n, d = export_layer(
                opened,
                experiment,
                arch,
                layer,
                out,
                version=int(version) if version and version.isdigit() else version,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **query,
            )
        except StoreError as exc:
            bar.stop()
            _fail(str(exc))
    console.print(f"wrote {n} x {d} to {out}")


@app.command()
def report(
    experiment: str = typer.Argument(..., help="experiment id"),
    out: Path = typer.Option(Path("stratalens-report"), "--out", help="output folder"),
    store: str = STORE_OPTION,
) -> None:
    """Write an HTML report: AMI/purity vs layer, cross-seed ARI heatmaps, cluster galleries."""
    from services.report import write_report

    opened = _open_existing(store)
    _register_archs(opened, experiment)
    try:
        page = write_report(opened, experiment, out)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"report: {page}")


@app.command()
def tag(
    name: str = typer.Argument(None, help="tag name; leave out to list the tags"),
    store: str = STORE_OPTION,
) -> None:
    """Name the current version of every table, to read later with --version NAME.

    Without NAME, list the tags. `compact` keeps tagged versions; tagging again moves a tag.
    """
    opened = _open_existing(store)
    if name is None:
        table = Table("tag", "tables", "versions")
        for tag_name, versions in opened.tags().items():
            shown = sorted(set(versions.values()))
            table.add_row(tag_name, str(len(versions)), ", ".join(map(str, shown)))
        console.print(table)
        return
    try:
        tagged = opened.tag_all(name)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"tagged {len(tagged)} tables as {name!r}")


@app.command()
def compact(
    store: str = STORE_OPTION,
    keep_versions: int = typer.Option(1, "--keep-versions", min=1, help="newest versions to keep"),
) -> None:
    """Merge small fragments, rebuild key indices, delete old versions and orphan files.

    Tagged versions are kept. Run it when no `stratalens run` is writing to the store.
    """
    from rich.progress import track

    opened = _open_existing(store)
    tables = opened.list_tables()
    removed = sum(
        opened.compact_table(table, keep_versions=keep_versions)
        for table in track(tables, description="compact", console=err_console, transient=True)
    )
    console.print(f"compacted {len(tables)} tables, removed {_size(removed)}")


@app.command()
def serve(
    store: str = STORE_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    use_ray: bool = typer.Option(False, "--ray", help="run the app as a Ray Serve deployment"),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Ray Serve replicas (with --ray)"),
    address: str = typer.Option(
        None, "--address", help="Ray cluster address (with --ray); default: start a local Ray"
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="origin allowed to call the API from a browser (repeatable)"
    ),
) -> None:
    """Serve the store over HTTP: the /v1 query API (OpenAPI at /docs) and the dashboard at /.

    Read-only unless STRATALENS_TOKEN is set: writes then need
    'Authorization: Bearer <token>'.
    """
    import os

    from services.api.settings import ENV_CORS_ORIGINS, ENV_STORE, KEEP_ALIVE_S, ServiceSettings

    _open_existing(store)
    settings = ServiceSettings.from_env(store=store, cors_origins=tuple(cors_origin) or None)
    writes = "on (bearer token)" if settings.token else "off (no STRATALENS_TOKEN)"
    err_console.print(f"serving {store} on http://{host}:{port}/ (docs: /docs); writes {writes}")
    if use_ray:
        from services.api.ray_serve import run as run_serve

        run_serve(settings, host=host, port=port, replicas=replicas, address=address)
        return
    import uvicorn

    # uvicorn's workers build the app from the environment, as a factory
    os.environ[ENV_STORE] = store
    if cors_origin:
        os.environ[ENV_CORS_ORIGINS] = ",".join(cors_origin)
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
    )


@app.command()
def index(
    experiment: str = typer.Argument(..., help="experiment id"),
    arch: str = typer.Option(..., "--arch", help="model architecture, e.g. small_cnn"),
    layer: str = typer.Option(..., "--layer", help="probed layer, e.g. fc2"),
    index_type: str = typer.Option("IVF_HNSW_SQ", "--type", help="IVF_HNSW_SQ or IVF_PQ"),
    metric: str = typer.Option("cosine", "--metric", help="cosine or l2"),
    partitions: int = typer.Option(None, "--partitions", min=1, help="IVF partitions"),
    store: str = STORE_OPTION,
) -> None:
    """Build a vector index on one layer, for fast nearest-neighbour queries (serve's
    /neighbors). Rebuild it after a run adds rows: those are searched exactly until then."""
    from storage.index import build_index

    opened = _open_existing(store)
    start = time.perf_counter()
    try:
        built = build_index(
            opened,
            experiment,
            arch,
            layer,
            index_type=index_type.upper(),
            metric=metric,
            num_partitions=partitions,
        )
    except StoreError as exc:
        _fail(str(exc))
    console.print(
        f"built {built.index_type} ({built.metric}) on {experiment}/{arch}/{layer}: "
        f"{built.indexed_rows} rows in {time.perf_counter() - start:.1f} s"
    )


def _size(n_bytes: float) -> str:
    """``n_bytes`` in B, KiB, MiB or GiB, e.g. ``12.5 MiB``."""
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while n_bytes >= 1024 and power < len(units) - 1:
        n_bytes /= 1024
        power += 1
    return f"{n_bytes:.0f} B" if power == 0 else f"{n_bytes:.1f} {units[power]}"


BENCHMARKS = (
    "cluster",
    "consistency",
    "data",
    "extract",
    "metrics",
    "plan",
    "serve",
    "store",
    "submit",
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    name: str = typer.Argument(..., help=f"one of {', '.join(BENCHMARKS)}"),
) -> None:
    """Run a benchmark script from benchmarks/ (extra options pass through, e.g. --json)."""
    import runpy

    if name not in BENCHMARKS:
        _fail(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"bench_{name}.py"
    if not script.is_file():
        _fail(f"{script} is missing; run benchmarks from a source checkout (pip install -e .)")
    sys.argv = [str(script), *ctx.args]
    sys.path.insert(0, str(script.parent))  # as `python benchmarks/bench_x.py` would
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
