"""The rolling dialogue context the text teacher reads: who said what, most recent last.

TelME's teacher classifies an utterance *in the context of the dialogue so far* (REFERENCE.md
section 2), so the live pipeline keeps the last turns of the conversation: the user's
transcribed utterances and, pushed by the host application, what the robot or kiosk said.
The window is bounded twice, by turns (``max_turns``) and by tokens (``max_tokens``), so a
session that runs for hours holds a constant amount of text. The teacher's prompt builder
truncates again to its own budget; this bound only keeps memory and tokenisation cost flat.

Thread safety: the websocket server pushes host turns from its own thread while the
prediction thread adds user turns, so every method takes one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

from mmer.dialogue import Turn

DEFAULT_MAX_TURNS = 20        # turns; MELD dialogues average ~10 utterances, so 20 keeps a whole scene
DEFAULT_MAX_TOKENS = 512      # tokens kept across all turns (2x the teacher's default prompt budget)
USER_SPEAKER = "user"         # speaker name of the person in front of the microphone
HOST_SPEAKER = "robot"        # speaker name of the host application's own turns


def count_words(text: str) -> int:
    """Whitespace word count: the token proxy used when no tokenizer is given."""
    return len(text.split())


@dataclass(frozen=True)
class ContextTurn:
    """One turn of the window: the :class:`mmer.dialogue.Turn` plus where it came from.

    origin: "user" (a segmented utterance of the microphone) or "host" (pushed by the host).
    utterance_id: the id of the user's utterance, ``None`` for host turns.
    tokens: the turn's length as counted by the context's token counter.
    """

    turn: Turn
    origin: str
    utterance_id: int | None
    tokens: int


class DialogueContext:
    """A bounded window of the most recent turns, oldest first.

    Args:
        max_turns: keep at most this many turns.
        max_tokens: drop the oldest turns while the kept turns hold more tokens than this; the
            newest turn always stays, even when it alone is longer.
        count_tokens: ``text -> number of tokens``; pass the text model's tokenizer length to
            bound exactly what the teacher reads. Default: whitespace words.
    """

    def __init__(self, max_turns: int = DEFAULT_MAX_TURNS, max_tokens: int = DEFAULT_MAX_TOKENS,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        if max_turns < 1 or max_tokens < 1:
            raise ValueError(f"max_turns and max_tokens must be >= 1, got {max_turns}, {max_tokens}")
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens or count_words
        self._turns: deque[ContextTurn] = deque(maxlen=max_turns)
        self._tokens = 0
        self._lock = threading.Lock()

    # -- adding turns ---------------------------------------------------------------------
    def _append(self, entry: ContextTurn) -> None:
        with self._lock:
            if len(self._turns) == self.max_turns:
                self._tokens -= self._turns[0].tokens  # the deque is about to drop it
            self._turns.append(entry)
            self._tokens += entry.tokens
            while len(self._turns) > 1 and self._tokens > self.max_tokens:
                self._tokens -= self._turns.popleft().tokens

    def add_user_turn(self, text: str, speaker: str = USER_SPEAKER, utterance_id: int | None = None) -> Turn:
        """Append what the user said (a transcribed utterance) and return it as a Turn."""
        turn = Turn(speaker=speaker, text=text.strip())
        self._append(ContextTurn(turn, "user", utterance_id, self.count_tokens(turn.text)))
        return turn

    def push_turn(self, speaker: str, text: str) -> Turn:
        """Append a turn the host application knows about (what the robot said, or another
        person's words from the host's own speech-to-text)."""
        turn = Turn(speaker=str(speaker), text=str(text).strip())
        self._append(ContextTurn(turn, "host", None, self.count_tokens(turn.text)))
        return turn

    def reset(self) -> None:
        """Forget the conversation (a new user walked up)."""
        with self._lock:
            self._turns.clear()
            self._tokens = 0

    # -- reading ----------------------------------------------------------------------------
    def turns(self) -> list[Turn]:
        """A snapshot of the window as :class:`mmer.dialogue.Turn`, oldest first."""
        with self._lock:
            return [e.turn for e in self._turns]

    def entries(self) -> list[ContextTurn]:
        """A snapshot of the window with each turn's origin and utterance id."""
        with self._lock:
            return list(self._turns)

    @property
    def num_tokens(self) -> int:
        """Tokens currently held (by ``count_tokens``)."""
        with self._lock:
            return self._tokens

    def __len__(self) -> int:
        with self._lock:
            return len(self._turns)
