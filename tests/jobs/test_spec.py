import json

import pytest

from jobs.spec import ExperimentSpec, SpecError


def minimal(**overrides):
    spec = {
        "name": "t",
        "datasets": [{"name": "digits", "hierarchy": "coarse"}],
        "archs": ["small_cnn"],
        "seeds": [0],
    }
    spec.update(overrides)
    return spec


def test_quickstart_spec_is_valid():
    spec = ExperimentSpec.from_yaml("examples/quickstart.yaml")
    assert spec.experiment_id == "quickstart" and spec.epochs_to_probe == [spec.training.epochs]


def test_defaults_and_json_schema():
    spec = ExperimentSpec.from_dict(minimal())
    assert spec.clustering.methods == ["ward", "kmeans"]
    schema = ExperimentSpec.model_json_schema()
    assert {"datasets", "archs", "seeds"} <= set(schema["required"])
    assert ExperimentSpec.from_dict(json.loads(spec.canonical_json())) == spec


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"datasets": [{"name": "imagenet9", "hierarchy": "x"}]}, "unknown dataset 'imagenet9'"),
        ({"datasets": [{"name": "digits", "hierarchy": "natural"}]}, "no hierarchy 'natural'"),
        ({"archs": ["vgg99"]}, "unknown arch"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"seeds": [1, 1]}, "repeat"),
        ({"clustering": {"methods": ["dbscan"]}}, "unknown clustering method"),
        ({"clustering": {"overclustering_factors": [11]}}, "outside 1..10"),
        ({"clustering": {"methods": ["kmeans"], "backend": "torch"}}, "does not run 'kmeans'"),
        ({"training": {"epochs": -1}}, "training.epochs"),
        ({"training": {"loss": "hinge"}}, "unknown loss"),
        ({"probe_epochs": [99]}, "probe_epochs"),
        ({"typo_field": 1}, "typo_field"),
        ({"name": "bad name!"}, "name"),
        (
            {
                "datasets": [
                    {"name": "shapes", "hierarchy": "natural", "options": {"test_per_subclass": 3}}
                ],
                "clustering": {"overclustering_factors": [4]},
            },
            "k = 4 subclasses x factor 4 = 16 exceeds the 12 test samples",
        ),
    ],
)
def test_invalid_specs_give_one_clear_error(overrides, message):
    with pytest.raises(SpecError, match=message):
        ExperimentSpec.from_dict(minimal(**overrides))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        ExperimentSpec.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        ExperimentSpec.from_yaml(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(SpecError, match="mapping"):
        ExperimentSpec.from_yaml(bad)
