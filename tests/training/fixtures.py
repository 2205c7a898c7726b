"""Generators of tiny datasets in the real corpus layouts, for tests (no real media needed).

    from tests.training.fixtures import make_tiny_meld, make_tiny_iemocap
    tiny = make_tiny_meld(tmp_path / "meld")          # CSVs + mp4 clips, official folder names
    ds = MeldDataset(tiny.root, "train", modalities=("text", "audio", "visual"))

Clips are real media: espeak-ng speech muxed by ffmpeg with moving 64x64 test-pattern frames,
1-2 s each. Like the real MELD release, the tree holds bad clips, listed in the manifest:
train's second dialogue has a corrupt clip (cf. dia125_utt3), dev's last utterance has no clip
(cf. dia110_utt7), test's first clip is silent and one test row's CSV times span minutes
(the mis-cut clips).
"""

from __future__ import annotations

import csv
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                "Season", "Episode", "StartTime", "EndTime"]
MELD_SPLITS = {"train": ("train_sent_emo.csv", "train_splits"),
               "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
               "test": ("test_sent_emo.csv", "output_repeated_splits_test")}
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
             "sadness": "negative", "disgust": "negative", "fear": "negative"}
SPEAKERS = ("Joey", "Rachel", "Ross")
LINES = ("I\u2019m telling you, it\u2019s fine.", "Wait\u2014what did you say?", "Oh, that\u2019s great!",
         "No way\u2026", "Could you please stop?", "We were on a break!")
