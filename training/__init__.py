"""mmer.training: datasets (MELD, IEMOCAP, EmoDB), TelME losses, the Trainer and the recipe stages.

Entry points: ``mmer-train teacher|student|fusion`` and ``mmer-eval`` (training/cli.py).
"""
