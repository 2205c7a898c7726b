"""IEMOCAP loader on a tiny fake release tree (Sessions 1 and 5, sox wavs, DivX avi)."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest

from mmer.training import media
from mmer.training.datasets import DatasetError, build_dataset
from mmer.training.iemocap import (IemocapDataset, parse_emo_evaluation, parse_transcription, read_dialogue,
                                   speaker_of)
from tests.training.fixtures import IEMOCAP_SCRIPT, make_tiny_iemocap

RATE_HZ = 16_000
TRAIN = dict(train_sessions=(1,), progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_parses_the_release_line_formats(tmp_path):
    (tmp_path / "e.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
        "[10.0100 - 11.3925]\tSes01F_impro01_M000\txxx\t[2.0000, 3.0000, 3.0000]\n")
    (tmp_path / "t.txt").write_text(
        "Ses01F_impro01_M000 [010.0100-011.3925]: Do you have your forms?\n"
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "M: [BREATHING]\n")
    assert parse_emo_evaluation(tmp_path / "e.txt") == {"Ses01F_impro01_F000": (6.2901, 8.2357, "neu"),
                                                        "Ses01F_impro01_M000": (10.01, 11.3925, "xxx")}
    rows, other = parse_transcription(tmp_path / "t.txt")
    assert rows[1] == ("Ses01F_impro01_F000", 6.2901, 8.2357, "Excuse me.") and other == ["M: [BREATHING]"]
    utts, dropped = read_dialogue(tmp_path / "e.txt", tmp_path / "t.txt")
    assert [u.utt_id for u in utts] == ["Ses01F_impro01_F000", "Ses01F_impro01_M000"]  # by start time
    assert [u.speaker for u in utts] == ["F", "M"] and dropped == []


def test_speaker_is_the_gender_letter_not_the_utterance_id():
    assert speaker_of("Ses01F_impro01_F000") == "F"
    assert speaker_of("Ses01F_impro01_M012") == "M"
    assert speaker_of("Ses05M_script01_1b_F003") == "F"
    with pytest.raises(ValueError):
        speaker_of("Ses01F_impro01_X000")


def test_six_classes_two_speakers_and_context(tiny):
    test = IemocapDataset(tiny.root, "test", progress=False)
    dialogues = {s.dialogue_id for s in test}
    assert dialogues == {"Ses05F_impro01", "Ses05M_script01_1"}
    assert len(test) == 2 * sum(lab != "xxx" for _, lab, _ in IEMOCAP_SCRIPT)
    for d in dialogues:
        samples = [s for s in test if s.dialogue_id == d]
        assert {t.speaker for s in samples for t in s.turns} == {"F", "M"}
        for s in samples:
            assert s.speaker == s.uid.rsplit("_", 1)[1][0]
    last = [s for s in test if s.dialogue_id == "Ses05F_impro01"][-1]
    # The context holds every transcribed turn (the xxx one too), in time order.
    assert [t.text for t in last.turns] == [text for _, _, text in IEMOCAP_SCRIPT]
    assert last.turns[0].speaker == "F" and last.label_name == "sad"
    assert test.excluded == {"xxx": 2}
    short = IemocapDataset(tiny.root, "test", context_unlabeled=False, progress=False)
    assert "Let me see them." not in [t.text for t in short[len(short) - 1].turns]


def test_four_class_merge(tiny):
    six = IemocapDataset(tiny.root, "test", classes=6, progress=False)
    four = IemocapDataset(tiny.root, "test", classes=4, progress=False)
    assert six.labels.labels == ("hap", "sad", "neu", "ang", "exc", "fru")
    assert four.labels.labels == ("ang", "hap", "neu", "sad")
    raw = {s.uid: s.label_name for s in six}
    assert {raw[s.uid] for s in four if s.label_name == "hap"} == {"hap", "exc"}
    assert all(raw[s.uid] == s.label_name for s in four if s.label_name != "hap")
    assert "fru" not in {raw[s.uid] for s in four} and len(four) == len(six) - 2  # fru dropped
    assert four.label_counts() == {"ang": 2, "hap": 4, "neu": 2, "sad": 2}


def test_sessions_split_train_dev_test(tiny):
    train = IemocapDataset(tiny.root, "train", **TRAIN)
    dev = IemocapDataset(tiny.root, "dev", **TRAIN)
    test = IemocapDataset(tiny.root, "test", progress=False)
    tr, dv, te = ({s.dialogue_id for s in ds} for ds in (train, dev, test))
    assert tr | dv == {"Ses01F_impro01", "Ses01M_script01_1"} and not tr & dv and len(dv) == 1
    assert all(d.startswith("Ses05") for d in te)
    again = IemocapDataset(tiny.root, "dev", **TRAIN)
    assert [s.uid for s in again] == [s.uid for s in dev]  # seeded
    assert isinstance(build_dataset("iemocap", root=tiny.root.parent, split="test", progress=False), IemocapDataset)


def test_missing_session_is_named(tiny, tmp_path):
    with pytest.raises(DatasetError, match="Session2"):
        IemocapDataset(tiny.root, "train", train_sessions=(1, 2), progress=False)
    with pytest.raises(DatasetError, match="does not exist"):
        IemocapDataset(tmp_path / "nothing", "test")


def test_audio_and_video_span(tiny):
    ds = IemocapDataset(tiny.root, "test", modalities=("text", "audio", "visual"), progress=False)
    sample = ds[0]
    assert sample.audio_path.name == f"{sample.uid.split('/')[1]}.wav" and sample.video_path.suffix == ".avi"
    audio = ds.load_audio(sample)
    assert audio.valid and len(audio.data) == RATE_HZ  # 1 s utterance
    frames = ds.load_frames(sample)
    assert frames.valid and frames.data.shape == (8, 224, 224, 3)
    assert sample.video_span_s == (2.0, 3.0)


def test_video_is_cut_to_the_utterance_span(tmp_path):
    avi = tmp_path / "dialog.avi"  # red for 3 s, then blue for 3 s
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=red:size=32x32:rate=10:d=3",
                    "-f", "lavfi", "-i", "color=c=blue:size=32x32:rate=10:d=3", "-filter_complex",
                    "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "mpeg4", "-q:v", "2", str(avi)], check=True)
    blue = media.read_frames(avi, 4, span_s=(3.5, 5.5))
    red = media.read_frames(avi, 4, span_s=(0.5, 2.5))
    assert (blue[..., 2].mean(axis=(1, 2)) > 150).all() and (blue[..., 0].mean(axis=(1, 2)) < 60).all()
    assert (red[..., 0].mean(axis=(1, 2)) > 150).all() and (red[..., 2].mean(axis=(1, 2)) < 60).all()


def test_missing_wav_is_skipped_with_reason(tiny, tmp_path, caplog):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny.root, root)
    gone = root / "Session5" / "sentences" / "wav" / "Ses05F_impro01" / "Ses05F_impro01_M000.wav"
    gone.unlink()
    caplog.set_level(logging.WARNING)
    kept = IemocapDataset(root, "test", modalities=("text", "audio"), progress=False)  # test: text-only
    dropped = IemocapDataset(root, "test", modalities=("text", "audio"), on_bad_clip="skip", progress=False)
    assert len(kept) == len(dropped) + 1
    assert dropped.skipped == [("iemocap/Ses05F_impro01_M000", f"missing: {gone}")]
    assert "skipped iemocap/Ses05F_impro01_M000: missing" in caplog.text
    hole = next(s for s in kept if s.uid.endswith("Ses05F_impro01_M000"))
    assert hole.audio_path is None and not kept.load_audio(hole).valid
    assert np.asarray(kept.load_audio(hole).data).size == 0
