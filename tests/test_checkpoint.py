"""Checkpoint I/O: safetensors + mmer.json, dims inside, no YAML needed, pickles refused."""

import json
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
