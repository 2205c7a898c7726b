"""`mmer-eval default`: the whole live predictor (calibration, abstention, fusion) over a labelled set.

Each sample becomes what the live pipeline would hand the predictor: an utterance with its audio
(when the set has audio) and its words (when it has text), the dialogue window as turns, and the
speaker's name, met speaker by speaker in a seeded order (mmer.training.voice.causal_order), so a
speaker-normalised voice model sees exactly the history it would see live. The fused label is
scored, and so is every modality on its own (its calibrated argmax, abstentions included), which
makes "fusion no worse than its best input" checkable on one run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from mmer.labels import get_label_map, get_label_set

log = logging.getLogger(__name__)

OUTPUT_LABEL_SET = "meld7"
MODALITIES_OF_DATA = {"ravdess": ("audio", "text"), "tess": ("audio",), "emodb": ("audio",),
                      "dailydialog": ("text",), "meld": ("text",), "iemocap": ("text",)}


def evaluate_stack(data: str, split: str, root: str, limit: int = 0, models: Any = None,
                   progress_every: int = 500) -> tuple[dict, dict]:
    """Run the default stack (or ``models``, a ModelsConfig) over ``data``/``split``.

    Returns (fused results, per-modality results): each {"true": (N,) ids, "pred": (N,) ids}
    over meld7, plus "abstained" counts and the data's label set in "labels".
    """
    import torch

    from mmer.dialogue import Turn
    from mmer.progress import progress
    from mmer.realtime.config import ModelsConfig
    from mmer.realtime.frames import Utterance
    from mmer.realtime.predictor import load_stack
    from mmer.training.recipes import DataConfig
    from mmer.training.stages import build_split, label_set_of
    from mmer.training.voice import causal_order

    modalities = MODALITIES_OF_DATA.get(data)
    if modalities is None:
        raise ValueError(f"no whole-stack protocol for '{data}'; known: {sorted(MODALITIES_OF_DATA)}")
    models = models or ModelsConfig(face=None)
    models = replace(models, voice=models.voice if "audio" in modalities else None,
                     text=models.text if "text" in modalities else None)
    predictor, _ = load_stack(models)
    cfg = DataConfig(name=data, root=root, limit=limit)
    dataset = build_split(cfg, split, modalities)
    to_out = get_label_map(label_set_of(cfg), OUTPUT_LABEL_SET)
    labels = get_label_set(OUTPUT_LABEL_SET).labels
    speakers = [s.speaker or s.dialogue_id for s in dataset.samples]
    order = causal_order(speakers) if "audio" in modalities else list(range(len(dataset)))
    true = np.array([labels.index(to_out.map_label(s.label_name)) for s in dataset.samples])
    fused = np.zeros(len(dataset), np.int64)
    per_modality: dict[str, np.ndarray] = {}
    abstained: Counter = Counter()
    t0 = time.perf_counter()
    for k, i in enumerate(progress(order, f"mmer-eval default {data} {split}", total=len(dataset), unit="utt")):
        sample = dataset.samples[i]
        audio = np.zeros(0, np.float32)
        if "audio" in modalities:
            clip = dataset.load_audio(sample)
            audio = clip.data if clip.valid else audio
        turns = [Turn(t.speaker, t.text) for t in sample.turns[:sample.target_index + 1]]
        utt = Utterance(id=k, start_s=0.0, end_s=len(audio) / 16_000, audio=audio, speaker=str(speakers[i]),
                        text=turns[-1].text if turns else None)
        with torch.inference_mode():
            pred = predictor.predict(utt, turns if "text" in modalities else None)
        fused[i] = labels.index(pred.label)
        for m, probs in pred.modality_probs.items():
            per_modality.setdefault(m, np.full(len(dataset), -1, np.int64))[i] = labels.index(
                max(probs, key=probs.get))
        abstained.update(f"{m}: {reason.split(' (')[0]}" for m, reason in pred.abstained.items())
        if progress_every and (k + 1) % progress_every == 0:
            log.info("mmer-eval default: %d/%d utterances (%.0f s)", k + 1, len(dataset), time.perf_counter() - t0)
    results = {"fused": {"true": true, "pred": fused}}
    for m, pred_m in per_modality.items():
        # A modality that produced nothing for a sample (too short, no words) scores as neutral there.
        results[m] = {"true": true, "pred": np.where(pred_m < 0, labels.index("neutral"), pred_m)}
    info = {"abstained": dict(abstained), "n": len(dataset), "skipped": len(dataset.skipped),
            "models": {"text": models.text, "voice": models.voice, "face": models.face},
            "order": "speaker by speaker, seeded shuffle (seed 0)" if "audio" in modalities else "dataset order"}
    return results, info
