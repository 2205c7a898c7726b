"""The UtteranceAssembler without threads: words, dialogue context and face evidence join here."""

from __future__ import annotations

import threading
import time

import numpy as np

from mmer.realtime.assembler import UtteranceAssembler
from mmer.realtime.context import DialogueContext
from mmer.realtime.frames import FaceObservation, Utterance


def utt(i: int, text: str | None = None, start_s: float = 0.0, end_s: float = 1.0) -> Utterance:
    return Utterance(i, start_s, end_s, np.zeros(16, np.float32), text=text)


def test_words_and_host_turns_make_the_context():
    asm = UtteranceAssembler(DialogueContext(max_turns=3), host_texts=4)
    asm.push_turn("robot", "How are you?")
    turns, face = asm.assemble(utt(0, "Fine, thanks."))
    assert [(t.speaker, t.text) for t in turns] == [("robot", "How are you?"), ("user", "Fine, thanks.")]
    assert face is None
    turns, _ = asm.assemble(utt(1, "   "))
    assert turns is None and asm.stats["utterances_without_text"] == 1 and asm.stats["host_turns"] == 1


def test_host_texts_are_bounded_and_taken_once():
    asm = UtteranceAssembler(DialogueContext(), host_texts=2, text_wait_s=0.0)
    for i in range(3):
        asm.push_text(i, f"text {i}", "alice" if i == 2 else None)
    assert asm.stats["host_text_overflows"] == 1  # text 0 was dropped, oldest first
    u0, u2 = utt(0), utt(2)
    asm.take_host_text(u0)
    asm.take_host_text(u2)
    assert u0.text is None and (u2.text, u2.speaker) == ("text 2", "alice")
    again = utt(2)
    asm.take_host_text(again)
    assert again.text is None


def test_a_text_sent_late_is_waited_for_and_close_wakes_the_wait():
    asm = UtteranceAssembler(DialogueContext(), text_wait_s=5.0)
    threading.Timer(0.05, asm.push_text, args=(7, "late words")).start()
    u = utt(7)
    asm.take_host_text(u)
    assert u.text == "late words" and u.timings_ms["text_wait"] < 4000
    threading.Timer(0.05, asm.close).start()
    t0 = time.perf_counter()
    asm.take_host_text(utt(8))
    assert time.perf_counter() - t0 < 2


class _Faces:
    """The two calls the assembler makes of a face path, over fixed observations."""

    def __init__(self, observations):
        self.observations, self.waited = observations, []

    def wait_until(self, t, timeout_s):
        self.waited.append((t, timeout_s))
        return True

    def window(self, start_s, end_s):
        return [o for o in self.observations if start_s <= o.time_s <= end_s]


def test_face_evidence_is_pooled_over_the_utterance_only():
    probs = np.full(7, 1 / 7, np.float32)
    faces = _Faces([FaceObservation(t, (0, 0, 10, 10), probs) for t in (0.5, 1.5, 2.5)]
                   + [FaceObservation(1.7, None, None)])  # a frame without a face
    asm = UtteranceAssembler(DialogueContext(), face_wait_s=0.25)
    u = utt(0, "hi", start_s=1.0, end_s=2.0)
    _, evidence = asm.assemble(u, faces)
    assert faces.waited == [(2.0, 0.25)]
    assert evidence is not None and (evidence.frames, evidence.faces) == (2, 1)
    assert {"face_wait", "face"} <= set(u.timings_ms)