CLIP_SIDE_PX = 64          # frames of the fake clips
CLIP_FPS = 10              # frames per second of the fake clips
MISCUT_SPAN_S = 240.0      # CSV span of the mis-cut test row (real ones: 235 s, 305 s)
AUDIO_RATE_HZ = 44_100     # fake clips carry 44.1 kHz stereo AAC, so loaders must resample and downmix
IEMOCAP_RATE_HZ = 16_000   # IEMOCAP's wavs are 16 kHz mono
WORKERS = 2                # clip generators at once (2-core machines)


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def make_clip(path: Path, text: str | None = None, seconds: float | None = None, color: str | None = None,
              silent: bool = False, size_px: int = CLIP_SIDE_PX) -> Path:
    """Write an mp4 (H.264 + AAC 44.1 kHz stereo).

    text: spoken by espeak-ng (the clip lasts as long as the speech) unless ``silent``.
    seconds: duration for silent clips or a fixed length.
    color: an ffmpeg colour name ("red"...) for solid frames; default a moving test pattern.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    video = f"color=c={color}:size={size_px}x{size_px}:rate={CLIP_FPS}" if color else \
        f"testsrc2=size={size_px}x{size_px}:rate={CLIP_FPS}"
    if silent or not text:
        audio = ["-f", "lavfi", "-i", f"anullsrc=r={AUDIO_RATE_HZ}:cl=stereo"]
        length = ["-t", f"{seconds or 1.0:.3f}"]
    else:
        wav = path.with_suffix(".speech.wav")
        _run(["espeak-ng", "-w", str(wav), text])
        audio = ["-i", str(wav)]
        length = ["-t", f"{seconds:.3f}"] if seconds else ["-shortest"]
    _run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", video, *audio, "-map", "0:v", "-map", "1:a",
          *length, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
          "-c:a", "aac", "-ar", str(AUDIO_RATE_HZ), "-ac", "2", str(path)])
    if not (silent or not text):
        path.with_suffix(".speech.wav").unlink()
    return path


@dataclass
class TinyMeld:
    """What :func:`make_tiny_meld` wrote. uids are ``meld/<split>/dia{D}_utt{U}``."""

    root: Path
    rows: dict[str, int] = field(default_factory=dict)          # split -> CSV rows
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    miscut: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)         # uid -> utterance as written


def _stamp(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d},{int(round((s % 1) * 1000)) % 1000:03d}"


def make_tiny_meld(root: str | Path, n_dialogues: int = 3, utts_per_dialogue: int = 3,
                   with_clips: bool = True) -> TinyMeld:
    """Write MELD's three CSVs (exact columns, UTF-8, CRLF) and, optionally, mp4 clips.

    Needs n_dialogues >= 2 and utts_per_dialogue >= 2 (room for the bad clips). Returns the
    manifest of what was written, including the deliberately bad clips.
    """
    if n_dialogues < 2 or utts_per_dialogue < 2:
        raise ValueError("make_tiny_meld needs at least 2 dialogues of 2 utterances")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tiny = TinyMeld(root)
    jobs = []
    k = 0
    for split, (csv_name, folder) in MELD_SPLITS.items():
        rows = []
        clock_s = 60.0
        for d in range(n_dialogues):
            for u in range(utts_per_dialogue):
                uid = f"meld/{split}/dia{d}_utt{u}"
                text = LINES[k % len(LINES)]
                emotion = EMOTIONS[k % len(EMOTIONS)]
                span = 1.5
                if split == "test" and (d, u) == (n_dialogues - 1, 0):
                    span = MISCUT_SPAN_S
                    tiny.miscut.append(uid)
                rows.append([str(len(rows) + 1), text, SPEAKERS[(d + u) % len(SPEAKERS)], emotion, SENTIMENT[emotion],
                             str(d), str(u), "3", "7", _stamp(clock_s), _stamp(clock_s + span)])
                tiny.texts[uid] = text
                clock_s += span + 0.5
                k += 1
                clip = root / folder / f"dia{d}_utt{u}.mp4"
                if split == "train" and (d, u) == (1, 1):
                    tiny.corrupt.append(uid)
                    jobs.append(("corrupt", clip, text))
                elif split == "dev" and (d, u) == (n_dialogues - 1, utts_per_dialogue - 1):
                    tiny.missing.append(uid)
                elif split == "test" and (d, u) == (0, 0):
                    tiny.silent.append(uid)
                    jobs.append(("silent", clip, text))
                else:
                    jobs.append(("speech", clip, text))
        with open(root / csv_name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\r\n")
            writer.writerow(MELD_COLUMNS)
            writer.writerows(rows)
        tiny.rows[split] = len(rows)
    if with_clips:
        for _, folder in MELD_SPLITS.values():
            (root / folder).mkdir(exist_ok=True)

        def make(job: tuple[str, Path, str]) -> None:
            kind, clip, text = job
            if kind == "corrupt":  # the first bytes of a real mp4, then garbage: no moov atom
                good = make_clip(clip.with_name("tmp_" + clip.name), text)
                clip.write_bytes(good.read_bytes()[:256] + b"\x00garbage" * 64)
                good.unlink()
            elif kind == "silent":
                make_clip(clip, seconds=1.0, silent=True)
            else:
                make_clip(clip, text)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(make, jobs))
    return tiny


# -- IEMOCAP -------------------------------------------------------------------------------
IEMOCAP_SCRIPT = (  # (speaker letter, label, text): one dialogue; xxx and fru exercise the drops
    ("F", "neu", "Excuse me."),
    ("M", "fru", "Do you have your forms?"),
    ("F", "hap", "Yeah, I have them right here."),
    ("M", "xxx", "Let me see them."),
    ("F", "exc", "That is wonderful news!"),
    ("M", "ang", "This is not what I asked for."),
    ("F", "sad", "I am sorry."),
)
UTT_S = 1.0        # length of every fake IEMOCAP utterance
GAP_S = 0.5        # silence between them


@dataclass
class TinyIemocap:
    """What :func:`make_tiny_iemocap` wrote: root and dialogue -> [(utt id, label, text)]."""

    root: Path
    dialogues: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def make_tiny_iemocap(root: str | Path, sessions: tuple[int, ...] = (1, 5), with_video: bool = True) -> TinyIemocap:
    """Write an IEMOCAP_full_release tree under ``root`` (returned root points at it).

    Each session gets two dialogues (one improvised, one scripted) of the utterances of
    ``IEMOCAP_SCRIPT`` (the second dialogue starts with M, so speakers appear in the other
    order), sox-made 16 kHz wavs, and a DivX avi per dialogue when ``with_video``.
    """
    release = Path(root) / "IEMOCAP_full_release"
    tiny = TinyIemocap(release)
    media_jobs = []
    for n in sessions:
        session = release / f"Session{n}"
        for dialog, flip in ((f"Ses0{n}F_impro01", False), (f"Ses0{n}M_script01_1", True)):
            counters = {"F": 0, "M": 0}
            eval_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            trans_lines = []
            utts = []
            t = 2.0
            for i, (letter, label, text) in enumerate(IEMOCAP_SCRIPT):
                if flip:
                    letter = "M" if letter == "F" else "F"
                utt = f"{dialog}_{letter}{counters[letter]:03d}"
                counters[letter] += 1
                start, end = t, t + UTT_S
                t = end + GAP_S
                eval_lines += [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
                               f"C-E1:\t{label.capitalize()};\t()", "A-E1:\tval 3; act 3; dom  3;\t()", ""]
                trans_lines.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {text}")
                utts.append((utt, label, text))
                media_jobs.append(["sox", "-n", "-r", str(IEMOCAP_RATE_HZ), "-b", "16", "-c", "1",
                                   str(session / "sentences" / "wav" / dialog / f"{utt}.wav"),
                                   "synth", f"{UTT_S}", "sine", str(220 + 40 * i)])
            trans_lines.append("M: [BREATHING]")  # untimed lines exist in the release; parsers ignore them
            for sub, lines in (("EmoEvaluation", eval_lines), ("transcriptions", trans_lines)):
                (session / "dialog" / sub).mkdir(parents=True, exist_ok=True)
                (session / "dialog" / sub / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
            (session / "sentences" / "wav" / dialog).mkdir(parents=True, exist_ok=True)
            if with_video:
                (session / "dialog" / "avi" / "DivX").mkdir(parents=True, exist_ok=True)
                media_jobs.append(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                                   f"testsrc2=size={CLIP_SIDE_PX}x{CLIP_SIDE_PX}:rate={CLIP_FPS}", "-t", f"{t:.3f}",
                                   "-c:v", "mpeg4", str(session / "dialog" / "avi" / "DivX" / f"{dialog}.avi")])
            tiny.dialogues[dialog] = utts
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(_run, media_jobs))
    return tiny
