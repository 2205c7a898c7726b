"""MELD-style dialogue CSVs (Poria et al., ACL 2019): the one reader behind training, export samples and mmer-predict.

A MELD CSV holds one utterance a line::

    Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime
    1,"Oh my God, he's lost it.",Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"

:func:`read_meld_csv` needs ``Dialogue_ID``, ``Utterance_ID``, ``Speaker`` and ``Utterance``;
``Emotion``, ``Sentiment``, ``StartTime`` and ``EndTime`` are read when present. It returns the
dialogues in ``Dialogue_ID`` order, each with its rows in ``Utterance_ID`` order (not file order).

Text is read as the MELD text models were trained on it: UTF-8 (BOM stripped), a line that is
not valid UTF-8 read as cp1252 (a stray 0x92 or 0xe9 byte, as Windows exports write them; a
warning names the file), UTF-8 mojibake repaired ("â€™" -> "’", "Ã©" -> "é"), typographic
punctuation made ASCII (optional), spaces collapsed. A malformed cell raises
:class:`MeldFormatError` naming the file, line, column, value and the fix.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmer.errors import UsageError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance")
OPTIONAL_COLUMNS = ("Emotion", "Sentiment", "StartTime", "EndTime")
TIME_FORMAT = "hh:mm:ss,mmm"
_TIME = re.compile(r"(\d+):([0-5]?\d):([0-5]?\d)(?:[,.](\d+))?")
_ID = re.compile(r"[0-9]+")
_MAX_SHOWN_LINES = 5   # line numbers listed in the cp1252 warning
_CELLS_FIX = 'quote cells that hold commas ("..."), and give every line one cell per header column'

# cp1252 reading of the bytes 0x80-0x9F; 0x81 0x8D 0x8F 0x90 0x9D are undefined there and
# mis-decoders keep them as the C1 controls U+0081... (latin-1), so both count.
_CP1252_HIGH = bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")
_CONT = "[" + re.escape(_CP1252_HIGH) + "\x81\x8d\x8f\x90\x9d\u00a0-\u00bf]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")
ASCII_PUNCTUATION = {  # what speech recognisers write, so training text looks like live text
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
    "\u2013": "-", "\u2014": "-", "\u00a0": " ",
}
_ASCII_TABLE = str.maketrans(ASCII_PUNCTUATION)


class MeldFormatError(UsageError):
    """A MELD CSV that cannot be read as one: ``path``, ``line`` (1 = the header), ``column`` and
    ``value`` say where (``None`` where it is the whole file or line); the message names the fix."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, value: str | None,
                 problem: str, fix: str) -> None:
        self.path, self.line, self.column, self.value = Path(path), line, column, value
        where = str(path) + (f", line {line}" if line is not None else "") + (f", column {column}" if column else "")
        what = f"{value!r} {problem}" if value is not None else problem
        super().__init__(f"{where}: {what}; {fix}")


@dataclass(frozen=True)
class MeldRow:
    """One utterance. ``emotion``/``sentiment`` are ``None`` when the file has no such column (else
    the cell as written, stripped); ``start_s``/``end_s`` ``None`` when the column or cell is empty.
    ``line`` is the file line the row starts on (1 = the header)."""

    dialogue_id: int
    utterance_id: int
    speaker: str
    text: str
    emotion: str | None = None
    sentiment: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    line: int = 0

    @property
    def duration_s(self) -> float:
        """``end_s - start_s`` (0.0 when a time is unknown or the span is negative)."""
        if self.start_s is None or self.end_s is None:
            return 0.0
        return max(0.0, self.end_s - self.start_s)


@dataclass(frozen=True)
class MeldDialogue:
    """One dialogue: its ``Dialogue_ID`` and its rows in ``Utterance_ID`` order."""

    dialogue_id: int
    rows: tuple[MeldRow, ...]


