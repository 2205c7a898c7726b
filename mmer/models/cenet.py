"""CENet: Cross-modal Enhancement Network for multimodal sentiment analysis (CMU-MOSI / MOSEI).

Paper: D. Wang, S. Liu, Q. Wang, Y. Tian, L. He, X. Gao, "Cross-modal Enhancement Network for
Multimodal Sentiment Analysis", IEEE Transactions on Multimedia 2022; seeds/004 is a tutorial on
it that prints no equations, so the equations below are numbered here, (C1)-(C7), from the
tutorial's text and the authors' public code (github.com/Say2L/CENet, ``CEmodule.py``).

A language model reads the words; between two of its layers, a cross-modal enhancement (CE)
module adds to every word a vector built from the whole (unaligned) acoustic and visual sequences:

    id_t = argmin_k || (x_t - mu) / sigma - c_k ||^2        (C1) feature transformation: each frame
                                                                 becomes a word of a k-means "vocabulary"
    E_m  = Embed_m(id)                                       (C2) learned embeddings of those words
    A_m  = softmax(alpha * (H_l W_q)(E_m W_k)^T)             (C3) text-to-non-verbal attention; alpha
                                                                 scales the small initial scores up
    U_m  = A_m (E_m W_v)                                     (C4) text-based acoustic / visual embedding
    S    = W_c [U_v ; U_a] + b_c                             (C5) non-verbal enhancement embedding
    H_l' = H_l + S                                           (C6) injected after layer l, then
                                                                 layers l+1..N run as usual
    y    = W_o tanh(W_d h'_[CLS] + b_d) + b_o                (C7) the authors' RoBERTa-style head

Where mmer differs from the authors' code, and why:

* The vocabularies. The authors shipped pickles with the ids precomputed and never released the
  clustering; here :meth:`CENet.prepare` fits them (k-means++ seeding, then Lloyd iterations, in
  float64, seeded by ``dims.kmeans_seed``) on the valid frames of the training split only,
  after standardising every feature dimension (COVAREP mixes Hz with values in [0, 1]; without
  it the clusters would split on pitch alone). Centroids and statistics are buffers, so they
  live in the checkpoint's safetensors and reload bit for bit.
* Unaligned data. Each word attends over ALL valid frames of the clip (C3): no alignment is
  assumed, which is the paper's point ("long-range" non-verbal context). The authors' attention
  had no mask, so padded frames (their padding id) took part; here they are masked out, so
  padding never changes a prediction.
* The language model. The authors inject into SentiLARE (RoBERTa with POS and polarity
  embeddings), not obtainable offline; any encoder with BERT's layout (``embeddings``,
  ``encoder.layer[i]``) works here, by default the packaged MiniLM-L6.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.models.msa import TEXT_FEATURES, MsaDims, MsaModel, TextBackbone, check_outputs, lengths_to_mask
from mmer.outputs import MsaOutput
from mmer.registry import MODELS

MINILM = "minilm"            # the packaged MiniLM-L6 (mmer.models.teacher.resolve_encoder)
INIT_STD = 0.02              # BERT/RoBERTa initializer_range; the authors' CE is initialised with it
STD_FLOOR = 1e-6             # a feature dimension with a smaller spread is constant: not rescaled
REGRESSION_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class CENetDims(MsaDims):
    """Every size of CENet; saved inside its checkpoint.

    audio_vocab_size / vision_vocab_size: K, words per non-verbal vocabulary (C1).
    inject_layer: how many transformer layers run before the CE module (C6): 0 injects into the
        embeddings' output, l into the output of ``encoder.layer[l - 1]``.
    num_heads / attention_scale: heads of the attention (C3) and the alpha that multiplies its
        scores (there is no 1/sqrt(d): alpha replaces it).
    dropout: of the regression head (C7).
    kmeans_*: the vocabulary fit: seed, Lloyd iterations at most, frames sampled at most (0: all).
    regression_loss: "l1" (MMSA's, mmer's default) or "mse" (the authors' train.py).
    """

    text_encoder: str = MINILM     # CENet works inside a language model: "features" is refused
    audio_vocab_size: int = 16     # authors: label_size = 16 (their data file MOSI_16_sentilare_...)
    vision_vocab_size: int = 16    # same constant for both modalities in the authors' code
    inject_layer: int = 1          # authors: ROBERTA_INJECTION_INDEX = 1 (after the first layer)
    num_heads: int = 1             # authors: SelfAttention(TEXT_DIM), head_num = 1
    attention_scale: float = 8.0   # authors: softmax(weight_score * 8)
    dropout: float = 0.1           # roberta-base hidden_dropout_prob, used by the authors' head
    kmeans_seed: int = 0
    kmeans_max_iters: int = 100
    kmeans_max_frames: int = 200_000   # k = 16 centroids are well estimated from far fewer frames
    regression_loss: str = "l1"


# -- the vocabularies (C1) ----------------------------------------------------------------------
def kmeans(frames: torch.Tensor, k: int, seed: int, max_iters: int = 100) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), deterministic per seed.

    frames: (N, D), N >= k. Returns (k, D) float64 centroids. Stops when no assignment changes
    or after ``max_iters`` updates. A cluster that empties is re-seeded with the frame farthest
    from its centroid (deterministic, no random draw). Runs in torch, so it honours
    ``torch.set_num_threads`` (numpy's BLAS threads spin on a busy machine).
    """
    x = torch.as_tensor(frames).to(torch.float64)
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} frames, got {n}")
    g = torch.Generator().manual_seed(seed)
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[torch.randint(n, (), generator=g)]
    closest = ((x - centroids[0]) ** 2).sum(1)
    for j in range(1, k):
        total = closest.sum()
        # D^2 sampling; when every frame already sits on a centroid any frame will do
        pick = (torch.multinomial(closest / total, 1, generator=g) if total > 0
                else torch.randint(n, (1,), generator=g))
        centroids[j] = x[pick[0]]
        closest = torch.minimum(closest, ((x - centroids[j]) ** 2).sum(1))
    labels = torch.full((n,), -1, dtype=torch.long)
    rows = torch.arange(n)
    for _ in range(max_iters):
        # ||x - c||^2 less ||x||^2, which is the same for every centroid: -2 x.c + ||c||^2
        dist = torch.addmm((centroids ** 2).sum(1), x, centroids.T, alpha=-2.0)
        new_labels = dist.argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, labels, x)
        if (counts == 0).any():
            own = dist[rows, labels] + (x ** 2).sum(1)
            for j in torch.nonzero(counts == 0).flatten().tolist():
                far = int(own.argmax())
                sums[j], counts[j] = x[far], 1.0
                own[far] = -1.0      # the same frame is not taken twice
        centroids = sums / counts[:, None]
    return centroids


