"""CLI error handling: one clear sentence, exit code 2, nothing written."""

from pathlib import Path

from typer.testing import CliRunner

from jobs.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "ls", "show", "embeddings", "report"):
        assert command in result.output


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
