"""MELD (Poria et al., ACL 2019): Friends dialogues, 7 emotions, text + per-utterance mp4 clips.

Layout under ``root`` (declare-lab/MELD CSVs; the clip folders come from MELD.Raw)::

    root/{train,dev,test}_sent_emo.csv
    clips_root/train_splits/dia{D}_utt{U}.mp4              (clips: optional, default clips_root = root)
    clips_root/dev_splits_complete/dia{D}_utt{U}.mp4
    clips_root/output_repeated_splits_test/dia{D}_utt{U}.mp4

Text-only works without the clip folders (shared/data/MELD holds only the CSVs). With audio or
visual asked for, the split's clip folder must exist; clips that cannot be used (REFERENCE.md
defect 8: train dia125_utt3 corrupt, dev dia110_utt7 missing, minutes-long mis-cut clips, clips
ffprobe cannot read) are skipped, or kept text-only with ``on_bad_clip="text_only"``. Silent clips
(some of test) are found when decoded: :meth:`load_audio` reports them invalid.

The CSVs are read by :func:`mmer.meld.read_meld_csv` (encoding, mojibake and punctuation repair,
Utterance_ID order), the same reader as export samples and mmer-predict use; a malformed id,
time or repeated utterance stops the build with a :class:`mmer.meld.MeldFormatError` naming the
file, line and column.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

from mmer.dialogue import Turn
from mmer.meld import ASCII_PUNCTUATION, clean_text, fix_mojibake  # noqa: F401  (re-exported: dailydialog, tests)
from mmer.meld import MeldDialogue, read_meld_csv
from mmer.registry import DATASETS
from mmer.training import media
from mmer.training.datasets import EmotionDataset, MediaOptions, Sample, require_paths

log = logging.getLogger(__name__)

SPLITS = {  # split -> (CSV, clip folder of MELD.Raw)
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime")
LAYOUT = "\n".join([f"  {csv_name}" for csv_name, _ in SPLITS.values()]
                   + [f"  {folder}/dia{{D}}_utt{{U}}.mp4   (only for audio/visual)" for _, folder in SPLITS.values()])
KNOWN_BAD_CLIPS = {  # REFERENCE.md defect 8
    ("train", 125, 3): "corrupt: known bad clip of the MELD.Raw release",
    ("dev", 110, 7): "missing: clip absent from the MELD.Raw release",
}
MAX_CLIP_S = 60.0   # s; the longest real MELD utterance is 41 s, mis-cut clips run 235-305 s
TREE_HASH_CHARS = 10  # hex characters of the clip-folder hash in a probe-cache file name
LABEL_COLUMNS = {"meld7": "Emotion", "meld_sentiment3": "Sentiment"}  # lower-cased: the MeldRow field


@DATASETS.register("meld")
class MeldDataset(EmotionDataset):
    """MELD utterances with their dialogue context.

    Args:
        root: folder with the three CSVs.
        split: "train", "dev" or "test".
        modalities: ("text",) needs only the CSVs; "audio"/"visual" need the clip folder.
        clips_root: folder holding the MELD.Raw split folders (default ``root``).
        label_set: "meld7" (Emotion column) or "meld_sentiment3" (Sentiment column).
        media_options: decoding settings (16 kHz, cap, frames, face crop).
        on_bad_clip: "skip" drops a sample whose requested clip is unusable; "text_only" keeps it
            with the modality marked absent. Default: "skip" for train/dev, "text_only" for
            test, so test scores stay comparable with the paper's (all 2,610 utterances).
        probe_clips: ffprobe every clip up front (duration, streams) so unreadable and
            mis-cut clips are caught before training; ~13k MELD clips take minutes, so pass
            ``probe_cache_dir`` (e.g. ``default_cache_dir() / "probe"``) to do it once.
        max_clip_s: clips longer than this (by the CSV times or ffprobe) count as mis-cut.
        ascii_punctuation: write ’ “ … — as ' " ... - like speech recognisers do.
    """

    name = "meld"

    def __init__(self, root: str | Path, split: str = "train", modalities: Sequence[str] = ("text",),
                 clips_root: str | Path | None = None, label_set: str = "meld7",
                 media_options: MediaOptions | None = None, on_bad_clip: str | None = None,
                 probe_clips: bool = True, probe_cache_dir: str | Path | None = None,
                 max_clip_s: float = MAX_CLIP_S, ascii_punctuation: bool = True, progress: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"MELD split must be one of {list(SPLITS)}, got '{split}'")
        if label_set not in LABEL_COLUMNS:
            raise ValueError(f"MELD label_set must be one of {list(LABEL_COLUMNS)}, got '{label_set}'")
        on_bad_clip = on_bad_clip or ("text_only" if split == "test" else "skip")
        if on_bad_clip not in ("skip", "text_only"):
            raise ValueError(f"on_bad_clip must be 'skip' or 'text_only', got '{on_bad_clip}'")
        super().__init__(split, modalities, label_set, media_options, progress)
        self.root = Path(root)
        self.clips_root = Path(clips_root) if clips_root is not None else self.root
        self.on_bad_clip = on_bad_clip
        self.max_clip_s = max_clip_s
        csv_name, clip_folder = SPLITS[split]
        require_paths(self.root, [csv_name], LAYOUT, "MELD")
        self.clip_dir: Path | None = None
        if set(self.modalities) & {"audio", "visual"}:
            require_paths(self.clips_root, [clip_folder], LAYOUT, f"MELD {split} clips (asked for {self.modalities})")
            self.clip_dir = self.clips_root / clip_folder
        dialogues = read_meld_csv(self.root / csv_name, ascii_punctuation, required=COLUMNS)
        self._build(dialogues, probe_clips, probe_cache_dir)
        self._finish_scan()

    # -- building -------------------------------------------------------------------------
    def _build(self, dialogues: list[MeldDialogue], probe_clips: bool, probe_cache_dir: str | Path | None) -> None:
        clip_info = self._scan_clips(dialogues, probe_clips, probe_cache_dir)
        field = LABEL_COLUMNS[self.labels.name].lower()
        for dialogue in dialogues:
            d = dialogue.dialogue_id
            turns = tuple(Turn(r.speaker, r.text) for r in dialogue.rows)
            for i, row in enumerate(dialogue.rows):
                u = row.utterance_id
                uid = f"meld/{self.split}/dia{d}_utt{u}"
                raw_label = getattr(row, field)
                name = raw_label.lower()
                if name not in self.labels.labels:
                    self._skip(uid, f"label: '{raw_label}' is not in {self.labels.name}")
                    continue
                paths, absent = clip_info.get((d, u), ({}, {}))
                if absent and self.on_bad_clip == "skip":
                    self._skip(uid, "; ".join(dict.fromkeys(absent.values())))
                    continue
                if absent:
                    self._degrade(uid, "; ".join(dict.fromkeys(absent.values())))
                self._add(Sample(uid=uid, dialogue_id=str(d), turns=turns[:i + 1], target_index=i,
                                 label=self.labels.index(name), label_name=name, speaker=row.speaker,
                                 audio_path=paths.get("audio"), video_path=paths.get("visual"), absent=absent))

    def _scan_clips(self, dialogues: list[MeldDialogue], probe_clips: bool,
                    probe_cache_dir: str | Path | None) -> dict[tuple[int, int], tuple[dict, dict]]:
        """(D, U) -> ({modality: path}, {modality: reason absent}) for the requested AV modalities."""
        wanted = [m for m in self.modalities if m in ("audio", "visual")]
        out: dict[tuple[int, int], tuple[dict, dict]] = {}
        if self.clip_dir is None:
            return out
        present = {e.name for e in self.clip_dir.iterdir() if not e.name.startswith(".")}
        candidates: dict[tuple[int, int], Path] = {}
        for dialogue in dialogues:
            for row in dialogue.rows:
                d, u = row.dialogue_id, row.utterance_id
                name = f"dia{d}_utt{u}.mp4"
                reason = KNOWN_BAD_CLIPS.get((self.split, d, u))
                if reason is None and name not in present:
                    reason = f"missing: {self.clip_dir / name}"
                if reason is None:
                    span = row.duration_s
                    if span > self.max_clip_s:
                        reason = f"mis-cut: CSV times span {span:.0f} s > max_clip_s {self.max_clip_s:.0f} s"
                if reason is not None:
                    out[(d, u)] = ({}, {m: reason for m in wanted})
                else:
                    candidates[(d, u)] = self.clip_dir / name
        infos: dict[Path, media.ClipInfo | media.MediaError] = {}
        if probe_clips and candidates:
            cache_file = None
            if probe_cache_dir is not None:  # one cache folder can serve several clip trees
                tree = hashlib.sha1(str(self.clip_dir.resolve()).encode()).hexdigest()[:TREE_HASH_CHARS]
                cache_file = Path(probe_cache_dir) / f"meld_{self.split}_{tree}.json"
            infos = media.probe_many(candidates.values(), cache_file, progress=self.progress,
                                     desc=f"MELD {self.split}: probing clips")
        for key, path in candidates.items():
            info = infos.get(path)
            paths, absent = {}, {}
            for m in wanted:
                if isinstance(info, media.MediaError):
                    absent[m] = f"undecodable: {info}"
                elif info is not None and info.duration_s > self.max_clip_s:
                    absent[m] = f"mis-cut: clip is {info.duration_s:.0f} s > max_clip_s {self.max_clip_s:.0f} s"
                elif info is not None and not (info.has_audio if m == "audio" else info.has_video):
                    absent[m] = f"no {m} stream: {path.name}"
                else:
                    paths[m] = path
            out[key] = (paths, absent)
        return out
