"""IEMOCAP (Busso et al., 2008) from its release layout: dyadic sessions, 6- or 4-class ERC.

Layout (REFERENCE.md section 3), ``root`` = IEMOCAP_full_release (or its parent)::

    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[...]
    Session{1..5}/dialog/transcriptions/<dialog>.txt   Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
    Session{1..5}/sentences/wav/<dialog>/<utt>.wav      (audio)
    Session{1..5}/dialog/avi/DivX/<dialog>.avi          (visual: one video per dialogue, cut by utterance times)

Conventions (TelME, COSMIC): 6 classes hap, sad, neu, ang, exc, fru; 4 classes ang, hap (+exc),
neu, sad with fru dropped; every other label (xxx, oth, sur, fea, dis) is dropped. Sessions 1-4
train and dev, Session 5 test. Dev is a seeded random ``dev_fraction`` of the Session 1-4
*dialogues* (whole dialogues, so no conversation straddles train and dev; the actors do, as in
every published IEMOCAP ERC split, which has no separate dev speakers). Holding out Session 4
instead would cost a fifth of the training data.

Speakers (defect 5): each dialogue has two actors; the speaker of ``Ses01F_impro01_M012`` is
"M", the gender letter of the id's last part, never the utterance id itself.
Context: every transcribed utterance of the dialogue in start-time order, including those whose
label is dropped (they were said; a live system hears them too); ``context_unlabeled=False``
keeps only utterances with a kept label, as the COSMIC feature files do.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mmer.dialogue import Turn
from mmer.registry import DATASETS
from mmer.training.datasets import DatasetError, EmotionDataset, MediaOptions, Sample, require_paths

log = logging.getLogger(__name__)

LABELS6 = ("hap", "sad", "neu", "ang", "exc", "fru")
MERGE4 = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}  # fru dropped
TRAIN_SESSIONS = (1, 2, 3, 4)
TEST_SESSIONS = (5,)
DEV_FRACTION = 0.1   # of the train-session dialogues
SPEAKER_LETTERS = ("F", "M")
EVAL_DIR, TRANS_DIR = "dialog/EmoEvaluation", "dialog/transcriptions"
WAV_DIR, AVI_DIR = "sentences/wav", "dialog/avi/DivX"
LAYOUT = """  Session{N}/dialog/EmoEvaluation/<dialog>.txt
  Session{N}/dialog/transcriptions/<dialog>.txt
  Session{N}/sentences/wav/<dialog>/<utterance>.wav   (only for audio)
  Session{N}/dialog/avi/DivX/<dialog>.avi             (only for visual)
(Sessions 1-4 for train/dev, 5 for test; root = IEMOCAP_full_release)"""

_EVAL = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)")
_TRANS = re.compile(r"^(\S+)\s+\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s*:\s*(.*)$")


@dataclass(frozen=True)
class Utterance:
    """One line of a transcription, with its label when EmoEvaluation has one."""

    utt_id: str
    start_s: float
    end_s: float
    speaker: str
    text: str
    label: str | None


def speaker_of(utt_id: str) -> str:
    """'Ses01F_impro01_F000' -> 'F'; the gender letter of the last part (defect 5)."""
    letter = utt_id.rsplit("_", 1)[-1][:1].upper()
    if letter not in SPEAKER_LETTERS:
        raise ValueError(f"utterance id {utt_id!r}: last part does not start with F or M")
    return letter


def parse_emo_evaluation(path: Path) -> dict[str, tuple[float, float, str]]:
    """Utterance id -> (start_s, end_s, label) from one EmoEvaluation file (the summary lines)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        m = _EVAL.match(line.strip())
        if m:
            out[m.group(3)] = (float(m.group(1)), float(m.group(2)), m.group(4).lower())
    return out


def parse_transcription(path: Path) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    """(utterance id, start_s, end_s, text) of each timed line, and the lines that are not."""
    rows, other = [], []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        m = _TRANS.match(line)
        if m:
            rows.append((m.group(1), float(m.group(2)), float(m.group(3)), " ".join(m.group(4).split())))
        else:
            other.append(line)
    return rows, other


