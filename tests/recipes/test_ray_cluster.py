"""Which environment the GRPO trainer gets to join a Ray cluster (``auth_env``): every
branch, with the variables and token files set up here and the answers written by hand."""

import pytest

from afm_trainer.recipes.grpo.ray_cluster import auth_env

TOKEN = {"RAY_AUTH_MODE": "token"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home (no ~/.ray/auth_token) and none of Ray's auth variables."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def write_token(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret\n")
    return path


def test_no_token_anywhere_asks_for_nothing(home):
    assert auth_env() == {}


def test_a_token_in_the_environment_asks_for_token_auth(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert auth_env() == TOKEN


def test_an_empty_token_variable_is_no_token(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")
    assert auth_env() == {}


def test_the_default_token_file_in_home_asks_for_token_auth(home):
    write_token(home / ".ray" / "auth_token")
    assert auth_env() == TOKEN


def test_a_token_file_named_by_the_variable_asks_for_token_auth(home, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(write_token(tmp_path / "elsewhere" / "tok")))
    assert auth_env() == TOKEN


def test_a_named_token_file_that_is_missing_hides_the_default_one(home, tmp_path, monkeypatch):
    write_token(home / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert auth_env() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path))  # a folder is not a token file
    assert auth_env() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "")  # empty: the default file again
    assert auth_env() == TOKEN


@pytest.mark.parametrize("mode", ["token", "disabled", "DISABLED", "k8s"])
def test_a_mode_the_user_chose_is_left_alone_even_with_a_token(home, monkeypatch, mode):
    write_token(home / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert auth_env() == {}


def test_an_empty_mode_is_no_choice(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert auth_env() == TOKEN


def test_a_blank_token_is_no_token_as_ray_reads_it(home, tmp_path, monkeypatch):
    """Ray 2.60 finds no token in a blank variable or a blank file (token mode then fails
    even against a cluster without authentication), so neither asks for token auth."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", "  ")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(" \n")
    assert auth_env() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    (tmp_path / "empty").write_text("")
    assert auth_env() == {}
    (tmp_path / "empty").write_bytes(b"\xff\xfe-not-text")  # any bytes are a token to Ray
    assert auth_env() == TOKEN
