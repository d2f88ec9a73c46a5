"""Which backend runs which method, and the one place optional GPU libraries are imported."""

from __future__ import annotations

import importlib
from functools import cache

SUPPORTED: dict[str, tuple[str, ...]] = {
    "ward": ("scipy", "torch"),
    "average": ("scipy",),
    "complete": ("scipy",),
    "single": ("scipy", "cuml"),
    "kmeans": ("sklearn", "cuml"),
}
BACKENDS = ("auto", "scipy", "torch", "sklearn", "cuml")
METHODS = tuple(SUPPORTED)


@cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


@cache
def cuml_available() -> bool:
    try:
        importlib.import_module("cuml")
    except ImportError:
        return False
    return cuda_available()


def select_backend(name: str = "auto", *, method: str = "ward") -> str:
    """Resolve ``auto`` for ``method``, or check that backend ``name`` can run it.

    ``auto`` prefers the GPU when one is usable: cuML for k-means and single
    linkage (with RAPIDS installed), the torch RNN Ward on CUDA; otherwise the
    exact CPU backends (SciPy/fastcluster linkages, scikit-learn k-means).
    """
    if method not in SUPPORTED:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {list(METHODS)}")
    if name not in BACKENDS:
        raise ValueError(f"unknown clustering backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "auto":
        if method in ("kmeans", "single") and cuml_available():
            return "cuml"
        if method == "ward" and cuda_available():
            return "torch"
        return SUPPORTED[method][0]
    if name not in SUPPORTED[method]:
        raise ValueError(
            f"backend {name!r} does not run {method!r}; use one of {list(SUPPORTED[method])}"
        )
    if name == "cuml" and not cuml_available():
        raise ValueError(
            "backend 'cuml' needs RAPIDS cuML and a CUDA GPU; install cuML from the RAPIDS index "
            "(see README) or use backend='auto'"
        )
    return name
