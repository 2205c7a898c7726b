"""Real inputs for calibration, parity and benchmarks; each model's ``example_inputs`` picks its own.

* teacher: MELD dev utterances with their dialogue context, through the teacher's own
  :class:`mmer.dialogue.DialoguePrompt` (the CSV is read from the data root; no clips needed);
* audio students: speech synthesized by espeak-ng from MELD dev transcripts (harmonic "vowels"
  with a pitch contour when espeak-ng is not installed), 16 kHz, lengths spread over 1-8 s;
* visual students: generated face-like frames (an oval, eyes, a mouth whose curvature moves),
  8 frames with a few missing, like the face path delivers;
* ASF: teacher/student-like features (unit-scale Gaussian vectors), some modalities absent.

Every function is deterministic for a given ``seed``. Samples are batches of one utterance
(dict of numpy arrays named as the exported graph's inputs); :func:`collate` pads several into
one batch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mmer.audio import SAMPLE_RATE_HZ, load_waveform
from mmer.dialogue import Turn
from mmer.contract import collate  # noqa: F401  (re-exported: samples are collated here too)
from mmer.errors import MmerError
from mmer.labels import get_label_set
from mmer.meld import read_meld_csv
from mmer.progress import progress

MELD_DIR = "MELD"
MELD_DEV = "dev_sent_emo.csv"
REPO_ROOT = Path(__file__).resolve().parents[1]
ESPEAK_TIMEOUT_S = 30.0
ESPEAK_WPM = (120, 175)          # speaking-rate range, words per minute: longer and shorter clips
AUDIO_MIN_S, AUDIO_MAX_S = 1.0, 8.0
FALLBACK_F0_HZ = (90.0, 260.0)   # pitch range of the synthetic voice when espeak-ng is absent
NOISE_STD = 0.01                 # background noise added to generated media, full scale 1.0
FACE_GRAY, BACKGROUND_GRAY = 0.75, 0.35
MISSING_FRAME_PROB = 0.15        # share of frames the face path found no face in


class SampleDataError(MmerError, FileNotFoundError):
    """The data a sample set needs is not where it was looked for; the message says where to put it."""

    kind = "usage"


def default_data_root() -> Path:
    """``$MMER_DATA_ROOT``, else ``$MMER_SHARED/data``, else ``<repo>/../shared/data``."""
    if os.environ.get("MMER_DATA_ROOT"):
        return Path(os.environ["MMER_DATA_ROOT"])
    shared = Path(os.environ.get("MMER_SHARED", REPO_ROOT.parent / "shared"))
    return shared / "data"


def meld_dev_csv(data_root: str | Path | None = None) -> Path:
    """Path of MELD's dev CSV under ``data_root`` (which may be the MELD folder itself)."""
    root = Path(data_root) if data_root else default_data_root()
    for candidate in (root / MELD_DIR / MELD_DEV, root / MELD_DEV):
        if candidate.is_file():
            return candidate
    raise SampleDataError(f"MELD dev transcripts not found under {root} (looked for {MELD_DIR}/{MELD_DEV} and "
                          f"{MELD_DEV}); pass --data-root to the folder holding MELD/ or set MMER_DATA_ROOT")


def meld_dev_utterances(data_root: str | Path | None = None) -> list[tuple[list[Turn], str | None, float]]:
    """Every MELD dev utterance as (dialogue turns up to and including it, emotion, duration s), through
    :func:`mmer.meld.read_meld_csv`, the reader the text models were trained through."""
    out = []
    for dialogue in read_meld_csv(meld_dev_csv(data_root)):
        turns = [Turn(r.speaker, r.text) for r in dialogue.rows]
        for i, r in enumerate(dialogue.rows):
            out.append((turns[:i + 1], r.emotion, r.duration_s))
    return out


