"""Export settings: strict dataclasses over ``configs/export.yaml``.

Sections map onto what each format may be told (:mod:`mmer.export.formats` names, per format,
the sections it accepts, so an option a format would silently ignore is refused by name):

    opset, data_root, parity.*   every format
    fp16.*                 formats that run the FP16 converter
    calibration.*          formats calibrated on data (static INT8)
    profiles.*, engine.*   TensorRT and TensorRT-RTX engines

Optimization profiles are kept tight on purpose (REFERENCE.md section 5: a wav2vec2 engine with
a huge range ran 2x slower than ONNX Runtime). Several buckets per axis give one profile each;
the runtime picks the first profile whose range holds the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmer.config import load_config

CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "export.yaml"
DEFAULT_OPSET = 17
# LayerNorm, softmax and reductions overflow or lose all precision in FP16 (sums of 256+
# squared activations pass 65504); the converter keeps them, and the log-mel front end, in FP32.
FP16_KEEP_FP32_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceL2",
                      "ReduceMax", "ReduceSumSquare", "ReduceLogSumExp", "Pow", "Sqrt", "Log", "Exp",
                      "BatchNormalization", "InstanceNormalization")


@dataclass(frozen=True)
class IntRange:
    """One optimization-profile range of an axis: smallest, most common, largest size."""

    min: int = 1
    opt: int = 1
    max: int = 1


@dataclass(frozen=True)
class SecondsRange:
    """An audio-length range in seconds (turned into samples at the model's rate)."""

    min_s: float = 1.0
    opt_s: float = 4.0
    max_s: float = 8.0


@dataclass(frozen=True)
class ProfilesConfig:
    """Engine input ranges. ``text_tokens`` and ``audio`` are bucket lists (one profile each)."""

    batch: IntRange = IntRange(1, 1, 8)
    text_tokens: tuple[IntRange, ...] = (IntRange(8, 128, 256),)
    audio: tuple[SecondsRange, ...] = (SecondsRange(1.0, 4.0, 8.0),)
    num_frames: int = 8


@dataclass(frozen=True)
class EngineConfig:
    """Engine builder settings.

    timing_cache: file reused between builds of full TensorRT ("" = ~/.cache/mmer/tensorrt.timing.cache).
        TensorRT-RTX >= 1.2 makes timing-cache calls no-ops; its JIT kernels go to a runtime
        cache beside the engine instead (``runtime.cache``, written by the TensorRTRTX runtime).
    compute_capabilities: TensorRT-RTX targets (its engines run on 8.0/8.6/8.9/12.x only).
    int8_calibrator: ``explicit`` (Q/DQ nodes in the ONNX: ModelOpt when installed, else ONNX
        Runtime's symmetric QDQ) or ``implicit`` (full TensorRT's deprecated entropy calibrator).
    """

    workspace_mb: int = 2048
    builder_optimization_level: int = 3
    timing_cache: str = ""
    compute_capabilities: tuple[str, ...] = ("SM80", "SM86", "SM89", "SM120")
    int8_calibrator: str = "explicit"


@dataclass(frozen=True)
class CalibrationConfig:
    """Static INT8 calibration data: ``num_samples`` inputs drawn from ``data`` (see samples.py):
    ``meld-dev`` (MELD dev utterances; audio students speak their transcripts) or ``generated``
    (students only: synthetic media)."""

    data: str = "meld-dev"
    num_samples: int = 64
    audio_range_s: tuple[float, float] = (1.0, 8.0)   # audio students: clip lengths drawn in this range
    method: str = "percentile"   # minmax | entropy | percentile (ONNX Runtime calibrators)
    per_channel: bool = True
    keep_float: tuple[str, ...] = ("attention", "gelu_output")   # MatMul groups left float (quantize.KEEP_FLOAT_GROUPS)
    seed: int = 0


@dataclass(frozen=True)
class Fp16Config:
    """FP16 conversion: ops kept in FP32 (see FP16_KEEP_FP32_OPS)."""

    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS


@dataclass(frozen=True)
class ParityConfig:
    """Parity against the torch model and its gates (REFERENCE/issue 5)."""

    num_samples: int = 32           # inputs compared element-wise
    f1_utterances: int = 300        # MELD dev utterances for the teacher's weighted-F1 change (0 = skip)
    audio_range_s: tuple[float, float] = (1.0, 8.0)   # audio students: clip lengths drawn in this range
    fp32_max_abs: float = 1e-4
    fp16_min_top1: float = 0.995
    int8_max_f1_drop_points: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``mmer-export`` can be told besides the model, format and output folder."""

    opset: int = DEFAULT_OPSET
    data_root: str = ""      # MELD CSVs for teacher calibration/parity ("" = samples.default_data_root())
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    parity: ParityConfig = field(default_factory=ParityConfig)


def load_export_config(path: str | Path | None = CONFIG_FILE, overrides: list[str] | tuple[str, ...] = ()) -> ExportConfig:
    """Defaults <- ``configs/export.yaml`` (or ``path``) <- ``key=value`` overrides."""
    if path is not None and not Path(path).is_file():
        path = None  # an installed wheel without the configs folder falls back to the defaults
    return load_config(ExportConfig, path, list(overrides))
