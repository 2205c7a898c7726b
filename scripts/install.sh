#!/usr/bin/env bash
# Installs mmer and everything its main job needs on a fresh Debian/Ubuntu machine with Python
# 3.10-3.13: system libraries, torch (the CPU build unless an NVIDIA GPU is present), and the
# package with its extras.
#
#   bash scripts/install.sh             install
#   bash scripts/install.sh --dry-run   print the pip commands it would run, change nothing
#
# PYTHON=python3.13 picks the interpreter; MMER_TORCH_CPU_INDEX=URL a mirror of PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (expected --dry-run)" >&2; exit 2 ;;
    esac
done
run() {
    if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# espeak-ng, sox, ffmpeg: test media and decoding; libportaudio2: the microphone (sounddevice);
# libgl1, libglib2.0-0: OpenCV's GUI build (the --show overlay).
if [ "$DRY_RUN" = 1 ]; then
    echo "install.sh --dry-run: skipping apt-get (espeak-ng sox ffmpeg libportaudio2 libgl1 libglib2.0-0 ...)"
elif command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends espeak-ng sox ffmpeg libportaudio2 libgl1 libglib2.0-0 >/dev/null
    # chromium-headless-shell: the browser that tests the live page (tests/realtime/test_web.py, skipped
    # without one). Debian ships it; where a distribution does not (Ubuntu: a snap), the install goes on.
    $SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null \
        || echo "install.sh: no chromium-headless-shell package here; the live page's browser test will skip" >&2
fi

PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
# torch first, so that the extras below find it installed. On Linux, PyPI's torch is the CUDA
# build (several GB of nvidia-* wheels; REFERENCE.md section 7), useless without an NVIDIA GPU;
# PyTorch's own CPU index serves the CPU-only wheel (~200 MB).
TORCH_CPU_INDEX=${MMER_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
HAS_NVIDIA_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAS_NVIDIA_GPU=1; fi
if [ "$HAS_NVIDIA_GPU" = 1 ]; then
    echo "install.sh: NVIDIA GPU found (nvidia-smi): installing the default (CUDA) build of $TORCH"
    run $PY -m pip install -q "$TORCH"
else
    echo "install.sh: no NVIDIA GPU: trying the CPU build of $TORCH from $TORCH_CPU_INDEX"
    # --timeout 5 --retries 0: where only registry mirrors are reachable, fail in seconds, not minutes.
    # pip's configured find-links and extra indexes (a local wheel folder) still take part.
    if ! run $PY -m pip install -q --timeout 5 --retries 0 --index-url "$TORCH_CPU_INDEX" "$TORCH"; then
        echo "install.sh: $TORCH_CPU_INDEX unreachable or without $TORCH: installing from the default index" >&2
        run $PY -m pip install -q "$TORCH"
    fi
fi
# Which build pip chose (an already installed torch is kept as it is): a CPU build has no CUDA version.
if [ "$DRY_RUN" = 1 ]; then
    echo "+ $PY -c 'import torch; print(torch.__version__, torch.version.cuda)'"
else
    TORCH_BUILD=$($PY -c "import torch; print(torch.__version__, torch.version.cuda)")
    TORCH_VERSION=${TORCH_BUILD% *} TORCH_CUDA=${TORCH_BUILD##* }
    if [ "$TORCH_CUDA" = "None" ]; then
        echo "install.sh: torch $TORCH_VERSION, the CPU build"
    else
        echo "install.sh: torch $TORCH_VERSION, the CUDA $TORCH_CUDA build"
        if [ "$HAS_NVIDIA_GPU" = 0 ]; then
            echo "install.sh: no NVIDIA GPU here, so that CUDA build is dead weight: reinstall torch from a mirror" \
                 "of PyTorch's CPU index (MMER_TORCH_CPU_INDEX=URL bash scripts/install.sh) if you can" >&2
        fi
    fi
fi
# trtrtx: TensorRT for RTX builds engines even on a machine without a GPU (the tests build one).
# vad: Silero VAD's ONNX model (segmenter.vad=silero), run through onnxruntime.
run $PY -m pip install -q -e ".[live,train,export,trtrtx,vad,dev]"
if [ "$DRY_RUN" = 1 ]; then exit 0; fi
echo "mmer installed: $($PY -c 'import mmer; print(mmer.__version__)')"
