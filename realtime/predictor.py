"""Per-utterance prediction: text (with dialogue context), voice and face, mapped and fused.

For each finished utterance the :class:`Predictor` runs

* the text teacher on the dialogue window + the utterance (TelME reads the conversation, not
  the sentence alone: REFERENCE.md section 2), when the utterance has words;
* the voice model on the utterance audio;
* nothing for the face: the face path already pooled the frames of ``[start_s, end_s]``;

each through the runtime that serves it (:mod:`mmer.serving`: torch, ONNX Runtime, TensorRT or
TensorRT-RTX, from a checkpoint, an embedded default or an export folder; the model's own
processor builds the inputs, so every backend sees the same ones),

then maps each modality's probabilities onto the output label set (meld7) with the explicit
maps of :mod:`mmer.labels`, and fuses them: :class:`mmer.models.late_fusion.LateFusion` for
separately trained models (the embedded defaults), or :class:`mmer.models.asf.ASF` over the
teacher's and students' features for a full TelME stack. Any subset of modalities works; the
result names the ones that were present. Every stage is timed with ``time.perf_counter``.

Valence and arousal (for ROS4HRI ``hri_msgs/Expression``, both in [-1, 1]) are the expected
circumplex coordinates under the fused class probabilities: ``v = sum_c p(c) v_c``,
``a = sum_c p(c) a_c`` with the per-class points of :data:`CIRCUMPLEX_DEG`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmer.dialogue import Turn
from mmer.labels import get_label_map, get_label_set
from mmer.realtime.face_path import FaceEvidence
from mmer.realtime.frames import SAMPLE_RATE_HZ, Utterance, stream_times
from mmer.realtime.schema import SCHEMA_VERSION

OUTPUT_LABEL_SET = "meld7"
MODALITIES = ("text", "audio", "visual")
PROVENANCE_ITEMS = 3  # provenance entries shown per model at start-up (the checkpoint's mmer.json has all)
PROVENANCE_CHARS = 60
MIN_VOICE_S = 0.5  # s; shorter audio carries too little prosody to classify (a word or a cough)
CLIP_LEVEL = 0.99  # |sample| at or above this counts as clipped
MAX_CLIPPED_FRACTION = 0.01  # more clipped samples than this: the voice is distorted, it abstains
MIN_VOICE_RMS = 1e-3  # below this RMS (-60 dBFS) the utterance is near-silent: the voice abstains

# Angle of each class on Russell's circumplex (degrees, counter-clockwise from "pleasant"; 90 =
# "aroused"), from the direct circular scaling of Russell (1980), "A circumplex model of
# affect", J. Pers. Soc. Psychol. 39(6): happy 7.8, astonished 69.8, angry 99.0, afraid 116.9,
# sad 207.5. Disgust is not among Russell's 28 words: we place it between annoyed (123.0) and
# distressed (138.0). Points lie on the unit circle (a full-blown emotion); neutral is the origin.
CIRCUMPLEX_DEG: dict[str, float | None] = {
    "neutral": None, "joy": 7.8, "surprise": 69.8, "anger": 99.0, "fear": 116.9,
    "disgust": 130.0, "sadness": 207.5,
}
# meld7 class -> the string constant of ROS4HRI hri_msgs/Expression (NEUTRAL="neutral", ...).
ROS4HRI_EXPRESSION: dict[str, str] = {
    "neutral": "neutral", "joy": "happy", "surprise": "surprised", "anger": "angry",
    "fear": "scared", "disgust": "disgusted", "sadness": "sad",
}


def circumplex_point(label: str) -> tuple[float, float]:
    """(valence, arousal) of one meld7 class, each in [-1, 1]."""
    deg = CIRCUMPLEX_DEG[label]
    if deg is None:
        return 0.0, 0.0
    return math.cos(math.radians(deg)), math.sin(math.radians(deg))


def valence_arousal(probs: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """Expected (valence, arousal) under ``probs`` (C,) over ``labels``; a convex mix of points
    in the unit disc, so both stay in [-1, 1]."""
    points = np.array([circumplex_point(lab) for lab in labels], dtype=np.float64)  # (C, 2)
    v, a = np.asarray(probs, dtype=np.float64) @ points
    return float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))


@dataclass
class Prediction:
    """One utterance's result; :meth:`to_dict` is the JSON object every sink emits."""

    utterance_id: int
    start_s: float
    end_s: float
    speaker: str
    text: str | None
    label: str
    probs: dict[str, float]
    modality_probs: dict[str, dict[str, float]]
    modalities: list[str]
    valence: float
    arousal: float
    confidence: float
    fusion: str
    split: bool = False
    face: dict | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    abstained: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    clock_origin_unix_s: float | None = None  # Unix time of stream second 0; None: no stream (a transcript)

    def to_dict(self) -> dict:
        """The JSON object of docs/live.md ("type": "prediction")."""
        return {
            "type": "prediction", "schema_version": SCHEMA_VERSION, "utterance_id": self.utterance_id,
            **stream_times(self.start_s, self.end_s, self.clock_origin_unix_s), "speaker": self.speaker,
            "text": self.text, "split": self.split, "label_set": OUTPUT_LABEL_SET, "label": self.label,
            "expression": ROS4HRI_EXPRESSION[self.label], "probs": self.probs, "modalities": self.modalities,
            "modality_probs": self.modality_probs, "fusion": self.fusion,
            "valence": round(self.valence, 4), "arousal": round(self.arousal, 4),
            "confidence": round(self.confidence, 4), "face": self.face, "abstained": self.abstained,
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }


