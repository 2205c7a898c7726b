"""TelME's text-teacher input: the dialogue so far, speaker tokens, and a mask prompt.

Paper: TelME (seeds/000, eqs (1)-(3); REFERENCE.md section 2). For target utterance ``u_t``
spoken by ``s_k`` the teacher reads::

    [CLS] <s_a> u_1 <s_b> u_2 ... <s_k> u_t [SEP] Now <s_k> feels [MASK] [SEP]

(``<s> ... </s> Now <s_k> feels <mask> </s>`` with RoBERTa) and classifies the hidden state at
the mask. The ids equal those of tokenising that string with no space before special tokens
(TelME's own string has one, which byte-level BPE turns into a stray "Ġ" token before every
speaker token; that is not reproduced). Each utterance is tokenised once (and cached by text), so building the input for
the next turn of a live conversation never re-tokenises the whole dialogue string.

Speaker tokens. ``num_speaker_tokens`` real tokens ``<s1>..<sN>`` plus one shared ``<s_other>``.
Speakers are numbered by order of first appearance *within the surviving window* (the turns
left after truncation, target included), so speakers that scrolled out of a long conversation
do not hold tokens. The target speaker always gets a real token: the first N speakers of the
window get ``<s1>..<sN>`` if the target is among them; otherwise the first N-1 get
``<s1>..<s(N-1)>``, the target gets ``<sN>``, and every other speaker shares ``<s_other>``.
Speaker names are compared exactly (no case folding or stripping).

Truncation. The result never exceeds ``max_tokens`` including the three special tokens. The
prompt (with the target's speaker token and the mask) and the target utterance's speaker token
always survive; context is dropped from the left (oldest first), token by token: the oldest
surviving turn may be cut from its left, keeping its speaker token so every kept token stays
attributed. If the target utterance alone is too long it is cut from its left.
"""

from __future__ import annotations

import inspect
import string
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_PROMPT = "Now {speaker} feels {mask}"
DEFAULT_SPEAKER_TOKENS = 9       # TelME: <s1>..<s9>
DEFAULT_MAX_TOKENS = 256         # tokens, special tokens included
OTHER_SPEAKER_TOKEN = "<s_other>"
NUM_SPECIAL_TOKENS = 3           # [CLS] ... [SEP] prompt [SEP]
MIN_PARTIAL_TURN_TOKENS = 2      # a cut context turn keeps its speaker token + >= 1 word token
TEXT_CACHE_SIZE = 8192           # utterances; bounded so a live session cannot grow it forever


@dataclass(frozen=True)
class Turn:
    """One utterance of a conversation."""

    speaker: str
    text: str


DEFAULT_SPEAKER = "speaker"  # the name given to a plain string's speaker


def as_turns(item: Any) -> list[Turn]:
    """A dialogue from what people have at hand: a string (one turn of ``DEFAULT_SPEAKER``), a
    ``(speaker, text)`` pair, a :class:`Turn`, or a list of those (the turns in order; the last
    one is the one to classify). Anything else raises :class:`mmer.errors.UsageError`."""
    from mmer.errors import UsageError

    def one(x: Any) -> Turn:
        if isinstance(x, Turn):
            return x
        if isinstance(x, str):
            return Turn(DEFAULT_SPEAKER, x)
        if isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, str) for v in x):
            return Turn(*x)
        raise UsageError(f"a turn is a string, a (speaker, text) pair of strings or a Turn; got {x!r:.80}")

    turns = [one(x) for x in item] if isinstance(item, list) else [one(item)]
    if not turns:
        raise UsageError("a dialogue needs at least one turn; got an empty list")
    return turns


def speaker_token_names(n: int) -> list[str]:
    """``['<s1>', ..., '<sN>', '<s_other>']``."""
    return [f"<s{i}>" for i in range(1, n + 1)] + [OTHER_SPEAKER_TOKEN]


