"""The live path serves through mmer.runtime: no torch.ao quantization anywhere on it, and no
deprecation warning when the default stack starts on ONNX Runtime."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
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


@pytest.mark.gpu
@pytest.mark.parametrize("fmt, runtime", [("trt-fp16", "tensorrt"), ("trtrtx-fp16", "tensorrt-rtx"), ("", "torch")])
def test_live_predictor_on_gpu_backends(fmt, runtime, tiny_teacher, tmp_path):  # noqa: F811
    """The live predictor on TensorRT / TensorRT-RTX engines and on torch CUDA graphs gives the
    CPU torch label for the same turns (needs an NVIDIA GPU; TensorRT-RTX engines need compute
    capability 8.0/8.6/8.9/12.x)."""
    import torch

    from mmer.dialogue import Turn
    from mmer.realtime.frames import Utterance
    from mmer.realtime.predictor import Predictor
    from mmer.serving import serve

    turns = [Turn("user", "I cannot believe you did that!"), Turn("robot", "I am sorry."), Turn("user", "Whatever.")]
    utt = Utterance(0, 0.0, 1.0, np.zeros(16_000, np.float32), text=turns[-1].text)
    reference = Predictor(tiny_teacher).predict(utt, turns)
    if fmt:
        from mmer.export import export

        export(tiny_teacher, fmt, tmp_path / fmt, ("parity.num_samples=2", "parity.f1_utterances=0"))
        served = serve(tmp_path / fmt, runtime=runtime)
    else:
        import copy

        served = serve(copy.deepcopy(tiny_teacher).to("cuda"), "torch", device="cuda", cuda_graphs=True)
    got = Predictor(served).predict(utt, turns)
    assert served.runtime_name == runtime and got.label == reference.label
    np.testing.assert_allclose(list(got.probs.values()), list(reference.probs.values()), atol=2e-2)
    torch.cuda.synchronize()
