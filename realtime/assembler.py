"""What a prediction reads besides the audio: the words, the dialogue so far, the face evidence.

:class:`UtteranceAssembler` is a threadless stage: the prediction worker hands it each
utterance once its words are known (from speech-to-text, or from the host with ASR "none")
and gets back the dialogue turns to read and the pooled face evidence of the utterance's
time span. It owns the rolling :class:`DialogueContext` and the host's texts waiting for
their utterance, so the words, the context and the face join in one place, testable without
threads:

    asm = UtteranceAssembler(DialogueContext(), host_texts=64, text_wait_s=0.0)
    asm.push_text(0, "hello there")
    turns, evidence = asm.assemble(utt, faces=None)      # faces: a FacePath or None
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from mmer.dialogue import Turn
from mmer.realtime.context import DialogueContext
from mmer.realtime.frames import Utterance


class UtteranceAssembler:
    """Joins an utterance's words, the dialogue context and the face evidence.

    Args:
        context: the rolling dialogue window (the user's utterances and the host's turns).
        host_texts: with ASR "none", how many texts the host sent ahead may wait for their
            utterance; the oldest is dropped beyond (counted in ``stats["host_text_overflows"]``).
        text_wait_s: with ASR "none", how long an utterance waits for its text before it is
            classified without words (0: not at all).
        face_wait_s: how long an utterance waits for the face path to reach its end.
    """

    def __init__(self, context: DialogueContext, host_texts: int = 64, text_wait_s: float = 0.0,
                 face_wait_s: float = 0.1) -> None:
        self.context = context
        self.host_texts, self.text_wait_s, self.face_wait_s = host_texts, text_wait_s, face_wait_s
        self._texts: OrderedDict[int, tuple[str, str | None]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"host_turns": 0, "host_text_overflows": 0, "utterances_without_text": 0}

    # -- what the host says ------------------------------------------------------------------
    def push_turn(self, speaker: str, text: str) -> None:
        """A turn the host knows about (what the robot said) joins the dialogue context."""
        self.context.push_turn(speaker, text)
        self.stats["host_turns"] += 1

    def push_text(self, utterance_id: int, text: str, speaker: str | None = None) -> None:
        """The words of utterance ``utterance_id`` (ASR "none"), before or after it ends."""
        with self._cond:
            self._texts[int(utterance_id)] = (str(text), speaker)
            while len(self._texts) > self.host_texts:
                self._texts.popitem(last=False)
                self.stats["host_text_overflows"] += 1
            self._cond.notify_all()

    def take_host_text(self, utt: Utterance) -> None:
        """Set ``utt.text`` (and speaker) from the host, waiting at most ``text_wait_s``."""
        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: utt.id in self._texts or self._closed, self.text_wait_s)
            if utt.id in self._texts:
                utt.text, speaker = self._texts.pop(utt.id)
                utt.speaker = speaker or utt.speaker
        utt.timings_ms["text_wait"] = (time.perf_counter() - t0) * 1000

    # -- one utterance -------------------------------------------------------------------------
    def assemble(self, utt: Utterance, faces: Any = None) -> tuple[list[Turn] | None, Any]:
        """The dialogue turns the text model reads (``None`` without words) and the pooled face
        evidence over ``[utt.start_s, utt.end_s]`` (``None`` without a face path).

        ``faces``: a :class:`mmer.realtime.face_path.FacePath`; waited on for at most
        ``face_wait_s`` so the frames up to the end of speech are in.
        """
        from mmer.realtime.face_path import pool_observations

        turns = None
        if utt.text and utt.text.strip():
            self.context.add_user_turn(utt.text, utt.speaker, utt.id)
            turns = self.context.turns()
        else:
            self.stats["utterances_without_text"] += 1
        evidence = None
        if faces is not None:
            t0 = time.perf_counter()
            faces.wait_until(utt.end_s, self.face_wait_s)
            t1 = time.perf_counter()
            evidence = pool_observations(faces.window(utt.start_s, utt.end_s))
            utt.timings_ms["face_wait"] = (t1 - t0) * 1000
            utt.timings_ms["face"] = (time.perf_counter() - t1) * 1000
        return turns, evidence

    def interim_turns(self, speaker: str, text: str) -> list[Turn] | None:
        """The turns the text model reads for words still being spoken: the dialogue so far and
        ``(speaker, text)``, which does not join the context (its utterance will). None without words."""
        if not text.strip():
            return None
        return self.context.turns() + [Turn(speaker, text.strip())]

    def reset(self) -> None:
        """Forget the conversation and the texts still waiting."""
        self.context.reset()
        with self._cond:
            self._texts.clear()

    def close(self) -> None:
        """Wake an utterance waiting for host text (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