def _to_bytes(chars: str) -> bytes:
    """Invert a cp1252 (latin-1 for its holes) decoding of ``chars``."""
    out = bytearray()
    for ch in chars:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            out += ch.encode("latin-1")  # U+0081 etc.; raises for anything else, caught by the caller
    return bytes(out)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252: "â€™" -> "’", "Ã©" -> "é".

    Only runs that form a valid UTF-8 sequence when turned back into bytes are replaced, so
    genuine accented text ("café", "naïve") is left alone. Repeats for double mis-decoding.
    """
    def repair(m: re.Match) -> str:
        try:
            return _to_bytes(m.group(0)).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return m.group(0)

    for _ in range(2):
        fixed = _MOJIBAKE.sub(repair, text)
        if fixed == text:
            break
        text = fixed
    return text


def clean_text(text: str, ascii_punctuation: bool = True) -> str:
    """Mojibake repaired, typographic punctuation made ASCII (optional), spaces collapsed."""
    text = fix_mojibake(text)
    if ascii_punctuation:
        text = text.translate(_ASCII_TABLE)
    return " ".join(text.split())


def parse_time_s(stamp: str) -> float:
    """MELD's 'hh:mm:ss,mmm' (or '.mmm', or no fraction) -> seconds: '00:16:16,059' -> 976.059.

    Raises ValueError for anything else ("1:2", "00:61:00,000").
    """
    m = _TIME.fullmatch(stamp.strip())
    if m is None:
        raise ValueError(f"{stamp!r} is not a time as {TIME_FORMAT}")
    hours, minutes, seconds, fraction = m.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(f"{seconds}.{fraction or 0}")


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 (BOM stripped); a line that is not valid UTF-8 is read as cp1252 (stray 0x92 etc.), with a warning."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines, fallback = [], []
    for number, line in enumerate(raw.split(b"\n"), 1):  # 0x0A never occurs inside a UTF-8 multibyte sequence
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("cp1252", errors="replace"))
            fallback.append(number)
    shown = ", ".join(map(str, fallback[:_MAX_SHOWN_LINES])) + (", ..." if len(fallback) > _MAX_SHOWN_LINES else "")
    log.warning("%s is not valid UTF-8 on %d line(s) (%s); read those lines as cp1252. Save the file as UTF-8 "
                "to silence this.", path, len(fallback), shown)
    return "\n".join(lines)


def read_meld_csv(path: str | Path, ascii_punctuation: bool = True, required: Iterable[str] = ()
                  ) -> list[MeldDialogue]:
    """Every dialogue of a MELD-style CSV, in ``Dialogue_ID`` order, rows in ``Utterance_ID`` order.

    Args:
        path: the CSV file.
        ascii_punctuation: write ’ “ … — as ' " ... - (as speech recognisers do, and as the MELD
            text models were trained).
        required: columns needed beyond :data:`REQUIRED_COLUMNS` (e.g. the label column).

    Raises:
        MeldFormatError: the file cannot be read, a needed column is missing, a row has more or
            fewer cells than the header, an id is not a whole number, a time is not
            'hh:mm:ss,mmm', or a (Dialogue_ID, Utterance_ID) pair repeats.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MeldFormatError(path, None, None, None, f"cannot be read ({e.strerror or e})",
                              "pass the path of a MELD-style CSV file") from e
    reader = csv.reader(io.StringIO(_decode(path, raw), newline=""))
    header = [name.strip() for name in next(reader, [])]
    needed = list(dict.fromkeys([*REQUIRED_COLUMNS, *required]))
    missing = [c for c in needed if c not in header]
    if missing:
        raise MeldFormatError(path, 1, None, None, f"column(s) {missing} missing from the header (it has {header})",
                              f"a MELD CSV needs the columns {needed}; {list(OPTIONAL_COLUMNS)} are read when present")
    at = {name: header.index(name) for name in (*needed, *OPTIONAL_COLUMNS) if name in header}

    def bad(line: int, column: str, value: str, problem: str, fix: str) -> MeldFormatError:
        return MeldFormatError(path, line, column, value, problem, fix)

    def whole_number(cells: list[str], line: int, column: str) -> int:
        value = cells[at[column]].strip()
        if not _ID.fullmatch(value):
            raise bad(line, column, value, "is not a whole number", f"write {column} as 0, 1, 2, ...")
        return int(value)

    def time_s(cells: list[str], line: int, column: str) -> float | None:
        if column not in at or not cells[at[column]].strip():
            return None
        value = cells[at[column]].strip()
        try:
            return parse_time_s(value)
        except ValueError:
            raise bad(line, column, value, f"is not a time as {TIME_FORMAT}",
                      f"write times like '00:20:57,256' or leave the {column} cell empty") from None

    def label(cells: list[str], column: str) -> str | None:
        return cells[at[column]].strip() if column in at else None

    dialogues: dict[int, dict[int, MeldRow]] = {}
    line = reader.line_num  # the last line read; a record starts on the next one
    for cells in reader:
        start, line = line + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) < len(header):
            raise MeldFormatError(path, start, header[len(cells)], None, f"has no cell: the line ends after "
                                  f"{cells[-1]!r} ({len(cells)} cells, the header has {len(header)})", _CELLS_FIX)
        extra = [c for c in cells[len(header):] if c.strip()]
        if extra:
            raise bad(start, f"#{len(header) + 1} (past the header's {len(header)})", extra[0],
                      f"is one cell too many ({len(cells)} cells, the header has {len(header)})", _CELLS_FIX)
        d = whole_number(cells, start, "Dialogue_ID")
        u = whole_number(cells, start, "Utterance_ID")
        utterances = dialogues.setdefault(d, {})
        if u in utterances:
            raise bad(start, "Utterance_ID", str(u), f"repeats dialogue {d}'s utterance (first on line "
                      f"{utterances[u].line})", "give each utterance of a dialogue its own Utterance_ID")
        utterances[u] = MeldRow(
            dialogue_id=d, utterance_id=u,
            speaker=clean_text(cells[at["Speaker"]], ascii_punctuation),
            text=clean_text(cells[at["Utterance"]], ascii_punctuation),
            emotion=label(cells, "Emotion"), sentiment=label(cells, "Sentiment"),
            start_s=time_s(cells, start, "StartTime"), end_s=time_s(cells, start, "EndTime"), line=start)
    return [MeldDialogue(d, tuple(utterances[u] for u in sorted(utterances)))
            for d, utterances in sorted(dialogues.items())]
