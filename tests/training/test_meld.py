"""MELD loader: the real CSVs (counts, contexts, text repair) and a tiny clip tree (media, skips)."""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmer.registry import DATASETS
from mmer.training import media
from mmer.training.datasets import DatasetError, MediaOptions, build_dataset, pad_waveforms
from mmer.training.meld import MeldDataset, clean_text, fix_mojibake, read_meld_csv
from tests.training.fixtures import make_clip, make_tiny_meld

TEST_COUNTS = {"neutral": 1256, "joy": 402, "anger": 345, "surprise": 281, "sadness": 208, "disgust": 68, "fear": 50}
AV = ("text", "audio", "visual")
RATE_HZ = 16_000


@pytest.fixture(scope="session")
def meld_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "MELD"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_meld(tmp_path_factory.mktemp("tiny_meld"), n_dialogues=2, utts_per_dialogue=2)


def _av(tiny, split, tmp_path, **kw) -> MeldDataset:
    """The tiny tree with all modalities; ffprobe results are shared through the tree's probe cache."""
    return MeldDataset(tiny.root, split, modalities=AV, probe_cache_dir=tiny.root / "probe", progress=False, **kw)


# -- the real CSVs --------------------------------------------------------------------------
def test_real_counts_text_only(meld_dir):
    sizes = {s: len(MeldDataset(meld_dir, s, progress=False)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 9989, "dev": 1109, "test": 2610}
    assert MeldDataset(meld_dir, "test", progress=False).label_counts() == {
        name: TEST_COUNTS[name] for name in ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")}


def test_contexts_follow_utterance_id_not_file_order(meld_dir, tmp_path):
    ds = MeldDataset(meld_dir, "dev", progress=False)
    first = ds[0]
    assert first.uid == "meld/dev/dia0_utt0" and len(first.turns) == 1
    by_uid = {s.uid: s for s in ds}
    for s in ds:
        assert s.target_index == len(s.turns) - 1 and s.turns[-1].speaker == s.speaker
        u = int(s.uid.rsplit("_utt", 1)[1])
        prev = by_uid.get(s.uid.rsplit("_utt", 1)[0] + f"_utt{u - 1}")
        if prev is not None:  # the context grows by exactly one turn per utterance
            assert s.turns[:-1] == prev.turns
    # Shuffle the file's rows: contexts must come out the same, ordered by Utterance_ID.
    rows = list(csv.reader(open(meld_dir / "dev_sent_emo.csv", encoding="utf-8", newline="")))
    rng = np.random.default_rng(0)
    body = [rows[i] for i in rng.permutation(np.arange(1, len(rows)))]
    with open(tmp_path / "dev_sent_emo.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([rows[0]] + body)
    shuffled = {s.uid: s for s in MeldDataset(tmp_path, "dev", progress=False)}
    assert shuffled.keys() == by_uid.keys()
    assert all(shuffled[uid].turns == s.turns for uid, s in by_uid.items())
    # Speakers are the CSV's names; the last utterance's context holds the whole dialogue.
    names: dict[str, set[str]] = {}
    for row in rows[1:]:
        names.setdefault(row[5], set()).add(row[2])
    last = {s.dialogue_id: s for s in ds}  # samples are in dialogue order, so this keeps the last
    assert all({t.speaker for t in last[d].turns} == names[d] for d in last)
    assert {t.speaker for t in by_uid["meld/dev/dia0_utt1"].turns} == {"Phoebe", "Monica"}


def _as_cp1252_reader_sees_it(text: str) -> str:
    """UTF-8 bytes read as cp1252 (its five undefined bytes pass through as U+0081.., as Windows does)."""
    out = []
    for byte in text.encode("utf-8"):
        try:
            out.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(byte))
    return "".join(out)


def test_real_rows_with_typographic_quotes_and_their_mojibake(meld_dir, tmp_path):
    raw = [r for r in csv.reader(open(meld_dir / "train_sent_emo.csv", encoding="utf-8", newline=""))]
    header, quoted = raw[0], [r for r in raw[1:] if "\u2019" in r[1] or "\u2026" in r[1] or "\u2014" in r[1]]
    assert len(quoted) > 1000  # 3,550 right quotes in train
    clean = {(r.dialogue_id, r.utterance_id): r.text for d in read_meld_csv(meld_dir / "train_sent_emo.csv")
             for r in d.rows}
    first = clean[(0, 0)]
    assert first.startswith("also I was the point person on my company's transition")
    assert not any(ch in "".join(clean.values()) for ch in "\u2019\u2026\u2014\u00e2")
    # The same real rows as a cp1252 reader writes them ("company\u00e2\u20ac\u2122s"): repaired.
    broken = [[_as_cp1252_reader_sees_it(c) if i == 1 else c for i, c in enumerate(r)] for r in quoted[:300]]
    assert any("\u00e2\u20ac\u2122" in r[1] for r in broken)
    with open(tmp_path / "train_sent_emo.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([header] + broken)
    repaired = {(r.dialogue_id, r.utterance_id): r.text for d in read_meld_csv(tmp_path / "train_sent_emo.csv")
                for r in d.rows}
    assert len(repaired) == 300 and all(v == clean[k] for k, v in repaired.items())


def test_text_repair_rules(tmp_path):
    assert fix_mojibake("he\u00e2\u20ac\u2122s") == "he\u2019s"
    assert fix_mojibake("caf\u00c3\u00a9") == "caf\u00e9"
    assert fix_mojibake("caf\u00e9 na\u00efve") == "caf\u00e9 na\u00efve"  # real accents stay
    assert clean_text("Wait\u2014what\u2026  \u201cno\u201d") == 'Wait-what... "no"'
    assert clean_text("it\u2019s", ascii_punctuation=False) == "it\u2019s"
    # A stray cp1252 byte (0x92, invalid UTF-8) in an otherwise UTF-8, CRLF file with a BOM.
    header = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    line = b'1,I\x92m here,Joey,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"'
    ok = '2,It\xe2\x80\x99s ok,Ross,neutral,neutral,0,1,1,1,"00:00:02,000","00:00:03,000"'.encode("latin-1")
    (tmp_path / "test_sent_emo.csv").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([header, line, ok]) + b"\r\n")
    ds = MeldDataset(tmp_path, "test", progress=False)
    assert [s.text for s in ds] == ["I'm here", "It's ok"]
    assert ds[1].turns[0].text == "I'm here"


def test_missing_root_and_files_are_named(tmp_path, meld_dir):
    with pytest.raises(DatasetError, match="does not exist"):
        MeldDataset(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="dev_sent_emo.csv"):
        MeldDataset(tmp_path, "dev")
    # Text-only needs no clips; audio without the clip folder names the folder.
    with pytest.raises(DatasetError, match="output_repeated_splits_test"):
        MeldDataset(meld_dir, "test", modalities=AV)
    with pytest.raises(ValueError, match="split"):
        MeldDataset(meld_dir, "validation")


def test_registered_by_name(meld_dir):
    ds = build_dataset("meld", root=meld_dir, split="dev", progress=False)
    assert DATASETS.get("meld") is MeldDataset and len(ds) == 1109


# -- the tiny clip tree ---------------------------------------------------------------------
def test_audio_is_16k_mono_capped_and_masked(tiny, tmp_path):
    ds = _av(tiny, "train", tmp_path)
    sample = ds[0]
    wav, valid, _ = ds.load_audio(sample)
    probed = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                             "stream=duration,sample_rate,channels", "-of", "csv=p=0", str(sample.audio_path)],
                            capture_output=True, text=True, check=True).stdout.strip().split(",")
    assert probed[:2] == ["44100", "2"]
    assert valid and wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / RATE_HZ - float(probed[2])) < 0.05  # 44.1 kHz stereo AAC -> 16 kHz mono
    cap_s = 0.5
    capped = _av(tiny, "train", tmp_path, media_options=MediaOptions(max_audio_s=cap_s))
    short = capped.load_audio(capped[0])
    assert len(short.data) == int(cap_s * RATE_HZ)
    np.testing.assert_allclose(short.data[:4000], wav[:4000], atol=1e-4)  # the cap keeps the start
    absent = capped.load_audio(dataclasses.replace(capped[0], audio_path=None))
    batch, mask, present = pad_waveforms([short, ds.load_audio(ds[1]), absent])
    assert batch.shape == mask.shape == (3, max(len(short.data), len(ds.load_audio(ds[1]).data)))
    assert mask[0].sum() == len(short.data) and mask[2].sum() == 0
    assert present.tolist() == [True, True, False]


