"""The live path serves through mmer.runtime: no torch.ao quantization anywhere on it, and no
deprecation warning when the default stack starts on ONNX Runtime."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

from tests.realtime.test_predictor import (tiny_checkpoints, tiny_face_student, tiny_asf, tiny_teacher,  # noqa: F401
                                           tiny_voice)

LIVE_PATH = ("realtime", "mmer/serving.py", "mmer/runtime.py", "mmer/contract.py", "mmer/face.py")
ROOT = Path(__file__).resolve().parents[2]


def test_no_torch_ao_on_the_live_path():
    files = [p for entry in LIVE_PATH for p in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir()
                                               else [ROOT / entry])]
    assert len(files) > 10
    offenders = [str(p.relative_to(ROOT)) for p in files if "torch.ao" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_stack_starts_on_onnxruntime_without_deprecation_warnings(tiny_checkpoints, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("onnxruntime")
    from mmer.realtime.config import ModelsConfig
    from mmer.realtime.predictor import load_stack

    monkeypatch.setenv("MMER_CACHE", str(tmp_path / "cache"))
    models = dataclasses.replace(ModelsConfig(), text=str(tiny_checkpoints["text"]),
                                 voice=str(tiny_checkpoints["voice"]), face=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor, _ = load_stack(models)
    deprecated = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()
                  or issubclass(w.category, DeprecationWarning)]
    assert deprecated == []
    assert predictor.text.runtime_name == predictor.voice.runtime_name == "onnxruntime"
    assert predictor.text.precision == "int8" and predictor.voice.precision == "int8"
    assert sorted(p.name.split("-onnx")[0] for p in (tmp_path / "cache" / "exports").iterdir()) == ["text", "voice"]
    predictor.close()


def test_a_bad_runtime_name_gets_the_closest_one(tiny_checkpoints):  # noqa: F811
    from mmer.serving import serve

    with pytest.raises(KeyError, match="did you mean 'tensorrt-rtx'"):
        serve(tiny_checkpoints["text"], runtime="tensorrt-rtz")
