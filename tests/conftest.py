"""Shared fixtures; gpu tests skip themselves without CUDA."""

from __future__ import annotations

import pytest

import storage  # noqa: F401 - sets Lance's log level before any test module imports lance


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def store(tmp_path):
    from storage import EmbeddingStore

    return EmbeddingStore(str(tmp_path / "store"))


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance per test module."""
    import ray

    from jobs.pipeline import init_ray

    init_ray(None)
    yield
    ray.shutdown()