def add_speaker_tokens(tokenizer: Any, n: int = DEFAULT_SPEAKER_TOKENS) -> list[int]:
    """Add ``<s1>..<sN>`` and ``<s_other>`` as additional special tokens; return their N+1 ids.

    Idempotent: tokens already in the vocabulary are not added again, and the special tokens
    the tokenizer already had are kept. The caller resizes the encoder's embeddings to
    ``len(tokenizer)``.
    """
    names = speaker_token_names(n)
    vocab = tokenizer.get_vocab()
    missing = [t for t in names if t not in vocab]
    if missing:
        params = inspect.signature(tokenizer.add_special_tokens).parameters
        # transformers 5 renamed the keep-existing switch; 4.x calls it replace_additional_...
        keep = ("replace_extra_special_tokens" if "replace_extra_special_tokens" in params
                else "replace_additional_special_tokens")
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, **{keep: False})
    ids = tokenizer.convert_tokens_to_ids(names)
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"could not add speaker tokens {names} to {type(tokenizer).__name__}")
    return list(ids)


def _parse_template(template: str) -> list[str | None]:
    """Split the prompt template into literal texts and the fields 'speaker' / 'mask'."""
    parts: list[str | None] = []
    fields = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal.strip():
            parts.append(literal.strip())
        if field is not None:
            if field not in ("speaker", "mask"):
                raise ValueError(f"prompt template {template!r}: unknown field {{{field}}}; use {{speaker}} and {{mask}}")
            fields.append(field)
            parts.append("{" + field + "}")
    if sorted(fields) != ["mask", "speaker"]:
        raise ValueError(f"prompt template {template!r} must hold {{speaker}} and {{mask}} exactly once each")
    return parts


