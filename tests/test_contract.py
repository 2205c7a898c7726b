"""A model added in this one file exports, serves live and benchmarks with no edit anywhere else.

``ToyVoice`` declares its contract (mmer.contract) and registers itself; nothing in export/,
realtime/, training/ or the runtimes knows its name. The test exports it to ONNX (parity gates),
serves the export through ONNX Runtime in the real live pipeline on espeak-ng speech, checks that
torch and ONNX Runtime give the same label for the same utterance, and benchmarks the export.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mmer.contract import BATCH, Contract, Processor, SequenceAxis, TensorSpec
from mmer.media import SAMPLE_RATE_HZ
from mmer.models.base import MmerModel
from mmer.outputs import EmotionOutput
from mmer.registry import MODELS
from mmer.samples import audio_samples

pytest.importorskip("onnxruntime")

FRAME = 400          # 25 ms frames at 16 kHz


@dataclass(frozen=True)
class ToyVoiceDims:
    label_set: str = "meld7"
    num_labels: int = 7
    kd_dim: int = 8
    max_audio_s: float = 8.0


class ToyProcessor(Processor):
    """A waveform (n,) -> waveform / attention_mask (1, n), cut to the model's cap."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples

    def inputs(self, raw: Any, **context: Any) -> dict:
        wav = np.asarray(raw, np.float32).reshape(-1)[:self.max_samples][None]
        return {"waveform": wav, "attention_mask": np.ones(wav.shape, np.int64)}


@MODELS.register("toy_voice")
class ToyVoice(MmerModel):
    """Log energy and zero-crossing statistics of 25 ms frames -> a feature -> 7 classes."""

    registry_name = "toy_voice"
    Dims = ToyVoiceDims
    modality = "audio"

    def __init__(self, dims: ToyVoiceDims) -> None:
        super().__init__(dims)
        self.proj = nn.Linear(4, dims.kd_dim)
        self.classifier = nn.Linear(dims.kd_dim, dims.num_labels)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor) -> EmotionOutput:
        n = waveform.shape[1] // FRAME * FRAME
        frames = (waveform[:, :n] * attention_mask[:, :n].to(waveform.dtype)).reshape(waveform.shape[0], -1, FRAME)
        energy = torch.log(frames.pow(2).mean(-1) + 1e-6)
        crossings = (frames[..., 1:] * frames[..., :-1] < 0).float().mean(-1)
        stats = torch.stack([energy.mean(1), energy.std(1), crossings.mean(1), crossings.std(1)], dim=-1)
        feature = torch.tanh(self.proj(stats))
        return EmotionOutput.from_logits(self.classifier(feature), {"audio": feature})

    def build_contract(self) -> Contract:
        wave = (BATCH, "samples")
        cap = int(self.dims.max_audio_s * SAMPLE_RATE_HZ)
        return Contract("toy_voice", "audio", (TensorSpec("waveform", "float32", wave),
                                               TensorSpec("attention_mask", "int64", wave)),
                        feature="audio", sequence=SequenceAxis("audio", cap, SAMPLE_RATE_HZ))

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: Any = None) -> list:
        clips = audio_samples(n, seed, data_root, *(audio_range_s or (1.0, 3.0)), speech=data == "meld-dev")
        return [self.processor().inputs(c["waveform"][0]) for c in clips]

    def example_batch(self, samples: list) -> dict:
        n = min(s["waveform"].shape[1] for s in samples[:2])
        return super().example_batch([{k: v[:, :n] for k, v in s.items()} for s in samples[:2]])

    @classmethod
    def processor_for(cls, dims: ToyVoiceDims, folder: Any = None, card: dict | None = None) -> Processor:
        return ToyProcessor(int(dims.max_audio_s * SAMPLE_RATE_HZ))


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return ToyVoice(ToyVoiceDims()).eval()


@pytest.fixture(scope="module")
def toy_export(toy, tmp_path_factory, shared_dir):
    from mmer.export import export

    folder = tmp_path_factory.mktemp("toy-onnx")
    result = export(toy, "onnx", folder, ("parity.num_samples=3", "parity.audio_range_s=[0.5, 2.0]"),
                    data_root=shared_dir / "data")
    assert result.passed is True, result.parity["gates"]
    return folder