def test_frames_are_rgb_and_uniform_over_the_clip(tmp_path):
    red = make_clip(tmp_path / "red.mp4", seconds=1.0, color="red", silent=True)
    frames = media.read_frames(red, 8, size_px=32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    r, g, b = (frames[..., c].mean() for c in range(3))
    assert r > 200 and g < 30 and b < 30, (r, g, b)  # OpenCV's BGR would put red in channel 2
    # Red for 2 s then blue for 2 s: uniform sampling sees both halves equally.
    half = tmp_path / "half.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=red:size=32x32:rate=10:d=2",
                    "-f", "lavfi", "-i", "color=c=blue:size=32x32:rate=10:d=2", "-filter_complex",
                    "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-pix_fmt", "yuv420p", str(half)], check=True)
    frames = media.read_frames(half, 8)
    is_red = frames[..., 0].mean(axis=(1, 2)) > frames[..., 2].mean(axis=(1, 2))
    assert is_red.tolist() == [True] * 4 + [False] * 4


def test_face_crop_without_a_face_keeps_whole_frames(tmp_path):
    pytest.importorskip("cv2")
    red = make_clip(tmp_path / "red.mp4", seconds=1.0, color="red", silent=True)
    frames = media.read_frames(red, 8)
    cropped = media.face_crop_frames(frames, 16)  # no face in a red frame: resized, not guessed
    assert cropped.shape == (8, 16, 16, 3) and cropped[..., 0].mean() > 200 and cropped[..., 2].mean() < 30


