"""Command-line entry points. Each one is a thin argparse front over a module of the package."""

from __future__ import annotations

import argparse
import sys

NOT_BUILT_EXIT = 2


def _not_built(prog: str, summary: str, issue: int, argv: list[str] | None) -> int:
    """Answer ``--help`` with what the command will do, and refuse to run until it is built."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{summary}\n\nNot built yet: tracked in issue #{issue}. This command "
        "refuses to run rather than pretend.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_known_args(argv)
    print(f"{prog}: not built yet (issue #{issue}); nothing was run.", file=sys.stderr)
    return NOT_BUILT_EXIT


def live_main(argv: list[str] | None = None) -> int:
    return _not_built("mmer-live", "Live emotion recognition from microphone and camera.", 4, argv)


def predict_main(argv: list[str] | None = None) -> int:
    return _not_built("mmer-predict", "Run the live pipeline on recorded wav/mp4 files or a transcript CSV.", 4, argv)


def train_main(argv: list[str] | None = None) -> int:
    from mmer.training.cli import train_main as main

    return main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    from mmer.training.cli import eval_main as main

    return main(argv)


def export_main(argv: list[str] | None = None) -> int:
    return _not_built("mmer-export", "Export a model to ONNX / FP16 / INT8 / TensorRT / TensorRT-RTX.", 5, argv)


def bench_main(argv: list[str] | None = None) -> int:
    return _not_built("mmer-bench", "Latency benchmarks of models and of the live pipeline.", 5, argv)


if __name__ == "__main__":
    sys.exit(live_main())
