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


@pytest.mark.parametrize("command, argv", [
    ("live_main", []), ("predict_main", []), ("train_main", []), ("eval_main", []), ("export_main", []),
    ("bench_main", []), ("bench_main", ["live"]), ("bench_main", ["models"]), ("bench_main", ["soak"]),
])
def test_every_entry_point_has_version(command, argv, capsys):
    import mmer
    from mmer import cli

    with pytest.raises(SystemExit) as done:
        getattr(cli, command)([*argv, "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().endswith(mmer.__version__)