def _probs_dict(probs: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    return {lab: round(float(p), 5) for lab, p in zip(labels, probs)}


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def model_summary(model: Any, source: str | None) -> str:
    """One line: model name, where it came from, the runtime serving it, label set, provenance."""
    from mmer.serving import Served

    if isinstance(model, Served):
        prov, name, serving = model.provenance, model.name, f" on {model.describe()}"
    else:
        prov = (getattr(model, "checkpoint_meta", None) or {}).get("provenance") or {}
        name, serving = getattr(model, "registry_name", type(model).__name__), ""
    items = [(k, str(v)) for k, v in prov.items() if isinstance(v, (str, int, float))][:PROVENANCE_ITEMS]
    what = ", ".join(f"{k}={v if len(v) <= PROVENANCE_CHARS else v[:PROVENANCE_CHARS - 3] + '...'}"
                     for k, v in items) or "none recorded"
    return f"{name} '{source}'{serving} (label set {getattr(model, 'label_set', '?')}; provenance: {what})"


def as_served(model: Any, modality: str, role: str) -> Any:
    """A :class:`mmer.serving.Served` of the given modality: ``model`` itself, or a torch model
    served by the torch runtime. The model's contract says its modality; another one is refused."""
    from mmer.serving import Served, serve

    if model is None:
        return None
    served = model if isinstance(model, Served) else serve(model, "torch", device=str(getattr(model, "device", "cpu")))
    if served.modality != modality:
        raise ValueError(f"the {role} model must read {modality}, but '{served.name}' ({served.source}) reads "
                         f"{served.modality}")
    return served


class Predictor:
    """Runs, calibrates and fuses the per-utterance models.

    Args:
        text_model: a served text model (:class:`mmer.serving.Served`; a torch model is served
            by the torch runtime), or None.
        voice_model: a served voice model (or a torch one), or None.
        face_label_set: label set of the face path's probabilities (None: no face modality).
        fusion: a ``LateFusion`` or ``ASF`` model, or None for a late fusion built from the
            modalities' label sets with each modality's calibrated reliability as base weight.
        face_feature_dim: width of the face path's ``"visual"`` feature (checked against ASF).
        face_calibration: the face model's :class:`mmer.calibration.Calibration` (default none).
        text_neutral_defers: a "neutral" reading of the words is no evidence against an emotion
            in the voice or face (RAVDESS actors say neutral sentences angrily): when another
            modality votes, a text model whose top class is neutral abstains.
        parallel: run the voice model in a worker thread while the text model runs in the
            caller's (ONNX Runtime and torch release the GIL): an utterance costs the slower of
            the two instead of their sum. Give each runtime one intra-op thread on small machines.
            The worker also takes :meth:`speculate` runs, begun when the speaker pauses.

    Each modality's probabilities are ``softmax(logits / T)`` with the temperature saved in its
    checkpoint; a modality abstains (weight 0, reason in the prediction's ``abstained``) when its
    input is out of range (audio too short, clipped or near-silent; no words; no face) or its
    calibrated confidence is below its checkpoint's ``min_confidence``. A whisper-family voice
    model is normalised by the speaker's running statistics (mmer.speaker_norm), keyed by
    ``Utterance.speaker`` (the voice model's processor keeps them; :meth:`reset` forgets them).
    """

    def __init__(self, text_model: Any = None, voice_model: Any = None, face_label_set: str | None = None,
                 fusion: Any = None, face_feature_dim: int | None = None, face_calibration: Any = None,
                 text_neutral_defers: bool = True, parallel: bool = False) -> None:
        from mmer.calibration import Calibration
        from mmer.models.late_fusion import LateFusion, LateFusionDims

        self.text = as_served(text_model, "text", "text")
        self.voice = as_served(voice_model, "audio", "voice")
        self.face_label_set = face_label_set
        self.labels = get_label_set(OUTPUT_LABEL_SET).labels
        sources = {"text": getattr(self.text, "label_set", None), "audio": getattr(self.voice, "label_set", None),
                   "visual": face_label_set}
        self.source_label_sets = {m: s for m, s in sources.items() if s is not None}
        if not self.source_label_sets:
            raise ValueError("the predictor needs at least one of a text, voice or face model")
        self.maps = {m: get_label_map(s, OUTPUT_LABEL_SET) for m, s in self.source_label_sets.items()}
        self.calibration = {"text": self.text.calibration if self.text else Calibration(),
                            "audio": self.voice.calibration if self.voice else Calibration(),
                            "visual": face_calibration or Calibration()}
        self.text_neutral_defers = text_neutral_defers
        self._pool = None
        self._early: tuple | None = None   # (key, samples, speaker, future) of a voice run begun at a pause
        if parallel and self.voice is not None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmer-voice")
        self.sources: dict[str, str | None] = {}  # where each model came from (set by load_stack)
        self.asf = None
        if fusion is not None and getattr(fusion, "fuses", "") == "features":
            self.asf = fusion                # a feature-level fusion (TelME's ASF), as opposed to late fusion
            self._check_asf(face_feature_dim)
            fusion = None
        if fusion is None:
            # An absent model's slot is never used; its label set only has to be a valid one.
            sets = tuple(self.source_label_sets.get(m, OUTPUT_LABEL_SET) for m in MODALITIES)
            weights = tuple(self.calibration[m].reliability for m in MODALITIES)
            fusion = LateFusion(LateFusionDims(modalities=MODALITIES, source_label_sets=sets, base_weights=weights))
        elif getattr(fusion, "fuses", "") != "probabilities":
            kind = getattr(fusion, "registry_name", type(fusion).__name__)
            raise ValueError(f"the fusion model must fuse the modalities' probabilities (late_fusion) or their "
                             f"features (asf); '{kind}' does neither")
        else:
            self._check_late_fusion(fusion)
        self.late_fusion = fusion.eval()

    # -- checks ----------------------------------------------------------------------------
    def _check_asf(self, face_feature_dim: int | None) -> None:
        dim = self.asf.dims.kd_dim
        if self.text is None:
            raise ValueError("an ASF fusion is led by the text teacher: give a text model too")
        widths = {"text": self.text.dims.kd_dim,
                  "audio": getattr(getattr(self.voice, "dims", None), "kd_dim", dim),
                  "visual": face_feature_dim if face_feature_dim is not None else dim}
        wrong = {m: w for m, w in widths.items() if w != dim}
        if wrong:
            raise ValueError(f"ASF fuses {dim}-d features but these modalities give other widths: {wrong}; "
                             f"teacher and students must be distilled to the ASF's kd_dim")
        get_label_map(self.asf.label_set, OUTPUT_LABEL_SET)  # fails early when the map is missing

    def _check_late_fusion(self, fusion: Any) -> None:
        dims = fusion.dims
        if dims.label_set != OUTPUT_LABEL_SET:
            raise ValueError(f"late fusion outputs '{dims.label_set}', the live pipeline outputs '{OUTPUT_LABEL_SET}'")
        declared = dict(zip(dims.modalities, dims.source_label_sets))
        for m, s in self.source_label_sets.items():
            if m not in declared:
                raise ValueError(f"late fusion checkpoint has no '{m}' modality (it fuses {list(dims.modalities)})")
            if declared[m] != s:
                raise ValueError(f"late fusion expects '{m}' in label set '{declared[m]}', the model gives '{s}'")

    # -- description --------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        """Modalities this predictor can use (each may still be absent for one utterance)."""
        return [m for m in MODALITIES if m in self.source_label_sets]

    @property
    def fusion_name(self) -> str:
        return "asf" if self.asf is not None else "late"

    def reset(self) -> None:
        """A new conversation: forget the speakers' running voice statistics."""
        if self.voice is not None:
            self.voice.reset()

    def speculate(self, pause: Any, speaker: str) -> Any:
        """Start the voice model on a :class:`mmer.realtime.frames.SpeechPause` (the utterance's
        audio if the silence lasts) in the worker thread; :meth:`predict` uses the result for the
        utterance with the same key, audio length and speaker, and commits the speaker's
        statistics only then. Without a worker (``parallel`` off) this does nothing. Returns the
        run's future (or None)."""
        if self._pool is None or self.voice is None or voice_input_problem(pause.audio):
            return None
        audio = np.ascontiguousarray(pause.audio, dtype=np.float32)

        def run() -> tuple[dict[str, np.ndarray], float]:
            t0 = time.perf_counter()
            return self.voice.infer(audio, speaker=speaker), _ms_since(t0)

        self._early = (pause.key, len(audio), speaker, self._pool.submit(run))
        return self._early[3]

    def _voice_job(self, utterance: Utterance) -> Any:
        """The voice result of ``utterance``: a matching early run (committed now), else a new
        run in the worker (or inline)."""
        early, self._early = self._early, None
        if early is not None and utterance.key is not None and early[:2] == (utterance.key, len(utterance.audio)):
            out, ms = early[3].result()
            if early[2] != utterance.speaker:
                # The host named the speaker after the pause: the encoder's work stands, only the
                # speaker head is run again, with this speaker's statistics.
                t0 = time.perf_counter()
                out = self.voice.rehead(out, speaker=utterance.speaker)
                ms += _ms_since(t0)
            if out is not None:
                self.voice.commit(out, speaker=utterance.speaker)
                return _Done((out, ms))
        if self._pool is not None:
            return self._pool.submit(self._run_voice, utterance)
        return _Done(self._run_voice(utterance))

    def warmup(self) -> None:
        """Run every model once on one second of silence and "hello", so the first utterance is not slower."""
        silence = np.zeros(SAMPLE_RATE_HZ, np.float32)
        self.predict(Utterance(-1, 0.0, 1.0, silence, text="hello"), [Turn("user", "hello")])

    def close(self) -> None:
        """Stop the voice worker thread (parallel mode); idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- prediction -------------------------------------------------------------------------
    def predict(self, utterance: Utterance, turns: Sequence[Turn] | None = None,
                face: FaceEvidence | None = None) -> Prediction:
        """Classify one utterance.

        utterance: its ``audio`` (n,) float32 at 16 kHz, ``text`` (may be None or empty).
        turns: the dialogue window ending with this utterance's turn (the teacher's input);
            None or an empty last turn -> no text modality.
        face: the pooled face window, or None (no face seen: no visual modality).
        Stage times are added to ``utterance.timings_ms`` ("text", "voice", "fusion").
        """
        src_probs: dict[str, np.ndarray] = {}
        feats: dict[str, np.ndarray] = {}
        abstained: dict[str, str] = {}
        timings = utterance.timings_ms
        voice_job = None
        if self.voice is not None:
            reason = voice_input_problem(utterance.audio)
            if reason:
                abstained["audio"] = reason
                self._early = None
            else:
                voice_job = self._voice_job(utterance)
        if self.text is not None:
            if turns and turns[-1].text.strip():
                t0 = time.perf_counter()
                out = self.text.predict(list(turns))
                src_probs["text"] = self.calibration["text"].probs(out["logits"][0])
                feats["text"] = out["feature"]
                timings["text"] = _ms_since(t0)
            else:
                abstained["text"] = "no words"
        if voice_job is not None:
            t0 = time.perf_counter()
            out, timings["voice"] = voice_job.result()
            timings["voice_wait"] = _ms_since(t0)
            src_probs["audio"] = self.calibration["audio"].probs(out["logits"][0])
            feats["audio"] = out["feature"]
        if self.face_label_set is not None:
            if face is not None:
                src_probs["visual"] = face.probs
                if face.feature is not None:
                    feats["visual"] = np.asarray(face.feature, np.float32)[None]
            else:
                abstained["visual"] = "no face"

        t0 = time.perf_counter()
        for m, p in src_probs.items():
            floor = self.calibration[m].min_confidence
            if float(np.max(p)) < floor:
                abstained[m] = f"confidence {float(np.max(p)):.2f} below its calibrated {floor:.2f}"
        mapped = {m: self.maps[m].map_probs(p) for m, p in src_probs.items()}
        voting = [m for m in mapped if m not in abstained]
        if (self.text_neutral_defers and "text" in voting and len(voting) > 1
                and self.labels[int(np.argmax(mapped["text"]))] == "neutral"):
            abstained["text"] = "words read as neutral: no evidence against the voice or face"
            voting.remove("text")
        fused, fusion, weights = self._fuse({m: mapped[m] for m in voting}, {m: feats[m] for m in voting if m in feats})
        timings["fusion"] = _ms_since(t0)

        present = [m for m in MODALITIES if m in voting]
        best = int(np.argmax(fused))
        valence, arousal = valence_arousal(fused, self.labels)
        face_info = None if face is None else {"frames": face.frames, "faces": face.faces,
                                               "box": None if face.box is None else list(face.box)}
        return Prediction(
            utterance_id=utterance.id, start_s=utterance.start_s, end_s=utterance.end_s, speaker=utterance.speaker,
            text=utterance.text, label=self.labels[best], probs=_probs_dict(fused, self.labels),
            modality_probs={m: _probs_dict(mapped[m], self.labels) for m in MODALITIES if m in mapped},
            modalities=present, valence=valence, arousal=arousal,
            confidence=float(fused[best]) if present else 0.0, fusion=fusion if present else "none",
            split=utterance.split, face=face_info, abstained=abstained, weights=weights,
            clock_origin_unix_s=utterance.clock_origin_unix_s)

    def interim_text(self, turns: Sequence[Turn]) -> tuple[str | None, dict[str, float] | None]:
        """(label, meld7 probabilities) of the text model alone on ``turns`` (the dialogue and the
        words heard so far), calibrated as in :meth:`predict`; (None, None) without a text model."""
        if self.text is None:
            return None, None
        out = self.text.predict(list(turns))
        probs = self.maps["text"].map_probs(self.calibration["text"].probs(out["logits"][0]))
        return self.labels[int(np.argmax(probs))], _probs_dict(probs, self.labels)

    def _run_voice(self, utterance: Utterance) -> tuple[dict[str, np.ndarray], float]:
        t0 = time.perf_counter()
        out = self.voice.predict(np.ascontiguousarray(utterance.audio, dtype=np.float32),
                                 speaker=utterance.speaker, hidden=utterance.encoder_hidden)
        return out, _ms_since(t0)

    def _fuse(self, mapped: dict[str, np.ndarray],
              feats: dict[str, np.ndarray]) -> tuple[np.ndarray, str, dict[str, float]]:
        """(C,) fused probabilities over meld7, the fusion used ("asf", "late", "single", "none")
        and the weight each voting modality received."""
        if self.asf is not None and "text" in feats:
            out = self.asf.predict({m: feats[m][0] for m in feats})
            return get_label_map(self.asf.label_set, OUTPUT_LABEL_SET).map_probs(out["probs"][0]), "asf", {}
        if not mapped:
            return np.full(len(self.labels), 1.0 / len(self.labels), dtype=np.float32), "none", {}
        dev = self.late_fusion.device
        probs = {m: torch.from_numpy(p)[None].to(dev) for m, p in mapped.items()}
        covered = {m: torch.from_numpy(self.maps[m].covered()).to(dev) for m in mapped}
        with torch.inference_mode():
            out = self.late_fusion(probs, covered=covered)
        weights = {m: float(w) for m, w in zip(self.late_fusion.dims.modalities, out.features["weights"][0])
                   if m in mapped}
        return out.probs[0].float().cpu().numpy(), "late" if len(mapped) > 1 else "single", weights


class _Done:
    """A finished job with the ``result()`` of a future (the voice model run inline)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def voice_input_problem(audio: np.ndarray) -> str:
    """Why ``audio`` (n,) at 16 kHz is out of range for the voice model, or "" when it is fine."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < MIN_VOICE_S * SAMPLE_RATE_HZ:
        return f"too short ({len(audio) / SAMPLE_RATE_HZ:.2f} s < {MIN_VOICE_S} s)"
    if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < MIN_VOICE_RMS:
        return "near-silent"
    if float(np.mean(np.abs(audio) >= CLIP_LEVEL)) > MAX_CLIPPED_FRACTION:
        return "clipped"
    return ""


# -- loading ------------------------------------------------------------------------------------
ROLE_MODALITY = {"text": "text", "voice": "audio", "face": "visual"}


def load_model(role: str, spec: str | Path, device: str = "cpu") -> Any:
    """Load the checkpoint folder or embedded default ``spec`` as a torch model for ``role``
    (``text``, ``voice``, ``face``: the model's contract must read that modality; ``fusion``:
    a late fusion or a feature-level fusion checkpoint)."""
    import mmer

    model = mmer.load(spec, device=device)
    wanted = ROLE_MODALITY.get(role, "fusion")
    if getattr(model, "modality", "") != wanted:
        raise ValueError(f"--{role}-model {spec}: a '{model.registry_name}' checkpoint reads "
                         f"{getattr(model, 'modality', '?') or 'no single modality'}, the {role} model must read {wanted}")
    return model


def serve_model(role: str, spec: str | Path, models: Any) -> Any:
    """Serve ``spec`` (checkpoint, embedded default or export folder) for ``role`` with the runtime
    and precision ``models`` (:class:`mmer.realtime.config.ModelsConfig`) gives that role."""
    from mmer.serving import serve

    runtime = getattr(models, f"{role}_runtime", "auto")
    runtime = models.runtime if runtime == "auto" else runtime
    served = serve(spec, runtime, device=models.device, precision=getattr(models, f"{role}_precision", None),
                   threads=models.ort_threads or None)
    if served.modality != ROLE_MODALITY[role]:
        raise ValueError(f"--{role}-model {spec}: '{served.name}' reads {served.modality}, the {role} model must "
                         f"read {ROLE_MODALITY[role]}")
    return served


def load_face_model(spec: str | Path, models: Any) -> Any:
    """The face path's model: a Haar detector + an edge visual student (mmer.face), served as
    ``models`` says."""
    from mmer.face import FaceExpressionModel

    return FaceExpressionModel(serve_model("face", spec, models))


def load_stack(models: Any, predictor: Predictor | None = None, face_model: Any = None) -> tuple[Predictor, Any]:
    """Load what was not given from ``models`` (a :class:`mmer.realtime.config.ModelsConfig`).

    Returns (predictor, face model or False when the face modality is off). The predictor's
    ``sources`` names where each model came from (for the start-up report).
    """
    if face_model is None:
        face_model = load_face_model(models.face, models) if models.face else False
    if predictor is None:
        student = getattr(face_model, "model", None) if face_model else None
        predictor = Predictor(
            text_model=serve_model("text", models.text, models) if models.text else None,
            voice_model=serve_model("voice", models.voice, models) if models.voice else None,
            face_label_set=getattr(student, "label_set", None) if face_model else None,
            face_feature_dim=getattr(getattr(student, "dims", None), "kd_dim", None),
            face_calibration=getattr(student, "calibration", None) if face_model else None,
            fusion=load_model("fusion", models.fusion, models.device) if models.fusion else None,
            parallel=models.parallel)
        predictor.sources = {"text": models.text, "voice": models.voice,
                             "face": models.face if face_model else None, "fusion": models.fusion}
    return predictor, face_model