def read_dialogue(eval_path: Path, trans_path: Path) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances of one dialogue in start-time order, and (utterance id, reason) of dropped lines."""
    labels = parse_emo_evaluation(eval_path)
    rows, _ = parse_transcription(trans_path)
    utts, dropped = [], []
    for utt_id, start, end, text in rows:
        try:
            speaker = speaker_of(utt_id)
        except ValueError as e:
            dropped.append((utt_id, f"speaker: {e}"))
            continue
        label = labels.get(utt_id, (0.0, 0.0, None))[2]
        utts.append(Utterance(utt_id, start, end, speaker, text, label))
    known = {u.utt_id for u in utts} | {d for d, _ in dropped}
    dropped += [(u, "no transcript: labelled in EmoEvaluation, absent from transcriptions")
                for u in labels if u not in known]
    utts.sort(key=lambda u: (u.start_s, u.utt_id))
    return utts, dropped


@DATASETS.register("iemocap")
class IemocapDataset(EmotionDataset):
    """IEMOCAP utterances with their dialogue context (see the module docstring for the conventions).

    Args:
        root: IEMOCAP_full_release, or the folder that holds it.
        split: "train", "dev" or "test".
        classes: 6 (label set "iemocap6") or 4 ("iemocap4").
        modalities: subset of ("text", "audio", "visual").
        train_sessions / test_sessions: session numbers of train+dev and of test.
        dev_fraction / seed: the share of train-session dialogues held out as dev, and its seed.
        on_bad_clip: "skip" or "text_only" for an utterance whose wav or dialogue video is missing
            (default: "skip" for train/dev, "text_only" for test).
        context_unlabeled: keep utterances with dropped labels as context turns.
    """

    name = "iemocap"

    def __init__(self, root: str | Path, split: str = "train", classes: int = 6,
                 modalities: Sequence[str] = ("text",), train_sessions: Sequence[int] = TRAIN_SESSIONS,
                 test_sessions: Sequence[int] = TEST_SESSIONS, dev_fraction: float = DEV_FRACTION,
                 seed: int = 0, media_options: MediaOptions | None = None, on_bad_clip: str | None = None,
                 context_unlabeled: bool = True, progress: bool = True) -> None:
        if split not in ("train", "dev", "test"):
            raise ValueError(f"IEMOCAP split must be 'train', 'dev' or 'test', got '{split}'")
        if classes not in (4, 6):
            raise ValueError(f"IEMOCAP classes must be 6 or 4, got {classes}")
        if not 0.0 <= dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
        on_bad_clip = on_bad_clip or ("text_only" if split == "test" else "skip")
        if on_bad_clip not in ("skip", "text_only"):
            raise ValueError(f"on_bad_clip must be 'skip' or 'text_only', got '{on_bad_clip}'")
        super().__init__(split, modalities, f"iemocap{classes}", media_options, progress)
        root = Path(root)
        if not (root / "Session1").exists() and (root / "IEMOCAP_full_release").is_dir():
            root = root / "IEMOCAP_full_release"
        self.root = root
        self.classes = classes
        self.on_bad_clip = on_bad_clip
        self.context_unlabeled = context_unlabeled
        sessions = tuple(test_sessions) if split == "test" else tuple(train_sessions)
        required = []
        for n in sessions:
            required += [f"Session{n}/{EVAL_DIR}", f"Session{n}/{TRANS_DIR}"]
            required += [f"Session{n}/{WAV_DIR}"] if "audio" in self.modalities else []
            required += [f"Session{n}/{AVI_DIR}"] if "visual" in self.modalities else []
        require_paths(root, required, LAYOUT, "IEMOCAP")
        dialogues = self._dialogue_names(sessions)
        if split != "test":
            dev = self._dev_dialogues(sorted(dialogues), dev_fraction, seed)
            dialogues = {d: s for d, s in dialogues.items() if (d in dev) == (split == "dev")}
        self.excluded: Counter[str] = Counter()  # raw labels outside the class set (by convention)
        for dialog in tqdm(sorted(dialogues), desc=f"IEMOCAP {split}", disable=not progress, leave=False):
            self._add_dialogue(dialogues[dialog], dialog)
        log.info("IEMOCAP %s: utterances outside the %d classes, not used as targets: %s", split, classes,
                 dict(self.excluded.most_common()) or "none")
        self._finish_scan()

    def _dialogue_names(self, sessions: Sequence[int]) -> dict[str, Path]:
        """Dialogue name -> its session folder, from the EmoEvaluation files."""
        out = {}
        for n in sessions:
            session = self.root / f"Session{n}"
            for f in sorted((session / EVAL_DIR).glob("*.txt")):
                if not f.name.startswith("."):  # macOS "._" resource forks in some copies
                    out[f.stem] = session
        if not out:
            raise DatasetError(f"IEMOCAP: no dialogue files in {[f'Session{n}/{EVAL_DIR}' for n in sessions]} "
                               f"under {self.root}. Expected layout:\n{LAYOUT}")
        return out

    @staticmethod
    def _dev_dialogues(names: list[str], fraction: float, seed: int) -> set[str]:
        if fraction <= 0 or len(names) < 2:
            return set()
        k = min(len(names) - 1, max(1, round(fraction * len(names))))
        return set(random.Random(seed).sample(names, k))

    def _label(self, raw: str | None) -> str | None:
        if raw not in LABELS6:
            return None
        return raw if self.classes == 6 else MERGE4.get(raw)

    def _add_dialogue(self, session: Path, dialog: str) -> None:
        trans = session / TRANS_DIR / f"{dialog}.txt"
        if not trans.is_file():
            self._skip(f"iemocap/{dialog}", f"missing: transcription {trans}")
            return
        utts, dropped = read_dialogue(session / EVAL_DIR / f"{dialog}.txt", trans)
        for utt_id, reason in dropped:
            self._skip(f"iemocap/{utt_id}", reason)
        self.excluded.update(str(u.label) for u in utts if self._label(u.label) is None)
        if not self.context_unlabeled:
            utts = [u for u in utts if self._label(u.label) is not None]
        video = session / AVI_DIR / f"{dialog}.avi"
        turns = tuple(Turn(u.speaker, u.text) for u in utts)
        for i, u in enumerate(utts):
            name = self._label(u.label)
            if name is None:
                continue  # xxx, oth, sur, fea, dis (and fru for 4 classes): not a class, not an error
            uid = f"iemocap/{u.utt_id}"
            paths, absent = {}, {}
            if "audio" in self.modalities:
                wav = session / WAV_DIR / dialog / f"{u.utt_id}.wav"
                if wav.is_file():
                    paths["audio"] = wav
                else:
                    absent["audio"] = f"missing: {wav}"
            if "visual" in self.modalities:
                if video.is_file():
                    paths["visual"] = video
                else:
                    absent["visual"] = f"missing: {video}"
            if absent and self.on_bad_clip == "skip":
                self._skip(uid, "; ".join(absent.values()))
                continue
            if absent:
                self._degrade(uid, "; ".join(absent.values()))
            self._add(Sample(uid=uid, dialogue_id=dialog, turns=turns[:i + 1], target_index=i,
                             label=self.labels.index(name), label_name=name, speaker=u.speaker,
                             audio_path=paths.get("audio"), video_path=paths.get("visual"),
                             video_span_s=(u.start_s, u.end_s) if "visual" in paths else None,
                             absent=absent))
