"""The one MELD dialogue reader (mmer/meld.py): encodings, order, times, and errors that name file/line/column."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mmer.errors import EXIT_USAGE, UsageError, exit_code_of
from mmer.meld import MeldFormatError, MeldRow, parse_time_s, read_meld_csv

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
DEV_DIALOGUES, DEV_UTTERANCES = 114, 1109   # MELD dev_sent_emo.csv


def write(tmp_path: Path, *lines: str | bytes, name: str = "talk.csv") -> Path:
    """A CSV of ``lines`` (str as UTF-8, bytes as they are), CRLF-terminated like MELD's."""
    path = tmp_path / name
    path.write_bytes(b"\r\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines) + b"\r\n")
    return path


def row(n: int, text: str, d: str = "0", u: str = "0", start: str = "00:00:01,000", end: str = "00:00:02,500",
        speaker: str = "Joey") -> str:
    return f'{n},"{text}",{speaker},joy,positive,{d},{u},1,1,"{start}","{end}"'


def test_utf8_file_in_dialogue_and_utterance_order(tmp_path):
    path = write(tmp_path, "\ufeff" + HEADER,
                 row(1, "Second, in dialogue 1.", d="1", u="1"),
                 row(2, "It\u2019s dialogue 0\u2026", d="0", u="0", speaker="Rachel"),
                 row(3, "First of dialogue 1.", d="1", u="0", start="01:02:03,004", end="01:02:05,000"))
    dialogues = read_meld_csv(path)
    assert [d.dialogue_id for d in dialogues] == [0, 1]
    assert [r.utterance_id for r in dialogues[1].rows] == [0, 1]
    assert dialogues[0].rows[0] == MeldRow(0, 0, "Rachel", "It's dialogue 0...", "joy", "positive", 1.0, 2.5, line=3)
    first = dialogues[1].rows[0]
    assert first.text == "First of dialogue 1." and first.start_s == pytest.approx(3723.004) and first.line == 4
    assert first.duration_s == pytest.approx(1.996)
    assert read_meld_csv(path, ascii_punctuation=False)[0].rows[0].text == "It\u2019s dialogue 0\u2026"


def test_only_the_four_columns_needed_and_multiline_cells_keep_line_numbers(tmp_path):
    path = write(tmp_path, "Utterance,Speaker,Dialogue_ID,Utterance_ID",
                 '"two\nlines",Ross,0,0', "after it,Ross,0,1", "", "bad,Ross,0,x")
    with pytest.raises(MeldFormatError) as e:
        read_meld_csv(path)
    assert e.value.line == 6 and e.value.column == "Utterance_ID"  # the quoted cell spans lines 2-3, line 5 is blank
    path = write(tmp_path, "Utterance,Speaker,Dialogue_ID,Utterance_ID", '"two\nlines",Ross,0,0', "after it,Ross,0,1")
    rows = read_meld_csv(path)[0].rows
    assert [(r.text, r.line) for r in rows] == [("two lines", 2), ("after it", 4)]
    assert rows[0].emotion is None and rows[0].start_s is None and rows[0].duration_s == 0.0


def test_stray_cp1252_byte_is_read_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, HEADER, row(1, "It\u2019s fine", u="0").encode("utf-8"),
                 row(2, "caf\u00e9 au lait", u="1").encode("cp1252"))  # 0xe9: not UTF-8
    with caplog.at_level(logging.WARNING, logger="mmer.meld"):
        rows = read_meld_csv(path)[0].rows
    assert [r.text for r in rows] == ["It's fine", "caf\u00e9 au lait"]
    warning, = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning.getMessage() and "cp1252" in warning.getMessage() and "(3)" in warning.getMessage()


def test_mojibake_is_repaired(tmp_path):
    path = write(tmp_path, HEADER, row(1, "he\u00e2\u20ac\u2122s here", u="0"), row(2, "caf\u00c3\u00a9", u="1"))
    assert [r.text for r in read_meld_csv(path, ascii_punctuation=False)[0].rows] == ["he\u2019s here", "caf\u00e9"]


