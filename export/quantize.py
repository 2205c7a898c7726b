"""ONNX -> reduced precision: FP16, INT8 dynamic, INT8 static (QDQ), and Q/DQ graphs for TensorRT.

* FP16 (``onnx2fp16``): ONNX Runtime's float16 converter with an op block list, so softmax,
  LayerNorm, reductions and the log-mel front end stay FP32 (config ``fp16.keep_fp32_ops``).
  Graph inputs and outputs stay FP32, so every runtime is fed the same arrays. This FP16 graph
  is also what the TensorRT-RTX / TensorRT FP16 engines are built from: strongly typed
  networks take their precision from the tensor types (REFERENCE.md section 5).
* INT8 dynamic (``onnx2int8_dynamic``): weights INT8 ahead of time, activations quantized per
  call (ONNX Runtime CPU; no calibration data).
* INT8 static (``onnx2int8_static``): QDQ graph calibrated on real inputs (MELD dev utterances
  for the teacher, generated media for students; :mod:`mmer.samples`). ``target="ort"``
  uses ONNX Runtime's CPU layout (uint8 activations, int8 weights); ``target="tensorrt"``
  writes what TensorRT's explicit quantization reads: symmetric int8 activations and weights,
  per-channel weights, unquantized biases, Q/DQ only in front of MatMul/Gemm/Conv. Both
  targets leave in float the MatMuls named by ``keep_float`` (config ``calibration.keep_float``):
  ``attention``, the activation x activation MatMuls (attention scores), and ``gelu_output``,
  the MatMuls that read a GELU (the FFN output projection, whose input carries the outliers
  of BERT-family encoders).
* ``onnx2qdq_tensorrt``: explicit Q/DQ for TensorRT engines: NVIDIA ModelOpt when installed
  (``pip install nvidia-modelopt``), else ``onnx2int8_static(target="tensorrt")``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from mmer.errors import MmerError
from mmer.extras import require
from mmer.progress import progress

FP16_SAFE_MAX = 1.0e4   # |x| above this is kept FP32: FP16 overflows at 65504, and products need headroom
QUANT_OPS = ("MatMul", "Gemm", "Conv")  # the ops that carry the FLOPs; others stay FP32 for accuracy
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT_GROUPS = ("attention", "gelu_output")   # MatMul groups static INT8 can leave in float


class QuantizeError(MmerError, RuntimeError):
    """A conversion that cannot be done as asked (a method, target or sample set the caller chose)."""

    kind = "usage"


def large_value_nodes(src: str | Path, samples: list[dict[str, np.ndarray]], limit: float = FP16_SAFE_MAX) -> list[str]:
    """Names of the nodes that produce or consume a tensor whose magnitude passes ``limit`` on
    ``samples``, found by running the FP32 graph with every intermediate exposed.

    Such tensors (sample counts of an 8 s clip: 128,000; sums of squares) are infinite in FP16
    whatever op computes them, so both ends of them must stay FP32.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = onnx.load(str(src))
    names = [o for n in model.graph.node for o in n.output if o]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    large: set[str] = set()
    for sample in progress(samples, "fp16 probe (every tensor exposed)", unit="sample"):
        for name, value in zip(names, session.run(None, sample)):
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size and float(np.abs(value[np.isfinite(value)]).max(initial=0)) > limit:
                large.add(name)
    return sorted({n.name for n in model.graph.node if large & (set(n.output) | set(n.input))})


def onnx2fp16(src: str | Path, dst: str | Path, keep_fp32_ops: Iterable[str],
              samples: list[dict[str, np.ndarray]] | None = None) -> Path:
    """FP16 copy of ``src`` at ``dst``; ops named in ``keep_fp32_ops`` (plus the converter's own
    block list) stay FP32, graph inputs/outputs stay FP32. With ``samples`` (largest realistic
    inputs), nodes around values too large for FP16 stay FP32 too (:func:`large_value_nodes`).
    """
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    nodes = large_value_nodes(src, samples) if samples else []
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                            node_block_list=nodes or None)
    _elide_round_trips(half)
    _toposort(half.graph)  # the converter appends its Cast nodes at the end of the node list
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return Path(dst)