def test_training_decodes_a_clip_as_the_replay_does(tmp_path):
    # The same 44.1 kHz stereo AAC clip: training's decode and mmer-predict's replay (FileSource)
    # run one decoder and one resampler, so the voice model hears the same numbers (train/serve).
    from mmer.realtime.sources import FileSource

    clip = make_clip(tmp_path / "talk.mp4", "We were on a break!")
    trained = media.decode_audio(clip)
    with FileSource(clip, include_video=False) as src:
        replayed = np.concatenate([c.samples for c in iter(src.read, None)]).astype(np.float32) / 32768
    assert len(replayed) == len(trained)
    assert np.abs(replayed - trained).max() < 1e-3 * np.abs(trained).max()


def test_cut_clip_is_an_undecodable_skip_naming_it(tmp_path):
    whole = tmp_path / "whole.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x32:rate=10:d=8",
                    "-f", "lavfi", "-i", "sine=f=300:r=44100:d=8", "-ac", "2", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", str(whole)],
                   check=True)
    cut = tmp_path / "dia9_utt9.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for read in (media.probe, media.decode_audio, lambda p: media.read_frames(p, 4)):
        with pytest.raises(media.MediaError, match=r"dia9_utt9\.mp4: truncated or corrupt at \d+\.\d s of 8\.0 s"):
            read(cut)
    assert media.MediaError.__module__ == "mmer.media"


def test_corrupt_and_missing_clips_are_skipped_with_reason(tiny, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    train, dev = _av(tiny, "train", tmp_path), _av(tiny, "dev", tmp_path)
    assert [u for u, _ in train.skipped] == tiny.corrupt and [u for u, _ in dev.skipped] == tiny.missing
    assert len(train) == tiny.rows["train"] - 1 and len(dev) == tiny.rows["dev"] - 1
    assert "undecodable" in train.skipped[0][1] and "missing" in dev.skipped[0][1]
    log = caplog.text
    for uid in tiny.corrupt + tiny.missing:
        assert f"skipped {uid}" in log
    assert "meld train: 3 samples kept, 1 skipped" in log and "reasons: undecodable: 1" in log
    kept = train[len(train) - 1]  # the clip after the corrupt one decodes
    assert train.load_audio(kept).valid and train.load_frames(kept).valid
    assert len(list((tiny.root / "probe").glob("meld_train_*.json"))) == 1


def test_probe_results_are_cached(tiny, tmp_path, monkeypatch):
    first = _av(tiny, "train", tmp_path)

    def no_probe(path):
        raise AssertionError(f"{path} probed again despite the cache")

    monkeypatch.setattr(media, "probe", no_probe)
    again = _av(tiny, "train", tmp_path)
    assert again.skipped == first.skipped and [s.uid for s in again] == [s.uid for s in first]


def test_text_only_policy_keeps_bad_clips_without_media(tiny, tmp_path):
    train = _av(tiny, "train", tmp_path, on_bad_clip="text_only")
    assert len(train) == tiny.rows["train"] and [u for u, _ in train.degraded] == tiny.corrupt
    bad = next(s for s in train if s.uid in tiny.corrupt)
    assert bad.audio_path is None and "undecodable" in bad.absent["audio"]
    audio, frames = train.load_audio(bad), train.load_frames(bad)
    assert not audio.valid and audio.data.shape == (0,)
    assert not frames.valid and frames.data.shape == (8, 224, 224, 3)
    # Test defaults to text_only (keeps all rows, as the paper's scores do): the mis-cut row
    # loses its media; the silent clip is found when decoded.
    test = _av(tiny, "test", tmp_path)
    assert len(test) == tiny.rows["test"] and [u for u, _ in test.degraded] == tiny.miscut
    silent = next(s for s in test if s.uid in tiny.silent)
    result = test.load_audio(silent)
    assert not result.valid and "silent" in result.reason
    assert test.load_frames(silent).valid


def test_known_bad_clip_is_skipped_even_if_a_file_exists(tiny, tmp_path):
    root = tmp_path / "meld"
    (root / "train_splits").mkdir(parents=True)
    with open(tiny.root / "train_sent_emo.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    rows[1][5:7] = ["125", "3"]
    with open(root / "train_sent_emo.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows[:2])
    shutil.copy(tiny.root / "train_splits" / "dia0_utt0.mp4", root / "train_splits" / "dia125_utt3.mp4")
    ds = MeldDataset(root, "train", modalities=("text", "audio"), probe_cache_dir=tmp_path, progress=False)
    assert len(ds) == 0 and ds.skipped[0][0] == "meld/train/dia125_utt3" and "corrupt" in ds.skipped[0][1]