def test_the_contract_drives_the_export(toy, toy_export):
    card = json.loads((toy_export / "model.json").read_text())
    assert card["model"] == "toy_voice" and card["modality"] == "audio"
    assert card["inputs"] == [{"name": "waveform", "dtype": "float32", "shape": ["batch", "samples"]},
                              {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "samples"]}]
    assert card["outputs"] == ["logits", "probs", "audio"]


def test_same_utterance_same_label_through_torch_and_onnxruntime(toy, toy_export):
    from mmer.realtime.frames import Utterance
    from mmer.realtime.predictor import Predictor
    from mmer.serving import serve

    wav = audio_samples(1, seed=5, min_s=2.0, max_s=2.5)[0]["waveform"][0]
    served = serve(toy_export)
    assert served.runtime_name == "onnxruntime" and served.name == "toy_voice"
    by = {}
    for name, model in (("torch", toy), ("onnxruntime", served)):
        pred = Predictor(voice_model=model).predict(Utterance(0, 0.0, len(wav) / SAMPLE_RATE_HZ, wav))
        by[name] = pred
        assert pred.modalities == ["audio"]
    assert by["torch"].label == by["onnxruntime"].label
    np.testing.assert_allclose(list(by["torch"].probs.values()), list(by["onnxruntime"].probs.values()), atol=1e-4)


def test_the_export_serves_the_live_pipeline(toy_export, tmp_path, tmp_path_factory):
    from mmer.realtime.config import AsrConfig, LiveConfig, ModelsConfig, OutputConfig
    from mmer.realtime.build import build_pipeline
    from mmer.realtime.predictor import load_stack
    from mmer.realtime.sources import FileSource
    from tests.realtime import media

    if media.missing_tools():
        pytest.skip(f"needs {media.missing_tools()} on PATH")
    turns = ("I lost my keys on the train this morning.", "That is great news!")
    wav, _ = media.cached(tmp_path_factory, "toy-conv.wav", lambda p: media.make_conversation_wav(p, turns), turns)
    models = dataclasses.replace(ModelsConfig(), text=None, face=None, voice=str(toy_export))
    cfg = LiveConfig(models=models, asr=AsrConfig(backend="none", text_wait_s=0.0),
                     outputs=OutputConfig(json=str(tmp_path / "out.jsonl")))
    predictor, face = load_stack(cfg.models)
    assert predictor.voice.runtime_name == "onnxruntime" and face is False
    pipe = build_pipeline(cfg, predictor=predictor, face_model=None, lockstep=True)
    got: list = []
    pipe.on_prediction(got.append)
    source = FileSource(wav, realtime=False).open()
    try:
        pipe.run(source)
    finally:
        source.close()
        pipe.close()
    assert len(got) == len(turns)
    assert [p.modalities for p in got] == [["audio"]] * len(turns)
    assert all("voice" in p.latency_ms and p.label in p.probs for p in got)


def test_the_export_benchmarks(toy_export, tmp_path):
    from mmer.export.bench import bench_models_main

    out = tmp_path / "bench.json"
    assert bench_models_main(["models", str(toy_export), "--json", str(out), "--runs", "5", "--warmup", "1",
                              "--no-reference", "--device", "cpu"]) == 0
    rows = json.loads(out.read_text())["devices"][0]["rows"]
    assert [(r["backend"], r["precision"]) for r in rows] == [("onnxruntime", "fp32")]
    assert rows[0]["runs"] == 5 and rows[0]["p50_ms"] > 0


def test_a_model_without_a_contract_is_refused_by_name():
    from mmer.contract import ContractError
    from mmer.models.late_fusion import LateFusion, LateFusionDims

    fusion = LateFusion(LateFusionDims(modalities=("text", "audio"), source_label_sets=("meld7", "meld7"),
                                       base_weights=(1.0, 1.0)))
    with pytest.raises(ContractError, match="declares no contract"):
        fusion.contract()