def _elide_round_trips(model) -> int:
    """Bypass FP32 -> FP16 -> FP32 Cast pairs between two FP32 nodes (in place); returns how many.

    The converter wraps every kept-FP32 node in casts, even between two kept nodes, so a large
    value (128,000 samples) would still pass through FP16 and become infinite on the way.
    """
    onnx = require("onnx")
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in model.graph.node for o in n.output}
    rename = {}
    for node in model.graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == float32 else None
        if first is not None and cast_to(first) == float16 and types.get(first.input[0]) == float32:
            rename[node.output[0]] = first.input[0]
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename and name not in outputs:
                node.input[i] = rename[name]
    used = {i for n in model.graph.node for i in n.input} | outputs
    dead = [n for n in model.graph.node if n.op_type == "Cast" and not (set(n.output) & used)]
    while dead:  # removing a dead cast can leave the cast that fed it dead too
        for n in dead:
            model.graph.node.remove(n)
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type == "Cast" and not (set(n.output) & used)]
    return len(rename)


def _toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (in place).

    Names no node of this graph produces (graph inputs, initializers, outer-scope names of a
    subgraph) count as available from the start.
    """
    nodes = list(graph.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(j)
                continue
            stack.append((j, True))
            deps = [produced[x] for x in nodes[j].input if x in produced and produced[x] not in done]
            for attr in nodes[j].attribute:  # subgraph bodies read outer names too
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    deps += [produced[x] for n in sub.node for x in n.input if x in produced and produced[x] not in done]
            stack.extend((d, False) for d in deps if d != j)

    for i in range(len(nodes)):
        visit(i)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def onnx2int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic INT8 (weights int8 ahead of time, activations per call) of the MatMul/Gemm ops.

    Conv is left FP32: ONNX Runtime's dynamic ConvInteger is slower than its FP32 conv on CPU.
    """
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return Path(dst)


