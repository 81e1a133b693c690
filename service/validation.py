"""Validation at the edge: the ML core's frozen dataclass configs, and the one policy for names.

``strict(WiseConfig)`` is a pydantic dataclass *subclass* of the core's class that refuses unknown
keys; its instances are still ``WiseConfig`` instances, and the core's own ``__post_init__``
checks run inside pydantic validation, so their errors come back as 422s naming the field.

``Name`` (a pydantic annotated type), ``name_key`` and ``distinct`` are the name policy; see
"Names" in docs/reference/endpoints.md.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import pydantic.dataclasses
from pydantic import BeforeValidator, ConfigDict

T = TypeVar("T")


@functools.cache
def strict(cls: type[T]) -> type[T]:
    wrapped: Any = pydantic.dataclasses.dataclass(config=ConfigDict(extra="forbid"), frozen=True)
    return wrapped(type(cls.__name__, (cls,), {"__doc__": cls.__doc__}))


# --- names: one policy for every name the API accepts ---
#
# A name is stored in Unicode NFC, so the two ways to type "café" (one code point for "é", or
# "e" and a combining accent) are one name. Characters that draw nothing or reorder what is
# drawn are refused rather than removed: a client that sent one did not mean the name that
# would remain. Two names that look the same are one name: ``name_key`` folds case, lookalike
# letters and the characters that only change how a glyph is drawn, and uniqueness and lookups
# compare keys while responses show the spelling first stored.

# Control (NUL, escapes), format (zero-width spaces and joiners, bidi embeddings, overrides and
# isolates, the byte-order mark, tags), lone surrogates (no encoder writes them) and line or
# paragraph separators.
REFUSED_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Letters and marks of other categories that draw nothing: the combining grapheme joiner, the
# Hangul fillers, the Khmer inherent vowels, the Braille blank.
INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
ZWJ = "\u200d"
# Texts (descriptions) are prose: they may hold tabs and line breaks.
TEXT_WHITESPACE = frozenset("\t\n\r")

# Cyrillic and Greek letters drawn as a Latin one (Unicode's confusables.txt, letters only),
# keyed by the form that looks Latin: folded before case, so "Н" (looks like "H") and "н"
# (does not) both become "h", which at worst makes two names one, never one name two. ASCII
# lookalikes ("rn" and "m", "l" and "1") are left alone: the registry's names are ASCII.
_LATIN_LOOKALIKES = {
    **dict(zip("АВЕКМНОРСТУХЅІЈҺӀҮԚԜ", "ABEKMHOPCTYXSIJHIYQW", strict=True)),
    **dict(zip("аеорсухѕіјһӏүԁԛԝ", "aeopcyxsijhlydqw", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹϿ", "ABEZHIKMNOPTYXCJ", strict=True)),
    **dict(zip("αιονρυγϲϳ", "aiovpuycj", strict=True)),
}
# Spaces all fold to one; joiners and variation selectors only change how a glyph is drawn.
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
_SPACES += "\u202f\u205f\u3000"
_KEY_FOLD: dict[int, str | None] = {
    **{ord(k): v for k, v in _LATIN_LOOKALIKES.items()},
    **{ord(space): " " for space in _SPACES},
    ord(ZWJ): None,
    **{code: None for code in range(0xFE00, 0xFE10)},
}


def code_point(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: how an error names a character it cannot show."""
    return f"U+{ord(char):04X} ({unicodedata.name(char, '') or 'a control character'})"


def spelled(name: str) -> str:
    """A name quoted, with its code points escaped when it is not plain ASCII: two spellings
    that differ only in normalisation print the same, and an error must tell them apart."""
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)[1:-1]})"


def name_key(name: str) -> str:
    """What two names must differ in to be two names: the NFC form, lookalike letters folded
    to Latin, one kind of space, case folded. The database keeps it unique."""
    text = unicodedata.normalize("NFD", name.strip()).translate(_KEY_FOLD)
    return unicodedata.normalize("NFC", text.casefold())


def clean_name(value: str) -> str:
    """``value`` in NFC without surrounding spaces; a ValueError naming the first character no
    name may hold."""
    text = unicodedata.normalize("NFC", value).strip()
    for i, char in enumerate(text):
        if _invisible(text, i):
            raise ValueError(
                f"holds {code_point(char)} at position {i}: a name may not hold control, "
                "format (zero-width, bidi), separator or invisible characters"
            )
    return text


def clean_text(value: str) -> str:
    """A description's text in NFC; a ValueError naming a control or format character (tabs
    and line breaks are prose, and allowed)."""
    text = unicodedata.normalize("NFC", value)
    for i, char in enumerate(text):
        if char not in TEXT_WHITESPACE and _invisible(text, i) and char not in INVISIBLE:
            raise ValueError(
                f"holds {code_point(char)} at position {i}: a text may not hold control or "
                "format (zero-width, bidi) characters"
            )
    return text


def distinct(names: Iterable[str], what: str) -> None:
    """A ValueError naming the first two of ``names`` that are one name (``name_key``)."""
    seen: dict[str, str] = {}
    for name in names:
        key = name_key(name)
        if key in seen:
            raise ValueError(
                f"{what} {spelled(seen[key])} and {spelled(name)} are the same name (names that "
                "differ only in case, Unicode normalisation or lookalike letters are one name)"
            )
        seen[key] = name


def _invisible(text: str, i: int) -> bool:
    char = text[i]
    if char == ZWJ and _joins_emoji(text, i):
        return False
    return unicodedata.category(char) in REFUSED_IN_NAMES or char in INVISIBLE


def _joins_emoji(text: str, i: int) -> bool:
    # An emoji sequence (a woman and a microscope: one scientist) is joined by U+200D; between
    # two symbols it draws a glyph, elsewhere it draws nothing.
    before, after = text[i - 1 : i], text[i + 1 : i + 2]
    return (
        bool(before and after)
        and unicodedata.category(after) == "So"
        and unicodedata.category(before) in {"So", "Sk", "Mn"}
    )


def _before(clean: Callable[[str], str]) -> BeforeValidator:
    # Before the field's own constraints: a pattern's "should match" would hide which
    # character was refused, and a length counts the normalised form.
    return BeforeValidator(lambda value: clean(value) if isinstance(value, str) else value)


# A name (of a model, a description set, a dataset, a class): NFC, nothing invisible. Field
# constraints (pattern, length) apply to the cleaned value.
Name = Annotated[str, _before(clean_name)]