def teacher_samples(model: Any, n: int, seed: int = 0, data_root: str | Path | None = None
                    ) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """``n`` MELD dev utterances (random, without replacement) as teacher inputs (1, L) int64,
    and their label ids in the model's label set (-1 where the label is not in it)."""
    utterances = meld_dev_utterances(data_root)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))[:n] if n < len(utterances) else np.arange(len(utterances))
    labels = get_label_set(model.label_set).labels
    samples, ids = [], []
    for i in order:
        turns, emotion, _ = utterances[int(i)]
        enc = model.prompt.encode(turns, len(turns) - 1)
        input_ids = np.asarray([enc["input_ids"]], dtype=np.int64)
        samples.append({"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})
        ids.append(labels.index(emotion) if emotion in labels else -1)
    return samples, ids


# A small everyday dialogue for the teacher's example inputs where MELD is not on disk (a fresh
# install exporting or serving the default): the graph's shapes and ops, not accuracy, come from it.
FALLBACK_DIALOGUE = (
    ("user", "Hi, is this the right place for the train to the airport?"),
    ("robot", "Yes, platform four. The next one leaves in ten minutes."),
    ("user", "Oh no, I think I left my passport at the hotel!"),
    ("robot", "Would you like me to call the hotel for you?"),
    ("user", "Yes please, that would be amazing, thank you so much."),
    ("robot", "They found it. A taxi can bring it here in twenty minutes."),
    ("user", "I can't believe it. You just saved my whole trip."),
    ("user", "Wait, twenty minutes? Then I miss the train. This is ridiculous."),
)


def dialogue_samples(model: Any, n: int, seed: int = 0, data_root: str | Path | None = None
                     ) -> list[dict[str, np.ndarray]]:
    """``n`` teacher inputs: MELD dev utterances in context when MELD is found, else the turns of
    :data:`FALLBACK_DIALOGUE` in context (unlabelled)."""
    try:
        return teacher_samples(model, n, seed, data_root)[0]
    except SampleDataError:
        turns = [Turn(speaker, text) for speaker, text in FALLBACK_DIALOGUE]
        rng = np.random.default_rng(seed)
        out = []
        for i in rng.integers(0, len(turns), n):
            enc = model.prompt.encode(turns[:int(i) + 1], int(i))
            ids = np.asarray([enc["input_ids"]], dtype=np.int64)
            out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return out


# -- audio ----------------------------------------------------------------------------------
def _espeak(text: str, wpm: int) -> np.ndarray | None:
    exe = shutil.which("espeak-ng")
    if exe is None or not text.strip():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        proc = subprocess.run([exe, "-s", str(wpm), "-w", str(path), text], capture_output=True,
                              timeout=ESPEAK_TIMEOUT_S, check=False)
        if proc.returncode != 0 or not path.is_file():
            return None
        return load_waveform(path, SAMPLE_RATE_HZ)


def _synthetic_voice(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonic 'vowels' with a gliding pitch and syllable-rate amplitude, plus noise."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    f0 = rng.uniform(*FALLBACK_F0_HZ) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t))
    return (0.2 * voice * syllables + rng.normal(0, NOISE_STD, t.size)).astype(np.float32)


def audio_samples(n: int, seed: int = 0, data_root: str | Path | None = None, min_s: float = AUDIO_MIN_S,
                  max_s: float = AUDIO_MAX_S, speech: bool = True) -> list[dict[str, np.ndarray]]:
    """``n`` clips as audio-student inputs: waveform (1, T) float32, attention_mask (1, T) int64.

    speech: espeak-ng reading MELD dev transcripts when both are available; else synthetic voice.
    """
    rng = np.random.default_rng(seed)
    try:
        texts = [turns[-1].text for turns, _, _ in meld_dev_utterances(data_root)] if speech else []
    except SampleDataError:
        texts = []
    out = []
    # espeak-ng runs once per clip, a few seconds for a calibration set: worth a bar.
    for i in progress(range(n), "audio samples (espeak-ng)", enabled=bool(texts), unit="clip"):
        target_s = rng.uniform(min_s, max_s)
        wave = None
        if texts:
            # Join consecutive transcripts until the speech is long enough for the drawn length.
            start = int(rng.integers(len(texts)))
            text = " ".join(texts[start:start + max(1, int(target_s * 1.2))])
            wave = _espeak(text, int(rng.integers(*ESPEAK_WPM)))
        if wave is None:
            wave = _synthetic_voice(target_s, rng)
        wave = wave[: int(target_s * SAMPLE_RATE_HZ)]
        wave = (wave + rng.normal(0, NOISE_STD, wave.size)).astype(np.float32)
        out.append({"waveform": wave[None], "attention_mask": np.ones((1, wave.size), dtype=np.int64)})
    return out


# -- frames ---------------------------------------------------------------------------------
def _face(size: int, rng: np.random.Generator, smile: float, shift: tuple[float, float]) -> np.ndarray:
    """One (size, size) gray face-like image in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    x, y = x - shift[0], y - shift[1]
    img = np.full((size, size), BACKGROUND_GRAY) + 0.1 * y
    img[(x / 0.32) ** 2 + (y / 0.42) ** 2 < 1] = FACE_GRAY
    for ex in (-0.13, 0.13):
        img[((x - ex) / 0.05) ** 2 + ((y + 0.1) / 0.03) ** 2 < 1] = 0.1
    mouth_y = 0.18 + smile * 0.08 * (x / 0.15) ** 2
    img[(np.abs(y - mouth_y) < 0.02) & (np.abs(x) < 0.15)] = 0.15
    return np.clip(img + rng.normal(0, NOISE_STD * 3, img.shape), 0, 1)


def visual_samples(n: int, seed: int = 0, num_frames: int = 8, channels: int = 1, image_size: int = 64
                   ) -> list[dict[str, np.ndarray]]:
    """``n`` utterances as visual-student inputs: frames (1, N, C, S, S) float32 in [0, 1],
    frame_mask (1, N) bool (at least one frame valid)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        smile0, smile1 = rng.uniform(-1, 1, 2)
        frames = np.stack([_face(image_size, rng, smile0 + (smile1 - smile0) * k / num_frames,
                                 tuple(rng.normal(0, 0.02, 2))) for k in range(num_frames)])
        frames = np.repeat(frames[:, None], channels, axis=1).astype(np.float32)
        mask = rng.random(num_frames) > MISSING_FRAME_PROB
        mask[rng.integers(num_frames)] = True
        out.append({"frames": frames[None], "frame_mask": mask[None]})
    return out


def asf_samples(n: int, dim: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` fusion inputs: text/audio/visual (1, dim) float32, audio/visual_present (1,) bool."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        present = rng.random(2) > 0.2
        out.append({"text": rng.normal(0, 1, (1, dim)).astype(np.float32),
                    "audio": rng.normal(0, 1, (1, dim)).astype(np.float32),
                    "visual": rng.normal(0, 1, (1, dim)).astype(np.float32),
                    "audio_present": present[:1].copy(), "visual_present": present[1:].copy()})
    return out


DATA_SOURCES = ("meld-dev", "generated")


MSA_SAMPLE_STEPS = (12, 20, 16)    # text / audio / vision steps of the generated sentiment inputs


def msa_samples(model: Any, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` batch-1 inputs for a sentiment model, drawn from a synthetic MMSA-layout split
    (training/mmsa.py) with the model's input widths, padded to fixed lengths as MMSA's files are;
    the valid lengths vary, so masking is exercised.
    Token ids stay below the text encoder's vocabulary."""
    from mmer.training.mmsa import make_synthetic_mmsa

    d = model.dims
    vocab = int(model.text.encoder.config.vocab_size) if getattr(model.text, "encoder", None) is not None else 1000
    text_len, audio_len, vision_len = MSA_SAMPLE_STEPS
    data = make_synthetic_mmsa(sizes=(n, 1, 1), text_len=text_len, audio_len=audio_len, vision_len=vision_len,
                               dims=(d.text_dim, d.audio_dim, d.vision_dim), vocab_size=min(vocab, 30000),
                               inf_fraction=0.0, seed=seed)["train"]
    # Fixed padded lengths, as in MMSA's files (the valid part varies through the masks/lengths).
    text = data["text_bert"][:, 0] if model.text_input == "ids" else data["text"]
    return [{"text": text[i:i + 1], "text_mask": data["text_bert"][i:i + 1, 1].astype(bool),
             "audio": data["audio"][i:i + 1], "audio_lengths": data["audio_lengths"][i:i + 1],
             "vision": data["vision"][i:i + 1], "vision_lengths": data["vision_lengths"][i:i + 1]} for i in range(n)]