class DialoguePrompt:
    """Builds TelME teacher inputs from a list of turns (see the module docstring for the rules).

    Args:
        tokenizer: a Hugging Face tokenizer with a mask token; speaker tokens are added to it.
        num_speaker_tokens: N real speaker tokens ``<s1>..<sN>`` (TelME: 9).
        max_tokens: hard cap on the encoding length, special tokens included.
        prompt_template: text with ``{speaker}`` and ``{mask}`` placeholders.
    """

    def __init__(self, tokenizer: Any, num_speaker_tokens: int = DEFAULT_SPEAKER_TOKENS,
                 max_tokens: int = DEFAULT_MAX_TOKENS, prompt_template: str = DEFAULT_PROMPT) -> None:
        if num_speaker_tokens < 1:
            raise ValueError(f"num_speaker_tokens must be >= 1, got {num_speaker_tokens}")
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token; the teacher needs a masked-LM tokenizer")
        self.tokenizer = tokenizer
        self.num_speaker_tokens = num_speaker_tokens
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        ids = add_speaker_tokens(tokenizer, num_speaker_tokens)
        self.speaker_tokens = speaker_token_names(num_speaker_tokens)
        self.speaker_ids = dict(zip(self.speaker_tokens, ids))
        self.mask_id = int(tokenizer.mask_token_id)
        self.cls_id = _first_id(tokenizer, "cls_token_id", "bos_token_id")
        self.sep_id = _first_id(tokenizer, "sep_token_id", "eos_token_id")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Utterance text must not smuggle in a mask or speaker token: the model reads the mask
        # position from input_ids, so one stray [MASK] in a transcript would move it.
        self._banned = set(tokenizer.all_special_ids) | set(ids)
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._prompt_parts = [p if p.startswith("{") else self._text_ids(p)
                              for p in _parse_template(prompt_template)]
        self.prompt_length = sum(1 if isinstance(p, str) else len(p) for p in self._prompt_parts)
        # The dialogue part must hold at least the target's speaker token.
        self.dialogue_budget = max_tokens - NUM_SPECIAL_TOKENS - self.prompt_length
        if self.dialogue_budget < 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for the dialogue: the prompt "
                             f"{prompt_template!r} takes {self.prompt_length} tokens plus {NUM_SPECIAL_TOKENS} special")

    # -- tokenisation ------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        """Word-piece ids of one utterance, without special tokens (cached by text).

        A leading space is added because in the joined dialogue every utterance follows a
        speaker token and a space: byte-level BPE (RoBERTa) encodes a word after a space
        differently ("Ġword") from a word at the start of a string.
        """
        ids = self._cache.get(text)
        if ids is not None:
            self._cache.move_to_end(text)
            return ids
        raw = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False) if text.strip() else []
        ids = [i for i in raw if i not in self._banned]
        self._cache[text] = ids
        if len(self._cache) > TEXT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return ids

    # -- encoding ----------------------------------------------------------------------
    def _window(self, turns: Sequence[Turn], target: int) -> list[tuple[int, list[int]]]:
        """(turn index, kept utterance ids) of the surviving turns, oldest first."""
        budget = self.dialogue_budget
        target_ids = self._text_ids(turns[target].text)
        room = budget - 1  # the target's speaker token always stays
        if len(target_ids) > room:
            target_ids = target_ids[len(target_ids) - room:]
        window = [(target, target_ids)]
        used = 1 + len(target_ids)
        for i in range(target - 1, -1, -1):
            ids = self._text_ids(turns[i].text)
            room = budget - used
            if 1 + len(ids) <= room:
                window.append((i, ids))
                used += 1 + len(ids)
                continue
            if room >= MIN_PARTIAL_TURN_TOKENS:
                window.append((i, ids[len(ids) - (room - 1):]))
            break
        window.reverse()
        return window

    def assign_speakers(self, speakers_in_order: Sequence[str], target_speaker: str) -> dict[str, str]:
        """Map speaker names (window order, repeats allowed) to speaker tokens (module docstring rule)."""
        order = list(dict.fromkeys(speakers_in_order))
        if target_speaker not in order:
            raise ValueError(f"target speaker {target_speaker!r} is not among the window's speakers {order}")
        n = self.num_speaker_tokens
        real = set(order[:n]) if target_speaker in order[:n] else set(order[:n - 1]) | {target_speaker}
        mapping: dict[str, str] = {}
        k = 0
        for name in order:
            if name in real:
                mapping[name] = self.speaker_tokens[k]
                k += 1
            else:
                mapping[name] = OTHER_SPEAKER_TOKEN
        return mapping

    def encode(self, turns: Sequence[Turn], target: int = -1) -> dict:
        """Encode ``turns[target]`` in the context of the turns before it.

        Turns after ``target`` are ignored (the live pipeline never sees the future).

        Returns:
            ``input_ids``: list[int] of length <= ``max_tokens``;
            ``mask_index``: position of the mask token in ``input_ids``;
            ``speakers``: speaker name -> speaker token for the speakers of the kept window.
        """
        if not turns:
            raise ValueError("encode needs at least one turn")
        if not -len(turns) <= target < len(turns):
            raise IndexError(f"target {target} out of range for {len(turns)} turns")
        target %= len(turns)
        window = self._window(turns, target)
        target_speaker = turns[target].speaker
        speakers = self.assign_speakers([turns[i].speaker for i, _ in window], target_speaker)
        ids = [self.cls_id]
        for i, utt in window:
            ids.append(self.speaker_ids[speakers[turns[i].speaker]])
            ids.extend(utt)
        ids.append(self.sep_id)
        mask_index = -1
        for part in self._prompt_parts:
            if part == "{speaker}":
                ids.append(self.speaker_ids[speakers[target_speaker]])
            elif part == "{mask}":
                mask_index = len(ids)
                ids.append(self.mask_id)
            else:
                ids.extend(part)
        ids.append(self.sep_id)
        return {"input_ids": ids, "mask_index": mask_index, "speakers": speakers}

    def collate(self, encodings: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Right-pad encodings into ``input_ids`` (B, L) and ``attention_mask`` (B, L), both int64."""
        if not encodings:
            raise ValueError("collate needs at least one encoding")
        length = max(len(e["input_ids"]) for e in encodings)
        input_ids = torch.full((len(encodings), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, e in enumerate(encodings):
            n = len(e["input_ids"])
            input_ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, encoding: dict) -> str:
        """The encoding as text, special tokens shown (for logs and debugging)."""
        return self.tokenizer.decode(encoding["input_ids"], skip_special_tokens=False)


def _first_id(tokenizer: Any, *attrs: str) -> int:
    for attr in attrs:
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(tokenizer).__name__} has none of {attrs}")
