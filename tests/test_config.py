"""Configuration: the reference file, loading, and every kind of config error."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from chatty.cli import main
from chatty.config import Config, load_config, parse_config, render_reference, resolve_paths
from chatty.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_reference_file_matches_defaults():
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    assert text == render_reference(), "regenerate it with: python -m chatty.config > config.toml"
    assert tomllib.loads(text) == asdict(Config())


def test_reference_file_documents_every_key():
    lines = (REPO / "config.toml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), f"key without a comment: {line}"


def test_user_file_overrides_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[generation]\ntemperature = 0\n[keys]\nnew_conversation = "alt+n"\n', encoding="utf-8")
    config = load_config(path)
    assert config.generation.temperature == 0.0
    assert isinstance(config.generation.temperature, float)
    assert config.keys.new_conversation == "alt+n"
    assert config.model.backend == "llama"


def test_missing_default_file_means_defaults(chatty_home):
    assert not (chatty_home / "config.toml").exists()
    assert load_config() == Config()


def test_chatty_home_holds_user_config(chatty_home):
    (chatty_home / "config.toml").write_text("[model]\nn_ctx = 1024\n", encoding="utf-8")
    assert load_config().model.n_ctx == 1024


def test_chatty_home_sets_data_folder(chatty_home):
    paths = resolve_paths(Config())
    assert paths.data_dir == chatty_home
    assert paths.db_file == chatty_home / "chatty.db"
    assert paths.adapters_dir == chatty_home / "adapters"
    assert chatty_home / "models" in paths.model_dirs


CONFIG_ERRORS = [
    # (file text, expected pieces of the message)
    ("[model]\nbackend = \n", ["config.toml:2:", "invalid TOML"]),
    ("[model]\nbackend = 'llama'\nbackend = 'torch'\n", ["config.toml:3:", "invalid TOML"]),
    ("[model]\nbackned = 'llama'\n", ["config.toml:2:", "unknown key 'model.backned'", "Valid keys in [model]"]),
    ("[modle]\nbackend = 'llama'\n", ["config.toml:1:", "unknown section 'modle'"]),
    ("[generation]\ntemperature = 'hot'\n", ["config.toml:2:", "'generation.temperature' must be a number", "a string"]),
    ("[model]\nn_ctx = 4096.5\n", ["config.toml:2:", "'model.n_ctx' must be an integer"]),
    ("[model]\nn_ctx = true\n", ["config.toml:2:", "'model.n_ctx' must be an integer", "a boolean"]),
    ("[paths]\nmodel_dirs = 'models'\n", ["config.toml:2:", "'paths.model_dirs' must be a list of strings"]),
    ("[model]\nbackend = 'vllm'\n", ["config.toml:2:", "'model.backend' must be one of", "'vllm'"]),
    ("[generation]\ntop_p = 1.5\n", ["config.toml:2:", "'generation.top_p' must be at most 1.0"]),
    ("model = 'x'\n", ["config.toml:1:", "'model' must be a table"]),
    ("[model]\nn_ctx = 10\n", ["config.toml:2:", "'model.n_ctx' must be 0 or at least 256, not 10"]),
    ("[keys]\nsend = 'ctrl+nonsense'\n", ["config.toml:2:", "'keys.send' has an invalid key 'ctrl+nonsense'"]),
    ("[keys]\nsend = 'f5'\n", ["config.toml:2:", "the key 'f5' is bound to both 'keys.send' and 'keys.copy_reply'"]),
]


@pytest.mark.parametrize("text,expected", CONFIG_ERRORS)
def test_config_error_message(tmp_path, text, expected):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    for piece in expected:
        assert piece in message
    assert str(path) in message


@pytest.mark.parametrize("text,expected", CONFIG_ERRORS[:4])
def test_config_error_exit_status(tmp_path, capsys, text, expected):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    status = main(["--config", str(path), "list"])
    captured = capsys.readouterr()
    assert status == 2
    assert expected[1] in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_missing_config_file_is_an_error(tmp_path, capsys):
    status = main(["--config", str(tmp_path / "nope.toml"), "list"])
    assert status == 2
    assert "Config file not found" in capsys.readouterr().err


def test_config_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"[ui]\ntheme = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)


def test_parse_config_keeps_other_defaults():
    config = parse_config("[ui]\ntheme = 'nord'\n")
    assert config.ui.theme == "nord"
    assert config.generation == Config().generation


def test_keys_accept_textual_names():
    config = parse_config("[keys]\nhelp = 'ctrl+question_mark,f12'\nquit = 'ctrl+w'\nnew_conversation = 'alt+n'\n")
    assert config.keys.help == "ctrl+question_mark,f12"
    assert config.keys.new_conversation == "alt+n"
