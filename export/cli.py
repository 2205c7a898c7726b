"""``mmer-export``: export a checkpoint (or an embedded default) in one of the table's formats.

    mmer-export default-text --format onnx-int8-static --out exports/text-int8 --calib-data meld-dev \\
        --data-root /data parity.f1_utterances=500

Exit status: 0 exported and every parity gate passed (or parity could not run here, e.g. an
engine without its GPU: parity.json says why); 2 bad usage (unknown format, an option the
format does not read, a bad config value); 3 a parity gate FAILED (the export is still written,
parity.json names the gate); 1 the export itself failed (missing extra, builder error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmer.cli import add_version
from mmer.config import ConfigError
from mmer.export import formats
from mmer.export.config import CONFIG_FILE
from mmer.export.parity import GATE_FAILED_EXIT
from mmer.samples import DATA_SOURCES

USAGE_EXIT = 2
FAILED_EXIT = 1


def _table() -> str:
    width = max(len(n) for n in formats.names())
    return "\n".join(f"  {f.name:<{width}}  {f.description}" for f in formats.TABLE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmer-export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a mmer model to ONNX / FP16 / INT8 / TensorRT / TensorRT-RTX, with parity against torch.",
        epilog=f"formats:\n{_table()}\n\nkey=value options override configs/export.yaml (e.g. profiles.batch.max=4); "
               f"a format refuses options it does not read.")
    add_version(parser)
    parser.add_argument("model", help="checkpoint folder or embedded default name (e.g. default-face)")
    parser.add_argument("--format", required=True, dest="fmt", help=f"one of: {', '.join(formats.names())}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--calib-data", choices=DATA_SOURCES, default=None,
                        help="static INT8 calibration data (calibrated formats only)")
    parser.add_argument("--data-root", default=None, help="folder holding MELD/*_sent_emo.csv (calibration and parity)")
    parser.add_argument("--config", type=Path, default=CONFIG_FILE, help="export config YAML (default: configs/export.yaml)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check (parity.json says so)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _print_summary(result) -> None:
    card, report = result.card, result.parity
    print(f"exported {card['model']} as {card['export_format']} ({card['precision']}) -> {result.folder}")
    for path in sorted(result.folder.iterdir()):
        if path.is_file():
            print(f"  {path.name:<16} {path.stat().st_size / (1 << 20):9.2f} MB")
    if report.get("status") == "not run":
        print(f"parity: not run here: {report['reason']}")
        return
    print(f"parity vs torch: top-1 agreement {report['top1_agreement']:.4f} over {report['rows']} rows; " +
          ", ".join(f"{k} max_abs {v['max_abs']:.2e}" for k, v in report["outputs"].items()))
    if "f1" in report and "drop_points" in report["f1"]:
        f1 = report["f1"]
        print(f"weighted F1 on {f1['utterances']} MELD dev utterances: torch {f1['weighted_f1_torch']:.4f}, "
              f"export {f1['weighted_f1_candidate']:.4f} (drop {f1['drop_points']:+.2f} points)")
    for gate in report["gates"]:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[gate["passed"]]
        value = "-" if gate["value"] is None else f"{gate['value']:.6g}"
        print(f"  gate {gate['gate']:<34} {value:>12} (threshold {gate['threshold']}) {verdict}")


def export_main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmer-export``; returns the exit status (module docstring)."""
    args = build_parser().parse_intermixed_args(argv)
    import mmer
    from mmer.checkpoint import CheckpointError
    from mmer.export.exporter import export
    from mmer.extras import MissingExtra

    try:
        spec = formats.get(args.fmt)
        spec.check_options(args.overrides, args.calib_data)
    except (KeyError, formats.UnsupportedOption) as e:
        print(f"mmer-export: {e.args[0]}", file=sys.stderr)
        return USAGE_EXIT
    try:
        model = mmer.load(args.model)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"mmer-export: {e}", file=sys.stderr)
        return USAGE_EXIT
    try:
        result = export(model, spec.name, args.out, args.overrides, args.config, args.calib_data, args.data_root,
                        source=str(args.model), parity=not args.no_parity)
    except (ConfigError, formats.UnsupportedOption, ValueError) as e:
        print(f"mmer-export: {e}", file=sys.stderr)
        return USAGE_EXIT
    except (MissingExtra, RuntimeError, FileNotFoundError) as e:
        print(f"mmer-export: export failed: {e}", file=sys.stderr)
        return FAILED_EXIT
    _print_summary(result)
    failed = result.failed_gates()
    if failed:
        names = "; ".join(f"{g['gate']} = {g['value']:.6g} (threshold {g['threshold']})" for g in failed)
        print(f"mmer-export: PARITY GATE FAILED: {names}. The export is in {result.folder}; see parity.json.",
              file=sys.stderr)
        return GATE_FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
