import pytest

SMALL_SHAPES = {"train_per_subclass": 20, "test_per_subclass": 10}


def small_spec(name: str = "it", seeds=(0, 1), epochs: int = 2) -> dict:
    """A reduced quickstart: both built-in datasets, two seeds, two methods, two factors."""
    return {
        "name": name,
        "datasets": [
            {"name": "digits", "hierarchy": "coarse"},
            {"name": "shapes", "hierarchy": "natural", "options": SMALL_SHAPES},
        ],
        "archs": ["small_cnn"],
        "seeds": list(seeds),
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1},
        "clustering": {"methods": ["ward", "kmeans"], "overclustering_factors": [1, 2]},
    }


@pytest.fixture
def spec_factory():
    return small_spec
