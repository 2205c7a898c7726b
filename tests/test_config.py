"""Strict config: defaults <- file <- overrides, and errors that name the file, the key and the fix."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from mmer.config import ConfigError, load_config, parse_override, read_yaml, save_config


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-5
    warmup_ratio: float = 0.06
    clip_norm: float = 10.0


@dataclass(frozen=True)
class Cfg:
    name: str = "run"
    epochs: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    labels: tuple[str, ...] = ("a", "b")
    limit: Optional[int] = None
    optim: Optim = field(default_factory=Optim)


def write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_file_overrides_layering(tmp_path):
    p = write(tmp_path, {"epochs": 3, "optim": {"lr": 2e-5}})
    cfg = load_config(Cfg, p, ["optim.clip_norm=1", "name=x", "limit=50"])
    assert cfg.epochs == 3 and cfg.optim.lr == 2e-5  # from the file
    assert cfg.optim.clip_norm == 1.0 and isinstance(cfg.optim.clip_norm, float)  # override, int widened
    assert cfg.optim.warmup_ratio == 0.06  # default kept inside a partly-set section
    assert cfg.name == "x" and cfg.limit == 50


def test_unknown_key_names_file_key_and_closest(tmp_path):
    p = write(tmp_path, {"optim": {"lrr": 1e-4}})
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert str(p) in msg and "optim.lrr" in msg and "'lr'" in msg


def test_unknown_top_level_key_from_override():
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'.*'epochs'"):
        load_config(Cfg, None, ["epoch=3"])


@pytest.mark.parametrize("override, key", [
    ("epochs=three", "epochs"),
    ("epochs=2.5", "epochs"),
    ("optim.lr=fast", "optim.lr"),
    ("precision=fp8", "precision"),
    ("optim=3", "optim"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, [override])
    assert f"'{key}'" in str(e.value)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="epochs"):
        load_config(Cfg, None, ["epochs=true"])


def test_scientific_notation_override_is_a_float():
    assert parse_override("optim.lr=2e-5") == (["optim", "lr"], 2e-5)
    assert load_config(Cfg, None, ["optim.lr=2e-5"]).optim.lr == 2e-5


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Cfg, bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Cfg, None, ["labels=[x, y, z]", "optim.lr=3e-4"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert read_yaml(path)["labels"] == ["x", "y", "z"]
    assert load_config(Cfg, path) == cfg


def test_shipped_configs_are_valid_yaml():
    from pathlib import Path

    for p in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        assert isinstance(read_yaml(p), dict), p
