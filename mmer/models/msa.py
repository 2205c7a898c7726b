"""What the multimodal sentiment models (DERL, MMILN, CENet, CMATH) share.

These models read the CMU-MOSI / MOSEI inputs of MMSA's pickles (REFERENCE.md section 3):
a text sequence, an acoustic sequence and a visual sequence per utterance. They predict a
sentiment score in [-3, 3] (``num_outputs == 1``, label set ``"regression"``) or, for CMATH on
MELD/IEMOCAP features, class logits (``num_outputs == len(label set)``).

Text comes in one of two forms, chosen by ``dims.text_encoder``:

* ``"features"``: the pickle's precomputed BERT sequence ``text`` (B, L, text_dim), used as is
  (cheap: no language model runs; what most MMSA baselines call "unaligned features");
* ``"minilm"`` (the packaged MiniLM-L6), a local Hugging Face folder or a hub name: a language
  model fine-tuned on the pickle's ``text_bert`` token ids (B, L), as the papers fine-tune BERT.
  MiniLM-L6 shares bert-base-uncased's WordPiece vocabulary, so MMSA's ids feed it directly.

Every model takes the same inputs and returns :class:`mmer.outputs.MsaOutput`::

    out = model(text, text_mask, audio, audio_lengths, vision, vision_lengths)
    loss, parts = model.loss(out, labels, index)

``index`` is each sample's position in its split (MMILN's unimodal label memory uses it).
``prepare(train)`` is called once by the training stage before the first step, with the
training split's arrays (CENet fits its k-means vocabularies there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmer.labels import get_label_set
from mmer.contract import BATCH, OUTPUTS, SCORE_OUTPUTS, Contract, Processor, TensorSpec
from mmer.models.base import MmerModel
from mmer.outputs import MsaOutput

REGRESSION = "regression"       # label_set of the sentiment models: one score in [-3, 3]
SENTIMENT_RANGE = 3.0           # CMU-MOSI/MOSEI labels lie in [-3, 3]
TEXT_FEATURES = "features"      # dims.text_encoder: use the pickle's precomputed BERT sequence
ENCODER_ASSETS = "encoder"      # checkpoint sub-folder holding the language model's config


@dataclass(frozen=True)
class MsaDims:
    """The fields every sentiment model's Dims starts with (each model's Dims subclasses this).

    label_set: "regression" (one score) or a classification label set (e.g. meld7);
    num_outputs: 1, or the number of classes; text_encoder: "features" or a language model (see
    the module docstring); text_dim / audio_dim / vision_dim: input feature widths (MOSI
    768 / 5 / 20, MOSEI 768 / 74 / 35)."""

    label_set: str = REGRESSION
    num_outputs: int = 1
    text_encoder: str = TEXT_FEATURES
    text_dim: int = 768
    audio_dim: int = 5
    vision_dim: int = 20


def check_outputs(label_set: str, num_outputs: int) -> None:
    """Refuse dims whose output width does not fit their label set."""
    if label_set == REGRESSION:
        if num_outputs != 1:
            raise ValueError(f"label_set '{REGRESSION}' predicts one score; num_outputs is {num_outputs}")
        return
    n = len(get_label_set(label_set))
    if num_outputs != n:
        raise ValueError(f"label set '{label_set}' has {n} classes, num_outputs is {num_outputs}")


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) int lengths -> (B, max_len) bool, True at valid steps. A length of 0 keeps step 0
    valid, so that pooling and attention never see an all-masked row (MMSA pads empty clips)."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.clamp(min=1).unsqueeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid time steps. x: (B, L, D); mask: (B, L) bool. Returns (B, D)."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class TextBackbone(nn.Module):
    """The text input of a sentiment model: identity on precomputed features, or a language model.

    ``name == "features"``: forward((B, L, D) float, mask) returns it unchanged; ``width`` = D.
    Otherwise a Hugging Face encoder: forward((B, L) int64 ids, (B, L) mask) returns its last
    hidden state (B, L, H); built from ``encoder_config`` with random weights (checkpoint
    loading, tiny test models) or loaded from ``name`` (pretrained; local folders offline).
    """

    def __init__(self, name: str, feature_dim: int, encoder_config: Any = None) -> None:
        super().__init__()
        self.name = name
        self.encoder: nn.Module | None = None
        if name == TEXT_FEATURES:
            self.width = feature_dim
            return
        from mmer.models.teacher import _encoder_from_config, _encoder_from_pretrained, resolve_encoder

        if encoder_config is not None:
            self.encoder = _encoder_from_config(encoder_config)
        else:
            path, local_only = resolve_encoder(name)
            try:
                self.encoder = _encoder_from_pretrained(path, local_only)
            except OSError as e:
                raise FileNotFoundError(f"text encoder '{name}' could not be loaded from {path} "
                                        f"(local_files_only={local_only}): {e}. mmer never downloads weights at "
                                        f"run time: pass a local folder, or text_encoder=features") from None
        self.width = int(self.encoder.config.hidden_size)

    @property
    def uses_ids(self) -> bool:
        return self.encoder is not None

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text: (B, L, D) features or (B, L) ids; mask: (B, L) bool. Returns (B, L, width)."""
        if self.encoder is None:
            return text
        return self.encoder(input_ids=text, attention_mask=mask.long()).last_hidden_state

    def save_config(self, folder: Path) -> None:
        if self.encoder is not None:
            target = Path(folder) / ENCODER_ASSETS
            target.mkdir(parents=True, exist_ok=True)
            self.encoder.config.save_pretrained(str(target))


