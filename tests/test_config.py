"""Strict config: defaults <- file <- overrides, and errors that name the file, the key and the fix."""

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args, get_type_hints

import pytest
import yaml

from mmer.config import RANGE, ConfigError, bounded, check_ranges, load_config, parse_override, read_yaml, save_config

SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


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
    for p in SHIPPED:
        assert isinstance(read_yaml(p), dict), p


# -- ranges (issue #12: a queue bound of 0 is refused, not unbounded) ---------------------------
@dataclass(frozen=True)
class Limits:
    workers: int = bounded(2, ge=1, le=8)
    fps: float = bounded(15.0, gt=0, le=120)
    port: Optional[int] = bounded(None, ge=0, le=65535)
    ratio: float = bounded(0.5, ge=0, lt=1)
    sizes: tuple[int, ...] = bounded((1, 2), ge=1)


@dataclass(frozen=True)
class WithLimits:
    limits: Limits = field(default_factory=Limits)


@pytest.mark.parametrize("override, allowed", [
    ("limits.workers=0", "1 <= limits.workers <= 8"),
    ("limits.workers=9", "1 <= limits.workers <= 8"),
    ("limits.fps=0", "0 < limits.fps <= 120"),
    ("limits.fps=.nan", "0 < limits.fps <= 120"),
    ("limits.port=70000", "0 <= limits.port <= 65535"),
    ("limits.ratio=1", "0 <= limits.ratio < 1"),
    ("limits.sizes=[4, 0]", "limits.sizes >= 1"),
])
def test_out_of_range_value_names_source_key_value_and_range(override, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(WithLimits, None, [override])
    msg = str(e.value)
    assert msg.startswith(f"override '{override}': key '{override.split('=')[0]}' = ") and "out of range" in msg
    assert msg.endswith(f"allowed: {allowed}"), msg


def test_range_edges_and_none_pass(tmp_path):
    cfg = load_config(WithLimits, write(tmp_path, {"limits": {"workers": 8, "fps": 120, "port": None}}),
                      ["limits.workers=1", "limits.ratio=0", "limits.port=0"])
    assert (cfg.limits.workers, cfg.limits.fps, cfg.limits.port, cfg.limits.ratio) == (1, 120.0, 0, 0.0)
    assert Limits.workers == 2   # the class attribute stays the plain default


def test_range_error_names_the_file(tmp_path):
    p = write(tmp_path, {"limits": {"workers": 0}})
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: key 'limits.workers' = 0 is out of range"):
        load_config(WithLimits, p)


def test_a_bad_default_is_caught_at_load():
    @dataclass(frozen=True)
    class Broken:
        n: int = bounded(0, ge=1)

    with pytest.raises(ConfigError, match="the defaults of Broken: key 'n' = 0"):
        load_config(Broken)


def test_one_bound_per_side():
    with pytest.raises(TypeError, match="at most one lower bound"):
        bounded(1, ge=0, gt=0)


@pytest.mark.parametrize("override, allowed", [
    ("queues.utterances=0", "1 <= queues.utterances <= 1024"),
    ("segmenter.end_silence_ms=1e9", "10 <= segmenter.end_silence_ms <= 10000"),
    ("outputs.ws_port=99999", "0 <= outputs.ws_port <= 65535"),
    ("face.max_fps=0", "0 < face.max_fps <= 120"),
    ("queues.host_texts=0", "1 <= queues.host_texts <= 4096"),
])
def test_live_config_refuses_out_of_range_values(override, allowed):
    from mmer.realtime.config import load_live_config

    with pytest.raises(ConfigError) as e:
        load_live_config(None, [override])
    assert f"key '{override.split('=')[0]}'" in str(e.value) and str(e.value).endswith(f"allowed: {allowed}")


def test_live_defaults_are_inside_their_ranges_and_every_number_has_one():
    from mmer.realtime.config import LiveConfig, load_live_config

    cfg = load_live_config()
    check_ranges(cfg, "LiveConfig defaults")
    assert cfg == LiveConfig()
    unbounded = []
    for section in dataclasses.fields(cfg):
        cls = type(getattr(cfg, section.name))
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            numeric = {int, float} & {hints[f.name], *get_args(hints[f.name])}
            if numeric and RANGE not in f.metadata:
                unbounded.append(f"{section.name}.{f.name}")
    assert not unbounded, f"numeric live settings without a range: {unbounded}"


def _stage_of(path):
    """The training stage a shipped recipe belongs to, from its name."""
    for word, stage in (("teacher", "teacher"), ("student", "student"), ("voice", "student"), ("fusion", "fusion")):
        if word in path.stem:
            return stage
    return "msa"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_load_with_every_value_in_range(path):
    if path.stem == "live":
        from mmer.realtime.config import load_live_config

        cfg = load_live_config(path)
    elif path.stem == "export":
        from mmer.export.config import load_export_config

        cfg = load_export_config(path)
    else:
        from mmer.training.recipes import load_recipe

        cfg = load_recipe(_stage_of(path), path)
    check_ranges(cfg, str(path))
