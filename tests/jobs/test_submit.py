"""Job submission helpers that need no cluster: where the auth token comes from."""

from jobs import submit


def test_token_from_env_then_path_then_none(tmp_path, monkeypatch):
    monkeypatch.setattr(submit, "DEFAULT_TOKEN_PATH", tmp_path / "absent")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert submit.auth_token() == "from-file"
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert submit.auth_token() is None
