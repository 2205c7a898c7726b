"""Checkpoint I/O: safetensors + mmer.json, dims inside, no YAML needed, pickles refused."""

import json
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mmer
from mmer.checkpoint import META, WEIGHTS, CheckpointError, load_checkpoint, read_meta, save_checkpoint
from mmer.models.base import MmerModel
from mmer.outputs import EmotionOutput
from mmer.registry import MODELS


@dataclass(frozen=True)
class TinyDims:
    label_set: str = "meld7"
    num_labels: int = 7
    in_dim: int = 5
    hidden: int = 4


@MODELS.register("_test_tiny")
class Tiny(MmerModel):
    """A small net whose decoder shares the encoder's weight tensor (tied, as in HF models)."""

    registry_name = "_test_tiny"
    Dims = TinyDims

    def __init__(self, dims):
        super().__init__(dims)
        self.enc = nn.Linear(dims.in_dim, dims.hidden)
        self.dec = nn.Linear(dims.in_dim, dims.hidden)
        self.dec.weight = self.enc.weight  # tied: safetensors stores it once
        self.head = nn.Linear(dims.hidden, dims.num_labels)

    def forward(self, x):
        h = torch.tanh(self.enc(x) + self.dec(x))
        return EmotionOutput.from_logits(self.head(h), features={"h": h})


def test_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = Tiny(TinyDims(hidden=6)).eval()
    save_checkpoint(model, tmp_path / "ck", provenance={"data": "none", "note": "unit test"})
    loaded = mmer.load(tmp_path / "ck")
    x = torch.randn(3, 5)
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert loaded.dims == TinyDims(hidden=6)  # dims came from mmer.json, not from any YAML
    assert loaded.checkpoint_meta["provenance"]["note"] == "unit test"
    assert not loaded.training


def test_load_from_file_inside_folder(tmp_path):
    save_checkpoint(Tiny(TinyDims()), tmp_path / "ck")
    assert isinstance(mmer.load(tmp_path / "ck" / WEIGHTS), Tiny)
    assert isinstance(mmer.load(tmp_path / "ck" / META), Tiny)


def test_fp16_checkpoint_is_smaller_and_loads_as_fp32(tmp_path):
    model = Tiny(TinyDims(in_dim=64, hidden=64))
    save_checkpoint(model, tmp_path / "a")
    save_checkpoint(model, tmp_path / "b", dtype=torch.float16)
    assert (tmp_path / "b" / WEIGHTS).stat().st_size < 0.6 * (tmp_path / "a" / WEIGHTS).stat().st_size
    loaded = mmer.load(tmp_path / "b")
    assert loaded.head.weight.dtype == torch.float32
    assert read_meta(tmp_path / "b")["weights_dtype"] == "float16"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_pickle_files_are_refused(tmp_path, suffix):
    p = tmp_path / f"model{suffix}"
    torch.save({"x": 1}, p)
    with pytest.raises(CheckpointError, match="pickle.*arbitrary code.*save_checkpoint"):
        mmer.load(p)


def test_unknown_name_lists_embedded_defaults(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder and no embedded default"):
        mmer.load("no-such-model")


def test_bad_metadata_is_named(tmp_path):
    ck = save_checkpoint(Tiny(TinyDims()), tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta["dims"]["hiden"] = 3
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"mmer.json.*unknown key 'hiden'.*'hidden'"):
        load_checkpoint(ck)
    (ck / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ck)


def test_weights_that_do_not_match_the_dims_are_refused(tmp_path):
    ck = save_checkpoint(Tiny(TinyDims(hidden=4)), tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta["dims"]["num_labels"] = 3
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(Exception, match="size mismatch|do not match"):
        load_checkpoint(ck)


def test_unknown_model_name_is_named(tmp_path):
    ck = save_checkpoint(Tiny(TinyDims()), tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta["model"] = "techer"
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="unknown model 'techer'"):
        load_checkpoint(ck)


# -- broken files end in one message naming the file and the fix (issue #12) -----------------
def _break_weights(ck, how):
    weights = ck / WEIGHTS
    if how == "pickle":
        torch.save({"enc.weight": torch.zeros(4, 5)}, weights)   # a pickle under the safetensors name
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) - 7])
    elif how == "empty":
        weights.write_bytes(b"")
    return weights


def _break_meta(ck, how):
    path = ck / META
    meta = json.loads(path.read_text())
    if how == "invalid json":
        path.write_text("{not json")
        return path
    del meta[how.removeprefix("no ")]
    path.write_text(json.dumps(meta))
    return path


BROKEN = [("weights", "pickle", "not a safetensors file .*starts like a Python pickle; mmer never loads pickles"),
          ("weights", "truncated", r"truncated: header says (\d+) bytes, file has (?!\1)\d+"),
          ("weights", "empty", r"empty file \(0 bytes\)"),
          ("meta", "no model", "mmer.json has no 'model'"),
          ("meta", "no dims", "mmer.json has no 'dims'"),
          ("meta", "invalid json", "not valid JSON")]


@pytest.mark.parametrize("part, how, what", BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_checkpoint_names_the_file_and_the_fix(tmp_path, part, how, what):
    ck = save_checkpoint(Tiny(TinyDims()), tmp_path / "ck")
    bad = (_break_weights if part == "weights" else _break_meta)(ck, how)
    with pytest.raises(CheckpointError) as caught:
        mmer.load(ck)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ")
    assert re.search(what, message), message
    assert "re-download/re-train" in message
    assert isinstance(caught.value, ValueError) and caught.value.exit_code == 2


def test_dims_are_never_defaulted(tmp_path):
    ck = save_checkpoint(Tiny(TinyDims(hidden=6)), tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta["dims"] = {}
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'dims' must be the model's sizes"):
        mmer.load(ck)


@pytest.mark.parametrize("part, how, what", BROKEN, ids=[b[1] for b in BROKEN])
def test_mmer_eval_reports_a_broken_checkpoint_in_one_line(tmp_path, capsys, part, how, what):
    from mmer.training.cli import eval_main

    ck = save_checkpoint(Tiny(TinyDims()), tmp_path / "ck")
    bad = (_break_weights if part == "weights" else _break_meta)(ck, how)
    code = eval_main([str(ck), "--data", "ravdess", "--data-root", str(tmp_path / "no-data"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"mmer-eval: {bad}: " in err and re.search(what, err), err
    assert "Traceback" not in err
