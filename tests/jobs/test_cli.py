"""CLI error handling: one clear sentence, exit code 2, nothing written."""

import re
from pathlib import Path

from typer.testing import CliRunner

from jobs.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = re.findall(r"^│ ([a-z]+) {2,}\S", result.output, flags=re.MULTILINE)
    documented = ["run", "schema", "ls", "show", "embeddings", "report", "tag", "compact", "bench"]
    assert [c for c in listed if c in documented] == documented  # the README's order


def test_schema_command_prints_the_spec_json_schema():
    import json

    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"name", "datasets", "archs", "seeds"} <= set(schema["properties"])


def test_missing_spec_file(tmp_path):
    result = runner.invoke(
        app, ["run", str(tmp_path / "nope.yaml"), "--store", str(tmp_path / "s")]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not (tmp_path / "s").exists()


def test_invalid_spec_writes_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: x\ndatasets: [{name: digits, hierarchy: coarse}]\narchs: [small_cnn]\nseeds: []\n"
    )
    result = runner.invoke(app, ["run", str(spec), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "seeds" in result.output
    assert not (tmp_path / "s").exists()


def test_missing_store(tmp_path):
    for args in (["ls"], ["show", "x"], ["report", "x"]):
        result = runner.invoke(app, [*args, "--store", str(tmp_path / "none")])
        assert result.exit_code == 2, args
        assert "does not exist" in result.output


def test_bad_export_suffix(tmp_path):
    result = runner.invoke(
        app, ["embeddings", "x", "--arch", "a", "--layer", "l", "--out", str(tmp_path / "x.csv")]
    )
    assert result.exit_code == 2
    assert "use .npy, .parquet or .arrow" in result.output
    assert not Path(tmp_path / "x.csv").exists()


def test_tag_and_read_a_layer_as_it_was(tmp_path):
    import numpy as np

    from storage import EmbeddingStore, embeddings_table
    from storage import schema as S
    from tests.factories import embedding_unit

    root = str(tmp_path / "s")
    store = EmbeddingStore(root)
    table = embeddings_table("exp", "net", "fc")
    first, first_values = embedding_unit(3)
    store.write_unit(table, "u1", first, S.embeddings_schema(4))
    result = runner.invoke(app, ["tag", "v1", "--store", root])
    assert result.exit_code == 0, result.output
    assert "tagged 1 tables as 'v1'" in result.output
    second, second_values = embedding_unit(4, run="r1", start=3, seed=1)
    store.write_unit(table, "u2", second)

    def export(*args: str) -> np.ndarray:
        out = tmp_path / "x.npy"
        args = ["embeddings", "exp", "--arch", "net", "--layer", "fc", "--out", str(out), *args]
        result = runner.invoke(app, [*args, "--store", root])
        assert result.exit_code == 0, result.output
        return np.load(out)

    np.testing.assert_array_equal(export("--version", "v1"), first_values)
    np.testing.assert_array_equal(export("--run", "r1"), second_values)
    assert len(export()) == 7

    listed = runner.invoke(app, ["tag", "--store", root])
    assert listed.exit_code == 0
    assert "v1" in listed.output

    bad = runner.invoke(app, ["tag", "a b", "--store", root])
    assert bad.exit_code == 2
    assert "is not allowed" in bad.output
    assert set(store.tags()) == {"v1"}


def test_compact_command_removes_orphans_and_keeps_rows_and_tags(tmp_path):
    from storage import EmbeddingStore, embeddings_table
    from storage import schema as S
    from tests.factories import embedding_unit

    root = str(tmp_path / "s")
    store = EmbeddingStore(root)
    fc, conv = embeddings_table("exp", "net", "fc"), embeddings_table("exp", "net", "conv")
    for table in (fc, conv):
        store.write_unit(table, "u1", embedding_unit(3)[0], S.embeddings_schema(4))
    store.tag(fc, "kept")
    store.write_unit(fc, "u2", embedding_unit(2, start=3)[0])
    store.write_fragments(fc, "orphan", embedding_unit(5, start=5)[0])  # never committed
    data_files = lambda: len(list(Path(store.uri(fc), "data").iterdir()))  # noqa: E731
    before = data_files()
    result = runner.invoke(app, ["compact", "--store", root])
    assert result.exit_code == 0, result.output
    assert "compacted 2 tables, removed" in result.output
    assert "removed 0 B" not in result.output
    assert data_files() < before
    assert store.read(fc).num_rows == 5 and store.read(conv).num_rows == 3
    assert store.embeddings("exp", "net", "fc", version="kept").num_rows == 3
