"""DialoguePrompt: TelME's speaker-token dialogue + mask prompt (mmer/dialogue.py)."""

from __future__ import annotations

import pytest
import torch

from mmer.dialogue import OTHER_SPEAKER_TOKEN, DialoguePrompt, Turn, add_speaker_tokens, speaker_token_names

MAX_TOKENS = 256
LONG_DIALOGUE_TOKENS = 5000


@pytest.fixture
def bert_tokenizer(tiny_text_encoder_dir):
    """A fresh tokenizer per test: DialoguePrompt adds speaker tokens to it in place."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_text_encoder_dir), local_files_only=True)


@pytest.fixture
def roberta_tokenizer(tiny_roberta_encoder_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_roberta_encoder_dir), local_files_only=True)


@pytest.fixture
def meld_dialogues(meld_train_dialogues) -> dict[int, list[Turn]]:
    return {d.dialogue_id: [Turn(r.speaker, r.text) for r in d.rows] for d in meld_train_dialogues}


def speaker_ids_in(encoding: dict, prompt: DialoguePrompt) -> list[str]:
    """Speaker tokens of ``input_ids`` in order (context and prompt)."""
    by_id = {v: k for k, v in prompt.speaker_ids.items()}
    return [by_id[i] for i in encoding["input_ids"] if i in by_id]


def assert_prompt_tail(encoding: dict, prompt: DialoguePrompt, tokenizer, target_token: str) -> None:
    """The encoding ends with ``[SEP] now <s_k> feels [MASK] [SEP]`` and the mask is where it says."""
    ids = encoding["input_ids"]
    assert ids[0] == tokenizer.cls_token_id
    tail = [tokenizer.sep_token_id, *tokenizer.encode(" now", add_special_tokens=False),
            prompt.speaker_ids[target_token], *tokenizer.encode(" feels", add_special_tokens=False),
            tokenizer.mask_token_id, tokenizer.sep_token_id]
    assert ids[-len(tail):] == tail
    assert encoding["mask_index"] == len(ids) - 2
    assert ids.count(tokenizer.mask_token_id) == 1


def test_speakers_numbered_by_first_appearance(bert_tokenizer):
    prompt = DialoguePrompt(bert_tokenizer)
    turns = [Turn("Ross", "hi"), Turn("Rachel", "hello"), Turn("Ross", "how are you"), Turn("Monica", "fine"),
             Turn("Rachel", "good")]
    enc = prompt.encode(turns)
    assert enc["speakers"] == {"Ross": "<s1>", "Rachel": "<s2>", "Monica": "<s3>"}
    # context speakers, then the target's token inside the prompt
    assert speaker_ids_in(enc, prompt) == ["<s1>", "<s2>", "<s1>", "<s3>", "<s2>", "<s2>"]
    assert_prompt_tail(enc, prompt, bert_tokenizer, "<s2>")


def test_matches_tokenising_the_joined_telme_string(bert_tokenizer, roberta_tokenizer):
    """Per-utterance tokenisation gives the ids of tokenising TelME's whole input string.

    The string has no space before special tokens: TelME's own string does, and byte-level BPE
    turns each such space into a stray 'Ġ' token, which mmer deliberately does not reproduce.
    """
    turns = [Turn("Joey", "How you doin'?"), Turn("Phoebe", "Oh... I'm fine, thanks!"),
             Turn("Joey", "Great, great.")]
    for tok in (bert_tokenizer, roberta_tokenizer):
        prompt = DialoguePrompt(tok)
        enc = prompt.encode(turns)
        joined = (f"{tok.cls_token}<s1> How you doin'?<s2> Oh... I'm fine, thanks!<s1> Great, great."
                  f"{tok.sep_token} Now<s1> feels{tok.mask_token}{tok.sep_token}")
        assert enc["input_ids"] == tok.encode(joined, add_special_tokens=False), type(tok).__name__


def test_roberta_style_separator_and_mask(roberta_tokenizer):
    tok = roberta_tokenizer
    assert (tok.cls_token, tok.sep_token, tok.mask_token) == ("<s>", "</s>", "<mask>")
    prompt = DialoguePrompt(tok)
    enc = prompt.encode([Turn("A", "I can't believe it!"), Turn("B", "Me neither.")])
    ids = enc["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<s>")
    assert ids[enc["mask_index"]] == tok.convert_tokens_to_ids("<mask>")
    assert ids.count(tok.convert_tokens_to_ids("</s>")) == 2
    text = prompt.decode(enc)
    assert text.startswith("<s><s1>") and text.endswith("<mask></s>")
    assert "</s> Now<s2> feels<mask>" in text  # <mask> strips the space before it


def test_more_speakers_than_tokens(bert_tokenizer):
    prompt = DialoguePrompt(bert_tokenizer, num_speaker_tokens=9)
    names = [f"P{i}" for i in range(12)]
    turns = [Turn(n, f"line {i}") for i, n in enumerate(names)]

    # target is the 12th speaker: the first 8 get <s1>..<s8>, the target <s9>, the rest share <s_other>
    enc = prompt.encode(turns)
    expected = {n: f"<s{i + 1}>" for i, n in enumerate(names[:8])}
    expected.update({n: OTHER_SPEAKER_TOKEN for n in names[8:11]})
    expected["P11"] = "<s9>"
    assert enc["speakers"] == expected
    assert_prompt_tail(enc, prompt, bert_tokenizer, "<s9>")
    assert speaker_ids_in(enc, prompt).count(OTHER_SPEAKER_TOKEN) == 3

    # target among the first nine: plain first-appearance order
    enc = prompt.encode(turns + [Turn("P2", "again")])
    assert enc["speakers"]["P2"] == "<s3>" and enc["speakers"]["P8"] == "<s9>"
    assert all(enc["speakers"][n] == OTHER_SPEAKER_TOKEN for n in names[9:])
    assert_prompt_tail(enc, prompt, bert_tokenizer, "<s3>")


def test_speakers_counted_within_surviving_window(bert_tokenizer):
    turns = [Turn("Old", "word " * 60), Turn("Ann", "yes"), Turn("Bob", "no")]
    # room for [CLS] <s> yes <s> no [SEP] prompt [SEP] plus one token: too little for a cut turn
    prompt_length = DialoguePrompt(bert_tokenizer).prompt_length
    prompt = DialoguePrompt(bert_tokenizer, max_tokens=3 + prompt_length + 4 + 1)
    enc = prompt.encode(turns)
    assert enc["speakers"] == {"Ann": "<s1>", "Bob": "<s2>"}
    assert len(enc["input_ids"]) == prompt.max_tokens - 1
    # one more token of room keeps the old turn's tail with its own speaker token, numbered first
    enc = DialoguePrompt(bert_tokenizer, max_tokens=prompt.max_tokens + 1).encode(turns)
    assert enc["speakers"] == {"Old": "<s1>", "Ann": "<s2>", "Bob": "<s3>"}


def test_mask_survives_left_truncation_of_5000_tokens(bert_tokenizer, meld_dialogues):
    prompt = DialoguePrompt(bert_tokenizer, max_tokens=MAX_TOKENS)
    pool = [t for d in meld_dialogues.values() for t in d]
    turns, total = [], 0
    while total < LONG_DIALOGUE_TOKENS:
        turn = pool[len(turns)]
        turns.append(turn)
        total += 1 + len(bert_tokenizer.encode(turn.text, add_special_tokens=False))
    enc = prompt.encode(turns)
    assert len(enc["input_ids"]) <= MAX_TOKENS
    assert len(enc["input_ids"]) > MAX_TOKENS - 30  # truncation fills the budget
    target_token = enc["speakers"][turns[-1].speaker]
    assert target_token != OTHER_SPEAKER_TOKEN
    assert_prompt_tail(enc, prompt, bert_tokenizer, target_token)
    # the whole target utterance survives right before the separator, after its speaker token
    target_ids = bert_tokenizer.encode(turns[-1].text, add_special_tokens=False)
    sep = enc["input_ids"].index(bert_tokenizer.sep_token_id)
    assert enc["input_ids"][sep - len(target_ids):sep] == target_ids
    assert enc["input_ids"][sep - len(target_ids) - 1] == prompt.speaker_ids[target_token]
    # the oldest kept turn was cut from its left but keeps its speaker token
    assert enc["input_ids"][1] in prompt.speaker_ids.values()


def test_overlong_target_is_cut_from_its_left(bert_tokenizer):
    prompt = DialoguePrompt(bert_tokenizer, max_tokens=64)
    words = " ".join(f"w{i}" for i in range(500))
    enc = prompt.encode([Turn("A", "earlier"), Turn("B", words + " finally yes")])
    ids = enc["input_ids"]
    assert len(ids) == 64
    assert ids[1] == prompt.speaker_ids["<s1>"]  # B is the only speaker left in the window
    assert enc["speakers"] == {"B": "<s1>"}
    sep = ids.index(bert_tokenizer.sep_token_id)
    assert ids[sep - 2:sep] == bert_tokenizer.encode("finally yes", add_special_tokens=False)
    assert_prompt_tail(enc, prompt, bert_tokenizer, "<s1>")


def test_target_index_ignores_future_turns(bert_tokenizer):
    prompt = DialoguePrompt(bert_tokenizer)
    turns = [Turn("A", "first"), Turn("B", "second"), Turn("C", "third")]
    assert prompt.encode(turns, target=1)["input_ids"] == prompt.encode(turns[:2])["input_ids"]
    assert prompt.encode(turns, target=-2)["input_ids"] == prompt.encode(turns[:2])["input_ids"]
    with pytest.raises(IndexError):
        prompt.encode(turns, target=3)


def test_utterance_cannot_inject_mask_or_speaker_tokens(bert_tokenizer):
    prompt = DialoguePrompt(bert_tokenizer)
    enc = prompt.encode([Turn("A", "type [MASK] and <s5> here [SEP]")])
    assert enc["input_ids"].count(bert_tokenizer.mask_token_id) == 1
    assert speaker_ids_in(enc, prompt) == ["<s1>", "<s1>"]
    assert_prompt_tail(enc, prompt, bert_tokenizer, "<s1>")


def test_each_text_tokenised_once(bert_tokenizer, meld_dialogues):
    prompt = DialoguePrompt(bert_tokenizer)
    dialogue = meld_dialogues[0]
    cached_before = len(prompt._cache)  # the prompt's own words
    for t in range(len(dialogue)):
        prompt.encode(dialogue, t)
    assert len(prompt._cache) == cached_before + len({turn.text for turn in dialogue})


def test_first_meld_dialogue(bert_tokenizer, meld_dialogues):
    prompt = DialoguePrompt(bert_tokenizer)
    dialogue = meld_dialogues[0]
    encodings = [prompt.encode(dialogue, t) for t in range(len(dialogue))]
    lengths = [len(e["input_ids"]) for e in encodings]
    assert lengths == sorted(lengths) and lengths[-1] <= MAX_TOKENS
    assert encodings[-1]["speakers"]["Chandler"] == "<s1>"
    assert encodings[-1]["speakers"]["The Interviewer"] == "<s2>"
    for turn, enc in zip(dialogue, encodings):
        assert_prompt_tail(enc, prompt, bert_tokenizer, enc["speakers"][turn.speaker])

    batch = prompt.collate(encodings)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(dialogue), lengths[-1])
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0]:].eq(bert_tokenizer.pad_token_id).all()
    assert batch["input_ids"][0, :lengths[0]].tolist() == encodings[0]["input_ids"]


def test_add_speaker_tokens_is_idempotent(bert_tokenizer):
    before = len(bert_tokenizer)
    ids = add_speaker_tokens(bert_tokenizer, 4)
    assert len(bert_tokenizer) == before + 5
    assert add_speaker_tokens(bert_tokenizer, 4) == ids
    assert len(bert_tokenizer) == before + 5
    assert bert_tokenizer.convert_ids_to_tokens(ids) == speaker_token_names(4)
    assert speaker_token_names(4)[-1] == OTHER_SPEAKER_TOKEN
    assert set(ids) <= set(bert_tokenizer.all_special_ids)


def test_bad_settings_are_refused(bert_tokenizer):
    with pytest.raises(ValueError, match="no room"):
        DialoguePrompt(bert_tokenizer, max_tokens=6)
    with pytest.raises(ValueError, match="speaker"):
        DialoguePrompt(bert_tokenizer, prompt_template="Now it feels {mask}")
    with pytest.raises(ValueError):
        DialoguePrompt(bert_tokenizer).encode([])