@pytest.mark.parametrize("cells, line, column, value, fix", [
    ({"start": "1:2"}, 3, "StartTime", "1:2", "hh:mm:ss,mmm"),
    ({"end": "00:00:61,000"}, 3, "EndTime", "00:00:61,000", "00:20:57,256"),
    ({"u": "x"}, 3, "Utterance_ID", "x", "0, 1, 2"),
    ({"d": "-1"}, 3, "Dialogue_ID", "-1", "0, 1, 2"),
    ({"u": "0"}, 3, "Utterance_ID", "0", "its own Utterance_ID"),   # repeats line 2's (0, 0)
])
def test_malformed_cell_names_file_line_column_value_and_fix(tmp_path, cells, line, column, value, fix):
    path = write(tmp_path, HEADER, row(1, "fine", u="0"), row(2, "broken", **{"u": "1", **cells}))
    with pytest.raises(MeldFormatError) as e:
        read_meld_csv(path)
    err = e.value
    assert (err.path, err.line, err.column, err.value) == (path, line, column, value)
    message = str(err)
    assert str(path) in message and f"line {line}" in message and column in message and repr(value) in message
    assert fix in message
    assert isinstance(err, UsageError) and isinstance(err, ValueError) and exit_code_of(err) == EXIT_USAGE


def test_missing_column_names_it_and_the_expected_ones(tmp_path):
    path = write(tmp_path, "Utterance,Speaker,Dialogue_ID", "hi,Joey,0")
    with pytest.raises(MeldFormatError) as e:
        read_meld_csv(path)
    assert e.value.line == 1 and "['Utterance_ID']" in str(e.value) and str(path) in str(e.value)
    assert "['Dialogue_ID', 'Utterance_ID', 'Speaker', 'Utterance']" in str(e.value)
    with pytest.raises(MeldFormatError, match=r"\['Emotion'\]"):
        read_meld_csv(write(tmp_path, "Utterance,Speaker,Dialogue_ID,Utterance_ID", "hi,Joey,0,0"), required=["Emotion"])


def test_lines_with_too_many_or_too_few_cells(tmp_path):
    unquoted = '1,Oh, no,Joey,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"'   # a comma in unquoted text
    with pytest.raises(MeldFormatError, match="one cell too many") as e:
        read_meld_csv(write(tmp_path, HEADER, unquoted))
    assert e.value.line == 2 and 'quote cells that hold commas' in str(e.value)
    with pytest.raises(MeldFormatError, match="has no cell") as e:
        read_meld_csv(write(tmp_path, HEADER, "1,hi,Joey,joy,positive,0,0"))
    assert e.value.line == 2 and e.value.column == "Season"
    trailing = row(1, "a trailing empty cell is fine") + ","
    assert read_meld_csv(write(tmp_path, HEADER, trailing))[0].rows[0].text == "a trailing empty cell is fine"


def test_unreadable_file_is_a_usage_error(tmp_path):
    with pytest.raises(MeldFormatError, match="cannot be read"):
        read_meld_csv(tmp_path / "nowhere.csv")


def test_time_parsing():
    assert parse_time_s("00:16:16,059") == pytest.approx(976.059)
    assert parse_time_s(" 1:02:03.5 ") == pytest.approx(3723.5)
    assert parse_time_s("00:00:07") == 7.0
    for bad in ("1:2", "", "00:16:16,", "aa:bb:cc,ddd", "00:60:00,000"):
        with pytest.raises(ValueError, match="hh:mm:ss,mmm"):
            parse_time_s(bad)


def test_real_dev_csv(shared_dir):
    path = shared_dir / "data" / "MELD" / "dev_sent_emo.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    dialogues = read_meld_csv(path)
    assert len(dialogues) == DEV_DIALOGUES and sum(len(d.rows) for d in dialogues) == DEV_UTTERANCES
    first = dialogues[0].rows[0]
    assert (first.speaker, first.text, first.emotion) == ("Phoebe", "Oh my God, he's lost it. He's totally lost it.",
                                                           "sadness")
    assert first.start_s == pytest.approx(1257.256) and first.end_s == pytest.approx(1260.049)
    assert all(r.start_s is not None and r.end_s is not None for d in dialogues for r in d.rows)