def encoder_config_from(folder: Path) -> Any:
    """The language-model config a checkpoint saved with :meth:`TextBackbone.save_config`."""
    from transformers import AutoConfig

    source = Path(folder) / ENCODER_ASSETS
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source}: no encoder config; this checkpoint was saved without its text encoder")
    return AutoConfig.from_pretrained(str(source), local_files_only=True)


class MsaModel(MmerModel):
    """Base class of the sentiment models. Subclasses build ``self.text`` (a :class:`TextBackbone`)
    in ``__init__(dims, encoder_config=None)`` and implement ``forward`` and ``loss``.

    Dims of every subclass extend :class:`MsaDims`.
    """

    text: TextBackbone
    modality = "multimodal"

    # -- contract (mmer.contract) -----------------------------------------------------------
    def build_contract(self) -> Contract:
        d = self.dims
        text = TensorSpec("text", "int64", (BATCH, "text_steps")) if self.text_input == "ids" else \
            TensorSpec("text", "float32", (BATCH, "text_steps", d.text_dim))
        inputs = (text, TensorSpec("text_mask", "bool", (BATCH, "text_steps")),
                  TensorSpec("audio", "float32", (BATCH, "audio_steps", d.audio_dim)),
                  TensorSpec("audio_lengths", "int64", (BATCH,)),
                  TensorSpec("vision", "float32", (BATCH, "vision_steps", d.vision_dim)),
                  TensorSpec("vision_lengths", "int64", (BATCH,)))
        # MMSA's files are padded to fixed lengths, and nn.MultiheadAttention's legacy trace bakes
        # the sequence lengths into its reshapes: only the batch axis of these graphs is dynamic.
        return Contract(self.registry_name, "multimodal", inputs, feature="fused",
                        heads=SCORE_OUTPUTS if self.task == "regression" else OUTPUTS, dynamic="batch",
                        engine_note="the sentiment models (DERL, MMILN, CENet, CMATH) export to ONNX formats only "
                                    "(onnx, onnx-fp16, onnx-int8, onnx-int8-static); their graphs have fixed sequence "
                                    "lengths, which the engine profiles do not describe yet")

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: Any = None) -> list:
        """A synthetic MMSA-layout split with this model's input widths (mmer.samples.msa_samples)."""
        from mmer.samples import msa_samples

        return msa_samples(self, n, seed)

    @classmethod
    def processor_for(cls, dims: Any, folder: Any = None, card: dict | None = None) -> Processor:
        return ArraysProcessor()

    @property
    def task(self) -> str:
        """"regression" (one sentiment score) or "classification" (class logits)."""
        return "regression" if self.dims.label_set == REGRESSION else "classification"

    @property
    def text_input(self) -> str:
        """"ids" when a language model reads ``text_bert`` token ids, else "features"."""
        return "ids" if self.dims.text_encoder != TEXT_FEATURES else "features"

    def task_loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L1 for regression (MMSA's choice for MOSI/MOSEI), cross-entropy for classes.

        prediction: (B, 1) or (B, C); labels: (B,) float scores or int64 class ids.
        """
        if self.task == "regression":
            return F.l1_loss(prediction.float().view(-1), labels.float().view(-1))
        return F.cross_entropy(prediction.float(), labels.long())

    def prepare(self, train: Mapping[str, Any]) -> None:
        """Fit anything that is learned from the training data before training (default: nothing).

        train: the training split's arrays as numpy (keys of the MMSA pickle: ``text``,
        ``text_bert``, ``audio``, ``vision``, ``audio_lengths``, ``vision_lengths``, labels).
        """

    def loss(self, out: MsaOutput, labels: torch.Tensor,
             index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one batch and its named parts (floats, for logs). Default: task loss
        plus every regulariser the forward pass put in ``out.losses``, unweighted."""
        total = self.task_loss(out.prediction, labels)
        parts = {"task": float(total.detach())}
        for name, value in out.losses.items():
            total = total + value
            parts[name] = float(value.detach())
        return total, parts

    def save_assets(self, folder: Path) -> None:
        self.text.save_config(folder)

    @classmethod
    def from_checkpoint(cls, dims: Any, folder: Path) -> "MsaModel":
        if dims.text_encoder == TEXT_FEATURES:
            return cls(dims)
        return cls(dims, encoder_config=encoder_config_from(folder))


class ArraysProcessor(Processor):
    """The sentiment models read MMSA's arrays as they are: raw input is the dict of named inputs."""

    def inputs(self, raw: Any, **context: Any) -> dict:
        return dict(raw)
