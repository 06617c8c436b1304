"""Text as the word list reads it: case, look-alike characters, leetspeak, stretched letters and
spaced-out words undone, one token at a time, each token keeping its span in the original text
(so redaction masks exactly what was written)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Digits and symbols written for letters. Each maps to one letter, so a token's length is kept.
LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
        "+": "t",
    }
)
# Inside a word: marks that hide letters ("f*ck", "sh#t") match any one letter.
WILDCARDS = "*#%?"
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2060-\u2064\ufeff\u00ad\u202a-\u202e\u2066-\u2069]")
_TOKEN = re.compile(r"[^\s]+")
_EDGE = re.compile(r"^[^\w@$*#%?!|+]+|[^\w@$*#%?!|+]+$")
_STRETCH = re.compile(r"(\w)\1{2,}")  # "fuuuuck" -> "fuck": three or more of a letter are one


@dataclass(frozen=True)
class Token:
    text: str  # as the word list reads it
    start: int  # its span in the original text
    end: int


def fold(text: str) -> str:
    """Case, width and accents folded, invisible characters removed (the same length is not kept)."""
    text = unicodedata.normalize("NFKD", _INVISIBLE.sub("", text)).replace("\u2019", "'")
    return "".join(c for c in text if not unicodedata.combining(c)).casefold()


def tokens(text: str) -> list[Token]:
    """The words of ``text``, normalised, with their spans; runs of single letters separated by
    spaces, dots or dashes ("f u c k", "f.u.c.k") are joined into one token."""
    found = []
    for m in _TOKEN.finditer(text):
        word = m.group()
        stripped = _EDGE.sub("", word)
        if not stripped:
            continue
        offset = m.start() + word.index(stripped)
        spelled = _spelled_out(stripped)
        if spelled is not None:
            found.append(Token(spelled, offset, offset + len(stripped)))
            continue
        found.append(Token(_letters(stripped), offset, offset + len(stripped)))
    return _join_single_letters(found, text)


def _letters(word: str) -> str:
    folded = fold(word)
    if any(c.isalpha() for c in folded):  # "4" alone is a number, "h4te" a word
        folded = folded.translate(LEET)
    return _STRETCH.sub(r"\1", folded)


def _spelled_out(word: str) -> str | None:
    """ "f.u.c.k" or "f-u-c-k": one letter between each separator."""
    parts = re.split(r"[.\-_]", word)
    if len(parts) >= 3 and all(len(p) == 1 for p in parts):
        return _letters("".join(parts))
    return None


def _join_single_letters(found: list[Token], text: str) -> list[Token]:
    out: list[Token] = []
    run: list[Token] = []

    def flush() -> None:
        if len(run) >= 3:
            out.append(Token("".join(t.text for t in run), run[0].start, run[-1].end))
        else:
            out.extend(run)
        run.clear()

    for token in found:
        single = len(token.text) == 1 and token.end - token.start == 1
        if single and (not run or text[run[-1].end : token.start].strip() == ""):
            run.append(token)
            continue
        flush()
        if single:
            run.append(token)
        else:
            out.append(token)
    flush()
    return out


def squeeze(word: str) -> str:
    """Doubled letters made single ("fuuck" -> "fuck"): a second form to look up."""
    return re.sub(r"(\w)\1", r"\1", word)
