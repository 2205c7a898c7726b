"""The configs of the training stages, as strict dataclasses (mmer.config maps YAML onto them).

One recipe per stage: :class:`TeacherRecipe`, :class:`StudentRecipe`, :class:`FusionRecipe`,
and :class:`MsaRecipe` for the sentiment models (DERL, MMILN, CENet, CMATH).
They share :class:`DataConfig` (which corpus, which split protocol) and the Trainer's own
:class:`~mmer.training.trainer.TrainerConfig` (section ``optim``). TelME's published settings
live in ``configs/meld_*.yaml`` / ``configs/iemocap_*.yaml``; mmer's improved defaults in
``configs/mmer_*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmer.config import ConfigError, load_config
from mmer.dialogue import DEFAULT_MAX_TOKENS, DEFAULT_PROMPT, DEFAULT_SPEAKER_TOKENS
from mmer.training.trainer import TrainerConfig

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"   # the repository's configs/ folder
TELME_KD_DIM = 768


@dataclass
class DataConfig:
    """Which corpus and split protocol; media settings for audio/visual stages.

    name: meld | iemocap | emodb | tess for training; ravdess | dailydialog are evaluation-only
    (their one split is "test"). root: the corpus folder (MELD: the CSVs; IEMOCAP: the folder
    holding IEMOCAP_full_release; EmoDB: labels.csv + wav/; TESS: labels.csv + audio/; RAVDESS:
    labels.csv + wav/; DailyDialog: dailydialog_test.csv). clips_root: MELD clip folders when
    they are not under ``root``. limit: keep the first N samples of every split (0 = all), for
    smoke runs. fold: EmoDB leave-one-speaker-out fold (None = the fixed split); TESS held-out
    speaker 0 (OAF) or 1 (YAF) (None = both speakers in train); refused for other corpora. classes:
    IEMOCAP 6 or 4. keep_decoded: keep decoded clips in memory across epochs (student stage,
    num_workers 0): for small corpora such as EmoDB (535 clips x <= 10 s, ~170 MB float32).
    """

    name: Literal["meld", "iemocap", "emodb", "tess", "ravdess", "dailydialog"] = "meld"
    root: str = "data/MELD"
    clips_root: str | None = None
    label_set: str = "meld7"
    limit: int = 0
    fold: int | None = None
    classes: int = 6
    max_audio_s: float = 20.0
    n_frames: int = 8
    frame_size_px: int = 224
    face_crop: bool = False
    probe_cache_dir: str | None = None
    keep_decoded: bool = False


@dataclass
class TeacherModelConfig:
    """Sizes of the text teacher (see mmer.models.teacher.TeacherDims)."""

    encoder: str = "minilm"      # "minilm" (packaged), a local HF folder, or a hub name
    kd_dim: int = TELME_KD_DIM
    max_tokens: int = DEFAULT_MAX_TOKENS
    num_speaker_tokens: int = DEFAULT_SPEAKER_TOKENS
    dropout: float = 0.1
    prompt_template: str = DEFAULT_PROMPT
    # seed of the random weights (head, speaker tokens); None: optim.seed. Runs meant to be averaged
    # into one model (python -m mmer.training.soup) share it and differ in optim.seed (order, dropout).
    init_seed: int | None = None


@dataclass
class LossConfig:
    """Eq. (6): CE (class-weighted and/or label-smoothed) + alpha * DIST + beta * feature KD.

    alpha / beta / tau / feature_t are read by the student stage; alpha = beta = 0 trains
    a student without a teacher (the EmoDB voice model). The teacher stage reads alpha and tau
    when it distils an ensemble (TeacherRecipe.ensemble): L = CE + alpha * tau^2 * KL.
    """

    class_weighting: Literal["none", "inverse", "inverse_sqrt"] = "none"
    label_smoothing: float = 0.0
    alpha: float = 1.0
    beta: float = 1.0
    tau: float = 4.0
    feature_t: float = 1.0


@dataclass
class TeacherRecipe:
    """`mmer-train teacher`: the text teacher with cross-entropy.

    ensemble: frozen text-teacher checkpoints over the same label set; when given, their mean
    probability at temperature loss.tau on each training utterance is a soft target, and the
    loss adds loss.alpha * tau^2 * KL(ensemble || teacher) (Hinton et al. 2015): one model
    learns what several agree on, at the cost of one.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(alpha=0.0, beta=0.0))
    optim: TrainerConfig = field(default_factory=lambda: TrainerConfig(lr=1e-6, epochs=10, batch_size=4))
    ensemble: list[str] = field(default_factory=list)
    cache_dir: str | None = None   # the ensemble's output cache; default $MMER_CACHE_DIR or ~/.cache/mmer
    out: str = "runs/teacher"


