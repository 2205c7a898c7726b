"""Shared test fixtures: the shared data folder and tiny random-weight text encoders.

The tiny encoders are real Hugging Face folders (config, safetensors weights, tokenizer) built
offline from the MELD transcripts, so anything that loads a text encoder by folder
(``Teacher.from_pretrained(TeacherDims(encoder=folder))``) can be tested without network or
pretrained weights.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from mmer.meld import MeldDialogue, read_meld_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
MELD_TRAIN = Path("data") / "MELD" / "train_sent_emo.csv"
TINY_HIDDEN = 32                  # tiny encoders: width, layers, heads, feed-forward width
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_FFN = 64
TINY_MAX_POSITIONS = 512          # >= TeacherDims.max_tokens (256)
TINY_WORDPIECE_WORDS = 3000       # most frequent MELD words kept whole in the WordPiece vocab
TINY_BPE_VOCAB = 800              # byte-level BPE vocabulary size of the tiny RoBERTa
ROBERTA_POSITION_OFFSET = 2       # RoBERTa positions start at pad_token_id + 1
SEED = 0
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def shared_root() -> Path:
    """The shared folder: env MMER_SHARED, else ``<repo>/../shared``."""
    return Path(os.environ.get("MMER_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; tests that need it skip when it is absent."""
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"shared folder {root} not found (set MMER_SHARED)")
    return root


@pytest.fixture(scope="session")
def meld_train_dialogues(shared_dir: Path) -> list[MeldDialogue]:
    """Every dialogue of MELD's train_sent_emo.csv (mmer.meld), typographic punctuation kept as written."""
    path = shared_dir / MELD_TRAIN
    if not path.is_file():
        pytest.skip(f"{path} not found")
    # ’ … — kept: the tiny WordPiece vocabulary, and so every random-weight model built on it,
    # stays what it was when the tests' expectations were set.
    return read_meld_csv(path, ascii_punctuation=False)


def meld_texts(dialogues: list[MeldDialogue]) -> list[str]:
    """Every utterance's text, dialogue by dialogue."""
    return [row.text for dialogue in dialogues for row in dialogue.rows]


def _tiny_dims() -> dict:
    return dict(hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
                intermediate_size=TINY_FFN)


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(tmp_path_factory, meld_train_dialogues) -> Path:
    """A tiny random BERT folder (config, weights, WordPiece tokenizer built from MELD words)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    counts: Counter[str] = Counter()
    chars: set[str] = set()
    for text in meld_texts(meld_train_dialogues):
        text = text.lower()
        counts.update(re.findall(r"\w+|[^\w\s]", text))
        chars.update(c for c in text if not c.isspace())
    words = [w for w, _ in counts.most_common(TINY_WORDPIECE_WORDS)]
    # Single characters and their ## continuations guarantee every word can be spelled.
    pieces = sorted(chars) + [f"##{c}" for c in sorted(chars)]
    vocab = list(dict.fromkeys(BERT_SPECIALS + pieces + words))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=TINY_MAX_POSITIONS, **_tiny_dims())
    torch.manual_seed(SEED)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_roberta_encoder_dir(tmp_path_factory, meld_train_dialogues) -> Path:
    """A tiny random RoBERTa folder with a byte-level BPE tokenizer trained on MELD utterances."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(meld_texts(meld_train_dialogues), vocab_size=TINY_BPE_VOCAB,
                            min_frequency=2, special_tokens=ROBERTA_SPECIALS, show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    config = RobertaConfig(vocab_size=bpe.get_vocab_size(), max_position_embeddings=TINY_MAX_POSITIONS
                           + ROBERTA_POSITION_OFFSET, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           type_vocab_size=1, **_tiny_dims())
    torch.manual_seed(SEED)
    RobertaModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def emodb_dir(shared_dir: Path) -> Path:
    """The real EmoDB clips of ../shared/data/EmoDB (skips when they are absent)."""
    root = shared_dir / "data" / "EmoDB"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"{root} has no labels.csv")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models run fastest on one thread; on a shared 2-core machine a second one only spins.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
