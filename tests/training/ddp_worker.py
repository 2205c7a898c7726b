"""One process of the 2-process run of test_distributed.py, started by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.training.ddp_worker RUN CACHE LOG

It builds a feature cache (rank 0 first), trains the toy MLP of test_trainer.py on the cached
features with the Trainer, and appends what this rank did (cache rows computed, rows scored)
to ``LOG/rank<r>.jsonl`` for the test to check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mmer.training.cache import FeatureCache
from mmer.training.distributed import main_process_first, rank
from mmer.training.trainer import Trainer
from tests.training.test_trainer import LABELS, ToyDims, ToyMLP, cfg, make_splits, toy_step

CACHE_FINGERPRINT = "0123456789abcdef"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("cache_dir")
    parser.add_argument("log_dir")
    args = parser.parse_args(argv)
    log = Path(args.log_dir) / f"rank{rank()}.jsonl"

    def record(**event) -> None:
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    splits = make_splits()
    uids = [f"train-{i}" for i in range(len(splits.train))]

    def compute(chunk: list[str]) -> np.ndarray:
        record(cache_rows=len(chunk))
        return np.stack([splits.train[int(u.split("-")[1])][0] for u in chunk])

    with main_process_first("cpu"):   # rank 0 writes the cache, rank 1 then reads it
        features = FeatureCache(args.cache_dir, CACHE_FINGERPRINT, progress=False).get_or_compute(uids, compute)
    splits.train = [(features[i], label) for i, (_, label) in enumerate(splits.train)]

    def step(model, batch):
        if not model.training:
            record(scored_rows=len(batch["labels"]))
        return toy_step(model, batch)

    torch.manual_seed(0)
    result = Trainer(ToyMLP(ToyDims()), step, splits, cfg(device="cpu"), args.run_dir, LABELS).fit()
    record(done=True, has_test=result.get("test") is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
