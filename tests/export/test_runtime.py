"""The one runtime interface: same inputs, same outputs, for torch and ONNX Runtime (engines: test_engines)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mmer.export import RUNTIMES, export, load_runtime  # noqa: E402
from mmer.contract import collate  # noqa: E402
from mmer.runtime import TorchRuntime  # noqa: E402
from mmer.samples import asf_samples  # noqa: E402
from tests.export.test_onnx_zoo import tiny_asf  # noqa: E402


@pytest.fixture(scope="module")
def asf_export(tmp_path_factory):
    model = tiny_asf()
    folder = tmp_path_factory.mktemp("asf")
    export(model, "onnx", folder, ("parity.num_samples=2",))
    return model, folder


def test_runtime_names_and_did_you_mean():
    assert set(RUNTIMES.names()) == {"torch", "onnxruntime", "tensorrt", "tensorrt-rtx"}
    with pytest.raises(KeyError, match="registered"):
        load_runtime("tvm", ".")
    with pytest.raises(KeyError, match="did you mean 'onnxruntime'"):
        load_runtime("onnxruntim", ".")


def test_same_inputs_same_outputs(asf_export):
    model, folder = asf_export
    batch = collate(asf_samples(5, model.dims.kd_dim, seed=3))
    backends = [TorchRuntime(model), load_runtime("torch", model), load_runtime("onnxruntime", folder)]
    outs = [rt(**batch) for rt in backends]
    for rt, out in zip(backends, outs):
        assert rt.input_names == ("text", "audio", "visual", "audio_present", "visual_present")
        assert set(out) == {"logits", "probs", "fused", "feature"}
        assert out["logits"].shape == (5, 7) and out["feature"].shape == (5, 24)
        np.testing.assert_allclose(out["logits"], outs[0]["logits"], atol=1e-4)
    assert backends[-1].describe()["device"] == "CPUExecutionProvider"


def test_inputs_are_checked_by_name_and_converted(asf_export):
    model, folder = asf_export
    rt = load_runtime("onnxruntime", folder)
    batch = collate(asf_samples(2, model.dims.kd_dim, seed=4))
    with pytest.raises(ValueError, match="missing \\['visual_present'\\]"):
        rt(**{k: v for k, v in batch.items() if k != "visual_present"})
    with pytest.raises(ValueError, match="unknown \\['video'\\]"):
        rt(**batch, video=batch["visual"])
    # float64 features and 0/1 integer presence flags are converted to the graph's dtypes
    converted = rt(**{k: v.astype(np.float64) if v.dtype == np.float32 else v.astype(np.int64) for k, v in batch.items()})
    np.testing.assert_allclose(converted["probs"], rt(**batch)["probs"], atol=1e-6)


def test_torch_runtime_refuses_cuda_graphs_on_cpu():
    from mmer.runtime import RuntimeUnavailable

    with pytest.raises(RuntimeUnavailable, match="cuda"):
        TorchRuntime(tiny_asf(), cuda_graphs=True)


@pytest.mark.gpu
def test_torch_cuda_graphs_and_compile_match_eager():
    model = tiny_asf()
    batch = collate(asf_samples(3, model.dims.kd_dim, seed=5))
    eager = TorchRuntime(model)(**batch)
    for options in ({"device": "cuda"}, {"device": "cuda", "cuda_graphs": True}, {"device": "cuda", "compile": True}):
        got = TorchRuntime(tiny_asf(), **options)(**batch)
        np.testing.assert_allclose(got["logits"], eager["logits"], atol=1e-4)
