#!/usr/bin/env bash
# Installs mmer and everything its main job needs on a fresh Debian/Ubuntu machine with Python
# 3.10-3.12: system libraries, the CPU build of torch, and the package with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# espeak-ng, sox, ffmpeg: test media and decoding; libportaudio2: the microphone (sounddevice);
# libgl1, libglib2.0-0: OpenCV's GUI build (the --show overlay).
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends espeak-ng sox ffmpeg libportaudio2 libgl1 libglib2.0-0 >/dev/null
fi

PY=${PYTHON:-python3}
# The CPU build first: an unpinned torch pulls a multi-GB CUDA build (REFERENCE.md section 7).
# Users with an NVIDIA GPU install the CUDA torch of their choice instead, then the line below.
$PY -m pip install -q "torch==2.13.0"
# trtrtx: TensorRT for RTX builds engines even on a machine without a GPU (the tests build one).
$PY -m pip install -q -e ".[live,train,export,trtrtx,dev]"
# Silero VAD (optional, `segmenter.vad=silero`): only its ONNX file is used, through onnxruntime.
# --no-deps because the package pins torchaudio < 2.10, which would replace the torch above.
$PY -m pip install -q --no-deps "silero-vad==6.2.3"
echo "mmer installed: $($PY -c 'import mmer; print(mmer.__version__)')"