class _SampleReader:
    """ONNX Runtime CalibrationDataReader over a list of named numpy inputs."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = samples
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        # ONNX Runtime pulls the samples itself; the bar counts them as it does (a pass per rewind).
        self._it = iter(progress(self.samples, "int8 calibration", unit="sample"))


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if name not in methods:
        raise QuantizeError(f"calibration.method {name!r} is not one of {list(methods)}")
    return methods[name]


def onnx2int8_static(src: str | Path, dst: str | Path, samples: list[dict[str, np.ndarray]], target: str = "ort",
                     method: str = "minmax", per_channel: bool = True,
                     keep_float: Iterable[str] = KEEP_FLOAT_GROUPS) -> Path:
    """Static INT8 QDQ graph of ``src`` calibrated on ``samples`` (named numpy inputs, batch 1).

    target: ``"ort"`` (ONNX Runtime CPU) or ``"tensorrt"`` (symmetric, see the module docstring).
    method: ``minmax`` reads the samples one by one; ``entropy`` and ``percentile`` histogram the
    activations, which ONNX Runtime needs in one shape, so the samples are padded into one batch
    (the padded positions' activations join the histograms; percentile clips them with the other
    outliers). keep_float: the MatMul groups left in float (:data:`KEEP_FLOAT_GROUPS`, :func:`float_matmuls`).
    """
    require("onnxruntime")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not samples:
        raise QuantizeError("static INT8 needs calibration samples; none were given")
    if target not in ("ort", "tensorrt"):
        raise QuantizeError(f"target must be 'ort' or 'tensorrt', got {target!r}")
    symmetric = target == "tensorrt"
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if symmetric:
        extra.update(QuantizeBias=False, DedicatedQDQPair=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference cannot follow transformers' mask arithmetic; ONNX's own
        # shape inference plus graph optimisation is enough for the calibrator.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method != "minmax":
            from mmer.contract import collate

            samples = [collate(samples)]
        quantize_static(str(pre), str(dst), _SampleReader(samples), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel,
                        op_types_to_quantize=list(QUANT_OPS), calibrate_method=_calibration_method(method),
                        nodes_to_exclude=float_matmuls(pre, keep_float), extra_options=extra)
    return Path(dst)


def float_matmuls(path: str | Path, groups: Iterable[str]) -> list[str]:
    """Names of the MatMul nodes of the graph at ``path`` in the ``groups`` static INT8 keeps float
    (every quantizer path asks here, so an unknown group is refused on each)."""
    groups = set(groups)
    unknown = sorted(groups - set(KEEP_FLOAT_GROUPS))
    if unknown:
        raise QuantizeError(f"calibration.keep_float: {unknown} not among {list(KEEP_FLOAT_GROUPS)}")
    names: list[str] = []
    if "attention" in groups:
        names += activation_matmuls(path)
    if "gelu_output" in groups:
        names += gelu_matmuls(path)
    return names


def activation_matmuls(path: str | Path) -> list[str]:
    """MatMul nodes with no weight among their inputs (attention's Q.K^T and weights.V).

    Both operands are activations with per-row outliers, so one per-tensor int8 scale each
    costs accuracy (measured on default-text: weighted-F1 drop 3.2 points with them quantized,
    0.9 without); they hold no weights to shrink either.
    """
    onnx = require("onnx")
    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def is_weight(name: str) -> bool:
        node = producer.get(name)
        if name in constants:
            return True
        return node is not None and node.op_type in ("Transpose", "Cast", "Constant", "Reshape") and \
            all(i in constants or not i for i in node.input)

    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(is_weight(i) for i in n.input)]


GELU_OPS = ("Gelu", "FastGelu", "BiasGelu")
GELU_STEPS = ("Mul", "Add", "Div")   # x * 0.5 * (1 + erf(x / sqrt(2))) as exported, op by op
GELU_DEPTH = 4                       # steps back from the MatMul input to the Erf/Tanh


def gelu_matmuls(path: str | Path) -> list[str]:
    """MatMul nodes that read a GELU's output: the FFN output projection of BERT-family encoders.

    Their input, GELU(x W1), has a few channels far larger than the rest, so one per-tensor
    int8 scale leaves the others a handful of levels (measured on default-text, all 1,109 MELD
    dev utterances against FP32: top-1 agreement 0.867 with them quantized, 0.958 without).
    The GELU is found as a fused op or as the Erf/Tanh chain torch exports.
    """
    onnx = require("onnx")
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}

    def reads_gelu(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth < 0:
            return False
        if node.op_type in GELU_OPS or node.op_type in ("Erf", "Tanh"):
            return True
        return node.op_type in GELU_STEPS and any(reads_gelu(i, depth - 1) for i in node.input if i)

    return [n.name for n in graph.node if n.op_type == "MatMul" and reads_gelu(n.input[0], GELU_DEPTH)]


def modelopt_available() -> bool:
    """True when NVIDIA ModelOpt's ONNX quantizer can be imported."""
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def onnx2qdq_tensorrt(src: str | Path, dst: str | Path, samples: list[dict[str, np.ndarray]],
                      method: str = "minmax", keep_float: Iterable[str] = KEEP_FLOAT_GROUPS) -> tuple[Path, str]:
    """Explicit Q/DQ graph for TensorRT; returns (path, tool used: ``modelopt`` or ``onnxruntime``).

    ModelOpt wants one calibration array per input with a common shape, so the samples are
    padded into a single batch (masks mark the padding, which the models ignore).
    """
    if modelopt_available():
        from modelopt.onnx.quantization import quantize as mo_quantize

        from mmer.contract import collate

        calibration = collate(samples)
        # ModelOpt finds the attention MatMuls itself; the other groups are named (re.match patterns).
        exclude = [re.escape(n) + "$" for n in float_matmuls(src, set(keep_float) - {"attention"})]
        mo_quantize(str(src), quantize_mode="int8", calibration_data=calibration,
                    calibration_method="entropy" if method == "entropy" else "max", output_path=str(dst),
                    nodes_to_exclude=exclude or None)
        return Path(dst), "modelopt"
    return onnx2int8_static(src, dst, samples, target="tensorrt", method=method, keep_float=keep_float), "onnxruntime"


def copy_onnx(src: str | Path, dst: str | Path) -> Path:
    """Copy an ONNX file (and any external-data file beside it)."""
    shutil.copyfile(src, dst)
    return Path(dst)