def valid_frames(features: Any, lengths: Any) -> np.ndarray:
    """The unpadded frames of a split: features (N, L, D), lengths (N,) -> (M, D) float32.

    Only steps t < length count (a clip of length 0 contributes nothing), and frames holding a
    non-finite value (MOSEI's COVAREP -inf) are dropped.
    """
    x = np.asarray(features, dtype=np.float32)
    steps = np.arange(x.shape[1])[None, :]
    frames = x[steps < np.asarray(lengths).reshape(-1, 1)]
    return frames[np.isfinite(frames).all(1)]


class FrameVocabulary(nn.Module):
    """A k-means vocabulary of one non-verbal modality (C1): frames -> ids of the nearest centroid.

    Buffers (saved with the model): ``mean`` / ``scale`` (D,) standardisation, ``centroids``
    (K, D) in standardised units, ``fitted`` () bool. Before :meth:`fit` (or loading fitted
    weights) ``ready`` is False.
    """

    def __init__(self, feature_dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        self.register_buffer("centroids", torch.zeros(size, feature_dim))
        self.register_buffer("fitted", torch.tensor(False))
        # A Python mirror of ``fitted``: forward checks it without reading a tensor value (which
        # ONNX tracing could not follow); loading a state dict refreshes it.
        self.ready = False
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_ready())

    def _sync_ready(self) -> None:
        self.ready = bool(self.fitted)

    def fit(self, frames: np.ndarray, seed: int, max_iters: int, max_frames: int) -> None:
        """Fit on (M, D) valid frames; at most ``max_frames`` of them, drawn with ``seed``."""
        x = torch.as_tensor(frames)
        if len(x) > max_frames > 0:
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_frames]
            x = x[pick.sort().values]
        x = x.to(torch.float64)
        mean = x.mean(0)
        std = x.std(0, correction=0)
        scale = torch.where(std > STD_FLOOR, std, torch.ones_like(std))
        centroids = kmeans((x - mean) / scale, self.size, seed, max_iters)
        with torch.no_grad():
            self.mean.copy_(mean)
            self.scale.copy_(scale)
            self.centroids.copy_(centroids)
            self.fitted.fill_(True)
        self.ready = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) frames. Returns (B, L) int64 ids of the nearest centroid (C1)."""
        z = (x - self.mean) / self.scale
        # ||z||^2 is the same for every centroid, so the argmin needs only -2 z.c + ||c||^2
        dist = (self.centroids ** 2).sum(-1) - 2.0 * z @ self.centroids.T
        return dist.argmin(-1)


# -- the cross-modal embedding unit (C2)-(C5) -----------------------------------------------------
class TextToFrameAttention(nn.Module):
    """(C3)-(C4): every word attends over the embedded frames of one modality.

    The authors' ``SelfAttention``: no 1/sqrt(d); the scores are multiplied by ``scale`` instead.
    """

    def __init__(self, width: int, num_heads: int, scale: float) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"text width {width} is not divisible by {num_heads} heads")
        self.num_heads, self.scale = num_heads, scale
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)     # (B, heads, L, d)

    def forward(self, text: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """text: (B, Lt, H); frames: (B, Lm, H); frame_mask: (B, Lm) bool. Returns (B, Lt, H)."""
        q, k, v = self._heads(self.query(text)), self._heads(self.key(frames)), self._heads(self.value(frames))
        scores = self.scale * (q @ k.transpose(-1, -2))                        # (B, heads, Lt, Lm)
        scores = scores.masked_fill(~frame_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


class CrossModalEnhancement(nn.Module):
    """The CE module (C2)-(C6): text states H_l (B, Lt, H) -> H_l + S."""

    def __init__(self, width: int, audio_vocab_size: int, vision_vocab_size: int, num_heads: int,
                 scale: float) -> None:
        super().__init__()
        # One extra row per table: the padding word (id K), whose embedding stays zero.
        self.audio_embedding = nn.Embedding(audio_vocab_size + 1, width, padding_idx=audio_vocab_size)
        self.vision_embedding = nn.Embedding(vision_vocab_size + 1, width, padding_idx=vision_vocab_size)
        self.audio_attention = TextToFrameAttention(width, num_heads, scale)
        self.vision_attention = TextToFrameAttention(width, num_heads, scale)
        self.combine = nn.Linear(2 * width, width)                    # W_c, b_c of (C5)

    def forward(self, text: torch.Tensor, audio_ids: torch.Tensor, audio_mask: torch.Tensor,
                vision_ids: torch.Tensor, vision_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """ids: (B, Lm) int64 (padding id at masked steps); masks: (B, Lm) bool.

        Returns {"text": H_l, "audio": U_a, "vision": U_v, "shift": S, "enhanced": H_l + S}, each
        (B, Lt, H).
        """
        audio = self.audio_attention(text, self.audio_embedding(audio_ids), audio_mask)        # (C2)-(C4)
        vision = self.vision_attention(text, self.vision_embedding(vision_ids), vision_mask)
        shift = self.combine(torch.cat([vision, audio], dim=-1))                                # (C5)
        return {"text": text, "audio": audio, "vision": vision, "shift": shift,
                "enhanced": text + shift}                                                       # (C6)


# -- the model ------------------------------------------------------------------------------------
@MODELS.register("cenet")
class CENet(MsaModel):
    """A language model whose word states, after ``dims.inject_layer`` layers, are enhanced with
    the clip's acoustic and visual context; a head on the first token predicts the sentiment."""

    registry_name = "cenet"
    Dims = CENetDims

    def __init__(self, dims: CENetDims, encoder_config: Any = None) -> None:
        super().__init__(dims)
        check_outputs(dims.label_set, dims.num_outputs)
        if dims.text_encoder == TEXT_FEATURES:
            raise ValueError("CENet injects acoustic and visual context between the layers of a language model, "
                             "so it needs token ids, not precomputed text features: set text_encoder to "
                             f"'{MINILM}', a local Hugging Face folder or a hub name")
        if dims.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {dims.regression_loss!r}")
        self.text = TextBackbone(dims.text_encoder, dims.text_dim, encoder_config)
        lm = self.text.encoder
        if not (hasattr(lm, "embeddings") and hasattr(getattr(lm, "encoder", None), "layer")):
            raise ValueError(f"text encoder {type(lm).__name__} lacks BERT's layout (embeddings, encoder.layer[i]) "
                             f"that CENet injects into")
        num_layers = len(lm.encoder.layer)
        if not 0 <= dims.inject_layer <= num_layers:
            raise ValueError(f"inject_layer must lie in 0..{num_layers} (the encoder's layers), "
                             f"got {dims.inject_layer}")
        width = self.text.width
        self.audio_vocab = FrameVocabulary(dims.audio_dim, dims.audio_vocab_size)
        self.vision_vocab = FrameVocabulary(dims.vision_dim, dims.vision_vocab_size)
        self.enhance = CrossModalEnhancement(width, dims.audio_vocab_size, dims.vision_vocab_size,
                                             dims.num_heads, dims.attention_scale)
        self.head = nn.Sequential(nn.Dropout(dims.dropout), nn.Linear(width, width), nn.Tanh(),
                                  nn.Dropout(dims.dropout), nn.Linear(width, dims.num_outputs))   # (C7)
        for module in (self.enhance, self.head):
            module.apply(_init_like_bert)

    # -- the vocabularies ------------------------------------------------------------------------
    def prepare(self, train: Mapping[str, Any]) -> None:
        """Fit the acoustic and visual vocabularies (C1) on the training split's valid frames.

        train: arrays with keys ``audio`` (N, La, Da), ``audio_lengths`` (N,), ``vision``
        (N, Lv, Dv), ``vision_lengths`` (N,) (e.g. ``MmsaSplit.arrays()``).
        """
        d = self.dims
        for name, vocab in (("audio", self.audio_vocab), ("vision", self.vision_vocab)):
            frames = valid_frames(train[name], train[f"{name}_lengths"])
            if len(frames) < vocab.size:
                raise ValueError(f"the {name} vocabulary has {vocab.size} words but the training split holds only "
                                 f"{len(frames)} valid {name} frames")
            vocab.fit(frames, d.kmeans_seed, d.kmeans_max_iters, d.kmeans_max_frames)

    def frame_ids(self, audio: torch.Tensor, audio_lengths: torch.Tensor, vision: torch.Tensor,
                  vision_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """(C1) for both modalities: ids (B, Lm), the padding id K at masked steps, and masks (B, Lm)."""
        if not (self.audio_vocab.ready and self.vision_vocab.ready):
            raise RuntimeError("CENet's acoustic/visual vocabularies are not fitted: call model.prepare(train_arrays) "
                               "with the training split (e.g. MmsaSplit.arrays()) before the first forward, or load "
                               "a checkpoint saved after prepare")
        out = {}
        for name, x, lengths, vocab in (("audio", audio, audio_lengths, self.audio_vocab),
                                        ("vision", vision, vision_lengths, self.vision_vocab)):
            mask = lengths_to_mask(lengths, x.shape[1])
            out[f"{name}_ids"] = torch.where(mask, vocab(x), torch.full_like(mask, vocab.size, dtype=torch.long))
            out[f"{name}_mask"] = mask
        return out

    # -- the language model with the CE module inside ----------------------------------------------
    def hidden_states(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor,
                      audio_lengths: torch.Tensor, vision: torch.Tensor,
                      vision_lengths: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Run the language model with the CE module after ``inject_layer`` layers.

        Returns the hidden states [embeddings, layer 1, ..., layer N] (each (B, Lt, H); the one at
        index ``inject_layer`` already enhanced) and the CE module's outputs.
        """
        lm = self.text.encoder
        ids = self.frame_ids(audio, audio_lengths, vision, vision_lengths)
        hidden = lm.embeddings(input_ids=text, token_type_ids=torch.zeros_like(text))
        # BERT's additive mask: 0 where a word is valid, the dtype's minimum at padding.
        blocked = (~text_mask.bool())[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
        states, ce = [hidden], {}
        for i in range(len(lm.encoder.layer) + 1):
            if i == self.dims.inject_layer:
                ce = self.enhance(states[-1], ids["audio_ids"], ids["audio_mask"], ids["vision_ids"],
                                  ids["vision_mask"])
                states[-1] = ce["enhanced"]                                              # (C6)
            if i < len(lm.encoder.layer):
                out = lm.encoder.layer[i](states[-1], blocked)
                states.append(out[0] if isinstance(out, tuple) else out)   # transformers 4 returns tuples
        return states, ce

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor, audio_lengths: torch.Tensor,
                vision: torch.Tensor, vision_lengths: torch.Tensor) -> MsaOutput:
        """Predict the sentiment of a batch.

        text: (B, Lt) int64 token ids; text_mask: (B, Lt) bool; audio: (B, La, Da);
        audio_lengths: (B,); vision: (B, Lv, Dv); vision_lengths: (B,).
        Returns MsaOutput: prediction (B, num_outputs); features "fused" (B, H) the last layer's
        first-token state the head reads, "text" (B, Lt, H) the states H_l the CE module
        received, "audio" / "vision" (B, Lt, H) U_a / U_v, "shift" (B, Lt, H) S.
        """
        states, ce = self.hidden_states(text, text_mask, audio, audio_lengths, vision, vision_lengths)
        fused = states[-1][:, 0]
        features = {"fused": fused, "text": ce["text"], "audio": ce["audio"],
                    "vision": ce["vision"], "shift": ce["shift"]}
        return MsaOutput(prediction=self.head(fused), features=features)

    def task_loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L1 (MMSA) or, with ``regression_loss="mse"``, the authors' MSE; CE for class label sets."""
        if self.task == "regression" and self.dims.regression_loss == "mse":
            return F.mse_loss(prediction.float().view(-1), labels.float().view(-1))
        return super().task_loss(prediction, labels)


def _init_like_bert(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases, as the authors' CE got from BERT's ``init_weights``:
    the initial shift S is tiny, so training starts from the language model's own states."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
