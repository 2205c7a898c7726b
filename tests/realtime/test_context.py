"""The rolling dialogue context: bounds by turns and tokens, host turns, reset, thread safety."""

from __future__ import annotations

import threading

import pytest

from mmer.dialogue import Turn
from mmer.realtime.context import DialogueContext, count_words


def test_keeps_the_last_turns_in_order_with_speakers():
    ctx = DialogueContext(max_turns=3, max_tokens=1000)
    ctx.add_user_turn("hello there", utterance_id=0)
    ctx.push_turn("robot", "Hi! How can I help?")
    ctx.add_user_turn("I lost my keys", utterance_id=1)
    ctx.push_turn("robot", "Oh no.")
    assert ctx.turns() == [Turn("robot", "Hi! How can I help?"), Turn("user", "I lost my keys"),
                           Turn("robot", "Oh no.")]
    entries = ctx.entries()
    assert [e.origin for e in entries] == ["host", "user", "host"]
    assert entries[1].utterance_id == 1 and entries[0].utterance_id is None
    assert ctx.num_tokens == sum(count_words(t.text) for t in ctx.turns())


def test_token_budget_drops_oldest_but_keeps_the_newest_turn():
    ctx = DialogueContext(max_turns=10, max_tokens=5)
    ctx.add_user_turn("one two three")
    ctx.add_user_turn("four five")
    assert len(ctx) == 2 and ctx.num_tokens == 5
    ctx.add_user_turn("six")
    assert [t.text for t in ctx.turns()] == ["four five", "six"]
    ctx.add_user_turn("a very long turn of many more words than the budget")
    assert [t.text for t in ctx.turns()] == ["a very long turn of many more words than the budget"]
    assert ctx.num_tokens == 11


def test_turn_bound_keeps_token_count_exact():
    ctx = DialogueContext(max_turns=2, max_tokens=100)
    for i in range(5):
        ctx.add_user_turn(" ".join(["w"] * (i + 1)))
    assert [count_words(t.text) for t in ctx.turns()] == [4, 5]
    assert ctx.num_tokens == 9


def test_custom_token_counter_and_reset():
    ctx = DialogueContext(max_turns=5, max_tokens=10, count_tokens=len)  # characters as tokens
    ctx.push_turn("robot", "abcdef")
    ctx.add_user_turn("ghijkl")
    assert [t.text for t in ctx.turns()] == ["ghijkl"]
    ctx.reset()
    assert ctx.turns() == [] and ctx.num_tokens == 0 and len(ctx) == 0


def test_texts_are_stripped_and_invalid_bounds_refused():
    ctx = DialogueContext()
    assert ctx.add_user_turn("  hi  ", speaker="alex") == Turn("alex", "hi")
    with pytest.raises(ValueError):
        DialogueContext(max_turns=0)


def test_concurrent_writers_keep_the_bounds():
    ctx = DialogueContext(max_turns=50, max_tokens=60)

    def write(kind: str) -> None:
        for i in range(300):
            if kind == "host":
                ctx.push_turn("robot", "one two")
            else:
                ctx.add_user_turn("three four five", utterance_id=i)

    threads = [threading.Thread(target=write, args=(k,)) for k in ("host", "user", "host", "user")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ctx) <= 50
    assert ctx.num_tokens == sum(count_words(t.text) for t in ctx.turns()) <= 60
