"""Command-line entry points: thin fronts that hand over to the module that does the work.

Imports happen inside each function so that ``--help`` of one command never pays for the
heavy imports of another.
"""

from __future__ import annotations

import argparse
import sys


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--version`` on ``parser``: prints ``PROG VERSION`` (the installed mmer) and exits 0."""
    from mmer import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def live_main(argv: list[str] | None = None) -> int:
    """``mmer-live``: microphone + camera (or a replayed file) -> one prediction per utterance."""
    from mmer.realtime.cli import live_main as main

    return main(argv)


def predict_main(argv: list[str] | None = None) -> int:
    """``mmer-predict``: the live pipeline over recorded wav/mp4 files or a MELD-style CSV."""
    from mmer.realtime.cli import predict_main as main

    return main(argv)


def train_main(argv: list[str] | None = None) -> int:
    """``mmer-train``: the stages of the TelME recipe (teacher, student, fusion)."""
    from mmer.training.cli import train_main as main

    return main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    """``mmer-eval``: score a checkpoint or an embedded default on a dataset split."""
    from mmer.training.cli import eval_main as main

    return main(argv)


def export_main(argv: list[str] | None = None) -> int:
    """``mmer-export``: ONNX / FP16 / INT8 / TensorRT / TensorRT-RTX, with parity checks."""
    from mmer.export.cli import export_main as main

    return main(argv)


BENCH_TARGETS = {
    "models": "latency of every model and backend (export/bench.py)",
    "live": "the whole live pipeline replayed from a recording (realtime/bench.py)",
    "soak": "a long looped replay: no utterance lost, resident memory flat (realtime/soak.py)",
    "wer": "word error rate of speech-to-text on recordings with references, through mmer-predict (realtime/wer.py)",
}


def bench_main(argv: list[str] | None = None) -> int:
    """``mmer-bench models|live|soak|wer ...``: benchmarks that print a table and write JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BENCH_TARGETS:
        target, rest = argv[0], argv[1:]
        if target == "models":
            from mmer.export.bench import bench_models_main as main
        elif target == "live":
            from mmer.realtime.bench import bench_live_main as main
        elif target == "wer":
            from mmer.realtime.wer import wer_main as main
        else:
            from mmer.realtime.bench import bench_soak_main as main
        return main(rest)
    parser = argparse.ArgumentParser(
        prog="mmer-bench", description="Latency benchmarks. Targets:\n" + "\n".join(
            f"  {name:7s} {what}" for name, what in BENCH_TARGETS.items()) +
        "\n\n`mmer-bench TARGET --help` lists each target's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser)
    parser.add_argument("target", choices=sorted(BENCH_TARGETS))
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(live_main())
