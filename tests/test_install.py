"""scripts/install.sh picks the torch build by the machine: CPU index first without an NVIDIA GPU.

The script runs for real against fakes (apt-get, nvidia-smi and a python that logs its pip
commands), so nothing is installed and no network is used.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
    *--index-url*) [ "$CPU_INDEX_UP" = 1 ] || exit 1 ;;   # PyTorch's CPU index unreachable
    "-c import torch"*) echo "$TORCH_BUILD" ;;
    "-c import mmer"*) echo 0.1.0 ;;
esac
"""


def install(tmp_path: Path, gpu: bool, cpu_index_up: bool, torch_build: str = "2.13.0+cpu None",
            *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run install.sh with fakes on PATH; returns the run and the fake python's command lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in {"apt-get": "#!/bin/sh\nexit 0\n", "sudo": '#!/bin/sh\nexec "$@"\n',
                       "nvidia-smi": f"#!/bin/sh\nexit {0 if gpu else 1}\n", "python": FAKE_PYTHON}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "FAKE_LOG": str(log), "CPU_INDEX_UP": str(int(cpu_index_up)), "TORCH_BUILD": torch_build}
    env.pop("MMER_TORCH_CPU_INDEX", None)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), *args], env=env, capture_output=True,
                         text=True, timeout=60)
    return out, log.read_text().splitlines() if log.is_file() else []


def test_without_a_gpu_the_cpu_index_comes_first(tmp_path):
    out, calls = install(tmp_path, gpu=False, cpu_index_up=True)
    assert out.returncode == 0, out.stderr
    assert calls[0] == f"-m pip install -q --timeout 5 --retries 0 --index-url {CPU_INDEX} torch==2.13.0"
    assert calls[2].startswith("-m pip install -q -e .[") and "vad" in calls[2]
    assert "torch 2.13.0+cpu, the CPU build" in out.stdout


def test_an_unreachable_cpu_index_falls_back_to_the_default_index(tmp_path):
    out, calls = install(tmp_path, gpu=False, cpu_index_up=False)
    assert out.returncode == 0, out.stderr
    assert calls[:2] == [f"-m pip install -q --timeout 5 --retries 0 --index-url {CPU_INDEX} torch==2.13.0",
                         "-m pip install -q torch==2.13.0"]
    assert "unreachable" in out.stderr and "the CPU build" in out.stdout   # a local wheel folder served it


def test_a_cuda_build_without_a_gpu_is_reported(tmp_path):
    out, _ = install(tmp_path, gpu=False, cpu_index_up=False, torch_build="2.13.0 12.8")
    assert out.returncode == 0, out.stderr
    assert "the CUDA 12.8 build" in out.stdout and "MMER_TORCH_CPU_INDEX" in out.stderr


def test_with_an_nvidia_gpu_the_default_cuda_build_stays(tmp_path):
    out, calls = install(tmp_path, gpu=True, cpu_index_up=True, torch_build="2.13.0 12.8")
    assert out.returncode == 0, out.stderr
    assert calls[0] == "-m pip install -q torch==2.13.0" and not any("--index-url" in c for c in calls)
    assert "NVIDIA GPU found" in out.stdout and "CUDA 12.8 build" in out.stdout and not out.stderr.strip()


@pytest.mark.parametrize("gpu", [False, True])
def test_dry_run_installs_nothing(tmp_path, gpu):
    out, calls = install(tmp_path, gpu, True, "2.13.0+cpu None", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert calls == []
    assert ("--index-url" in out.stdout) is not gpu and "+ " in out.stdout