@dataclass
class StudentModelConfig:
    """Which student and its constructor settings.

    modality: audio | visual. variant: the student's encoder preset (see the student models;
    e.g. "edge" for the compact ones, "hf" for a Hugging Face encoder). encoder: local folder
    or hub name for "hf" variants. kd_dim: 0 = the teacher's width (required when distilling).
    overrides: extra Dims fields passed to the student's Dims as-is.
    """

    modality: Literal["audio", "visual"] = "audio"
    variant: str = "edge"
    encoder: str | None = None
    kd_dim: int = 0
    overrides: dict = field(default_factory=dict)


@dataclass
class VoiceConfig:
    """The whisper-family voice student (training/voice.py): extra training corpora and augmentation.

    extra: corpus name -> root, added whole to train (e.g. {tess: ../shared/data/TESS}); dev and
    test come from ``data`` (the primary corpus's held-out speakers). augment: fields of
    mmer.training.augment.AugmentConfig (copies = augmented copies per clip of the primary corpus);
    extra_copies: augmented copies per clip of the extra corpora (they are larger).
    licence_note: recorded in the checkpoint's provenance (what the training data allows).
    """

    extra: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    extra_copies: int = 1
    licence_note: str = ""


@dataclass
class StudentRecipe:
    """`mmer-train student`: an audio or visual student distilled from a frozen teacher (eq. 6).

    teacher: the teacher checkpoint folder; may be None only when alpha = beta = 0 (then the
    student trains on labels alone, e.g. on EmoDB).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: TrainerConfig = field(default_factory=lambda: TrainerConfig(lr=1e-5, epochs=10, batch_size=4))
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    teacher: str | None = None
    cache_dir: str | None = None   # frozen-model output cache; default $MMER_CACHE_DIR or ~/.cache/mmer
    out: str = "runs/student"


@dataclass
class FusionModelConfig:
    """ASF sizes (mmer.models.asf.ASFDims); kd_dim comes from the teacher."""

    num_heads: int = 3
    theta: float = 0.1
    dropout: float = 0.2
    paper_faithful: bool = False


@dataclass
class FusionRecipe:
    """`mmer-train fusion`: ASF on frozen teacher + students (their features cached)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: FusionModelConfig = field(default_factory=FusionModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(alpha=0.0, beta=0.0))
    optim: TrainerConfig = field(default_factory=lambda: TrainerConfig(lr=1e-5, epochs=10, batch_size=4))
    teacher: str = ""
    audio_student: str | None = None
    visual_student: str | None = None
    cache_dir: str | None = None
    out: str = "runs/fusion"


@dataclass
class MsaDataConfig:
    """An MMSA pickle (CMU-MOSI / MOSEI layout, training/mmsa.py).

    task: "regression" reads ``regression_labels`` (scores in [-3, 3]); "classification" reads
    ``classification_labels`` as ids of ``label_set`` (e.g. meld7 for MELD features in this layout).
    limit: keep the first N samples of every split (0 = all), for smoke runs.
    """

    path: str = ""
    task: Literal["regression", "classification"] = "regression"
    label_set: str = "regression"
    limit: int = 0


@dataclass
class MsaModelConfig:
    """Which sentiment model (mmer.models: derl, mmiln, cenet, cmath) and its Dims.

    text_encoder: "features" (the pickle's BERT features), "minilm" (the packaged MiniLM-L6,
    fine-tuned on ``text_bert`` ids), a local folder or a hub name; None = the model's default.
    overrides: further fields of the model's Dims (checked against them, e.g. {hidden_dim: 64}).
    The input widths, label set and output width come from the data.
    """

    name: Literal["derl", "mmiln", "cenet", "cmath"] = "derl"
    text_encoder: str | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class MsaRecipe:
    """`mmer-train msa`: one of the sentiment models on an MMSA pickle; the Trainer selects on
    the valid split (MAE for scores, weighted F1 for classes) and scores test once."""

    data: MsaDataConfig = field(default_factory=MsaDataConfig)
    model: MsaModelConfig = field(default_factory=MsaModelConfig)
    optim: TrainerConfig = field(default_factory=lambda: TrainerConfig(lr=1e-3, epochs=20, batch_size=32,
                                                                         eval_batch_size=64, warmup_ratio=0.0,
                                                                         bucket_by_length=False))
    out: str = "runs/msa"


RECIPES: dict[str, type] = {"teacher": TeacherRecipe, "student": StudentRecipe, "fusion": FusionRecipe,
                            "msa": MsaRecipe}


def find_config(name: str | Path) -> Path:
    """A config path as given, or the name of a shipped one (``mmer_meld_teacher``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIGS_DIR / path.name, CONFIGS_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.is_dir() else []
    raise ConfigError(f"{name}: config file not found; shipped configs: {shipped}")


def load_recipe(stage: str, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()):
    """Resolve the stage's recipe: defaults <- YAML <- ``key=value`` overrides."""
    if stage not in RECIPES:
        raise ConfigError(f"unknown stage '{stage}'; stages: {sorted(RECIPES)}")
    return load_config(RECIPES[stage], find_config(path) if path is not None else None, overrides)
