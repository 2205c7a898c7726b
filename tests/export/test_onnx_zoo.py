"""ONNX export of every zoo model (tiny random-weight configs) with parity against torch in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mmer.export import export, load_runtime  # noqa: E402
from mmer.export.onnx_export import CARD_FILE, MODEL_FILE, TOKENIZER_DIR  # noqa: E402
from mmer.runtime import TorchRuntime  # noqa: E402
from mmer.contract import collate  # noqa: E402
from mmer.models.asf import ASF, ASFDims  # noqa: E402
from mmer.models.audio_student import AudioStudent, AudioStudentDims  # noqa: E402
from mmer.models.visual_student import VisualStudent, VisualStudentDims  # noqa: E402

TINY_KD = 16
TINY_HIDDEN = 32
FP32_TOL = 1e-4             # the FP32 parity gate
FAST_PARITY = ("parity.num_samples=3", "parity.f1_utterances=0")
SHORT_AUDIO = ("parity.audio_range_s=[0.5, 2.0]",)  # short clips keep the tests fast


def tiny_teacher(encoder_dir):
    from mmer.models.teacher import Teacher, TeacherDims

    torch.manual_seed(0)
    return Teacher.from_pretrained(TeacherDims(encoder=str(encoder_dir), kd_dim=TINY_KD, max_tokens=128)).eval()


def tiny_audio(family: str) -> AudioStudent:
    torch.manual_seed(0)
    if family == "edge":
        return AudioStudent(AudioStudentDims.for_edge(kd_dim=TINY_KD, stem_channels=16, block_channels=(16, 24),
                                                      block_strides=(1, 2))).eval()
    from transformers import Data2VecAudioConfig

    config = Data2VecAudioConfig(hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 4, 16),
                                 conv_kernel=(10, 4, 16), num_conv_pos_embeddings=2, conv_pos_kernel_size=5,
                                 num_conv_pos_embedding_groups=2)
    return AudioStudent(AudioStudentDims.for_hf("", kd_dim=TINY_KD), encoder_config=config).eval()


def tiny_visual(family: str) -> VisualStudent:
    torch.manual_seed(0)
    if family == "edge":
        return VisualStudent(VisualStudentDims(kd_dim=TINY_KD)).eval()
    from transformers import TimesformerConfig

    config = TimesformerConfig(image_size=32, patch_size=16, num_frames=8, hidden_size=TINY_HIDDEN,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return VisualStudent(VisualStudentDims(family="hf", kd_dim=TINY_KD, image_size=32), encoder_config=config).eval()


def tiny_asf() -> ASF:
    torch.manual_seed(0)
    return ASF(ASFDims(kd_dim=24, num_heads=3)).eval()


STUDENTS = {"audio-edge": lambda: tiny_audio("edge"), "audio-hf": lambda: tiny_audio("hf"),
            "visual-edge": lambda: tiny_visual("edge"), "visual-hf": lambda: tiny_visual("hf"), "asf": tiny_asf}


def _check_export(model, folder, meld_root) -> dict:
    result = export(model, "onnx", folder, FAST_PARITY + SHORT_AUDIO, data_root=meld_root)
    report = json.loads((folder / "parity.json").read_text())
    assert report["passed"] is True, report["gates"]
    for name, out in report["outputs"].items():
        assert out["max_abs"] <= FP32_TOL, (name, out)
    assert report["top1_agreement"] == 1.0
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["model"] == model.registry_name and card["precision"] == "fp32"
    assert card["labels"] and card["dims"] == model.dims_dict()
    assert card["outputs"] == ["logits", "probs", result.card["feature"]]
    import onnx

    proto = onnx.load(str(folder / MODEL_FILE))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["mmer.model"] == model.registry_name and json.loads(props["mmer.card"])["feature"] == card["feature"]
    batch_dims = [i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input]
    assert all(d == "batch" for d in batch_dims), batch_dims
    return card


@pytest.fixture(scope="module")
def meld_root(shared_dir):
    return shared_dir / "data"


@pytest.mark.parametrize("name", list(STUDENTS))
def test_student_and_fusion_onnx_parity(name, tmp_path, meld_root):
    model = STUDENTS[name]()
    card = _check_export(model, tmp_path, meld_root)
    # another batch size than the traced one, through the one runtime interface
    samples = model.example_inputs(3, seed=7, data_root=meld_root, audio_range_s=(0.5, 1.5))
    if not card["padding_exact"]:
        n = min(s["waveform"].shape[1] for s in samples)
        samples = [{k: v[:, :n] for k, v in s.items()} for s in samples]
    batch = collate(samples)
    ref = TorchRuntime(model)(**batch)
    got = load_runtime("onnxruntime", tmp_path)(**batch)
    for key in ("logits", "probs", "feature"):
        np.testing.assert_allclose(got[key], ref[key], atol=FP32_TOL, rtol=0)
    if name == "visual-hf":
        assert card["inputs"][0]["shape"][1] == 8  # the video encoder's frame count is fixed
    if name == "visual-edge":                   # crop by crop: any frame count, one included
        assert card["inputs"][0]["shape"][1] == "frames"
        one = {"frames": batch["frames"][:1, :1], "frame_mask": np.ones((1, 1), bool)}
        np.testing.assert_allclose(load_runtime("onnxruntime", tmp_path)(**one)["probs"],
                                   TorchRuntime(model)(**one)["probs"], atol=FP32_TOL, rtol=0)


def test_teacher_onnx_parity_and_self_describing_folder(tmp_path, meld_root, tiny_text_encoder_dir):
    from transformers import AutoTokenizer

    from mmer.dialogue import DialoguePrompt, Turn

    model = tiny_teacher(tiny_text_encoder_dir)
    card = _check_export(model, tmp_path, meld_root)
    assert card["feature"] == "text" and card["inputs"][0]["shape"] == ["batch", "tokens"]
    # the tokenizer beside the graph rebuilds the exact prompt ids
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / TOKENIZER_DIR))
    prompt = DialoguePrompt(tokenizer, card["prompt"]["num_speaker_tokens"], card["prompt"]["max_tokens"],
                            card["prompt"]["prompt_template"])
    turns = [Turn("Ross", "We were on a break!"), Turn("Rachel", "Oh, here we go again.")]
    assert prompt.encode(turns)["input_ids"] == model.prompt.encode(turns)["input_ids"]
    ids = np.asarray([prompt.encode(turns)["input_ids"]])
    out = load_runtime("onnxruntime", tmp_path)(input_ids=ids.astype(np.int32), attention_mask=np.ones_like(ids))
    assert out["probs"].shape == (1, 7) and np.allclose(out["probs"].sum(-1), 1.0, atol=1e-5)


def test_non_zoo_model_is_refused(tmp_path):
    from mmer.export.onnx_export import ExportError

    with pytest.raises(ExportError, match="declare a contract"):
        export(torch.nn.Linear(2, 2), "onnx", tmp_path)
