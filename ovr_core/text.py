"""Text normalisation before any answer rule: Unicode NFKC plus the mappings NFKC lacks.

``normalize`` is applied once to the answer, the gold and the options (``ovr_core.grading``),
so no rule meets a full-width letter, a vulgar fraction or a thin space. NFKC alone already folds
full-width letters and digits (Ｂ → B, ４ → 4), circled letters (Ⓑ → B), ligatures and the
compatibility spaces; what it gets wrong or leaves is fixed here, before or after it:

- superscripts and subscripts: NFKC reads ``x²`` as ``x2`` and ``10⁻³`` as ``10-3``: they become
  ``x^2``, ``10^{-3}``, ``a_1`` first;
- vulgar fractions: NFKC reads ``1½`` as ``11⁄2``: ``½`` becomes ``1/2`` and ``1½`` becomes
  ``(1+1/2)``;
- digits of other scripts (٣, ३, ৩ …: NFKC keeps them) become ASCII digits;
- the minus sign (U+2212) and its look-alikes become ``-``; typographic quotes become straight;
- ``√x`` / ``√{x}`` becomes ``\\sqrt{x}``, ``π`` becomes ``\\pi``, ``∞`` becomes ``\\infty``;
- thousands separators a typesetter writes (``1{,}234``, ``1\\,234``, a thin space) are dropped;
- ``\\mathrm{i}`` / ``\\mathrm{e}`` (the ISO imaginary unit and Euler's number) become ``i``, ``e``.

Capital letters of other scripts that look like option letters (Cyrillic А, Greek Β) are folded
only where an option letter is read (``fold_letter_lookalikes``), never in a formula.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize", "fold_letter_lookalikes"]

_SUPERSCRIPT = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱ", "0123456789+-=()ni", strict=True))
_SUBSCRIPT = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎", "0123456789+-=()", strict=True))
_VULGAR = {
    "½": "1/2",
    "⅓": "1/3",
    "⅔": "2/3",
    "¼": "1/4",
    "¾": "3/4",
    "⅕": "1/5",
    "⅖": "2/5",
    "⅗": "3/5",
    "⅘": "4/5",
    "⅙": "1/6",
    "⅚": "5/6",
    "⅐": "1/7",
    "⅛": "1/8",
    "⅜": "3/8",
    "⅝": "5/8",
    "⅞": "7/8",
    "⅑": "1/9",
    "⅒": "1/10",
}
_AFTER_NFKC = {
    "\u2212": "-",  # minus sign
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # en dash (typeset minus)
    "\ufe63": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2044": "/",  # fraction slash
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u00f7": "/",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u221e": "\\infty ",
    "\u03c0": "\\pi ",
}
_LOOKALIKES = str.maketrans("АВСЕНКМОРТХΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABCEHKMOPTXABEZHIKMNOPTYX")
_SCRIPT = "".join(sorted(set(_SUPERSCRIPT) | set(_SUBSCRIPT)))


def normalize(text: str) -> str:
    """``text`` in one canonical form: NFKC plus the fixes above (idempotent)."""
    text = _scripts_to_latex(str(text))
    text = re.sub(r"(-?)(\d+)\s?([" + "".join(_VULGAR) + "])", _mixed_number, text)
    text = "".join(_VULGAR.get(ch, ch) for ch in text)
    # before NFKC, which turns a thin space into a plain one (a plain space may separate a list)
    text = re.sub(r"(?<=\d)(?:\{,\}|\\,|\\ |\u2009|\u202f)(?=\d{3}(?!\d))", "", text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_AFTER_NFKC.get(ch, ch) for ch in text)
    text = "".join(_ascii_digit(ch) for ch in text)
    text = re.sub(r"√\s*(\{[^{}]*\}|[\d.]+|[a-zA-Z])", _sqrt, text).replace("√", "\\sqrt")
    text = re.sub(r"\\mathrm\s*\{\s*([ie])\s*\}", r"\1", text)
    return re.sub(r"\\(pi|infty|times|cdot|le|ge|ne) (?=[^a-zA-Z]|$)", r"\\\1", text).rstrip()


def fold_letter_lookalikes(text: str) -> str:
    """Capital Cyrillic and Greek letters that look like Latin ones (А, Β) as those Latin letters."""
    return text.translate(_LOOKALIKES)


def _scripts_to_latex(text: str) -> str:
    if not any(ch in _SCRIPT for ch in text):
        return text

    def run(m: re.Match) -> str:
        sup = m.group(0)[0] in _SUPERSCRIPT
        table = _SUPERSCRIPT if sup else _SUBSCRIPT
        body = "".join(table[ch] for ch in m.group(0))
        return ("^" if sup else "_") + (body if len(body) == 1 else "{" + body + "}")

    sups = "".join(_SUPERSCRIPT)
    subs = "".join(_SUBSCRIPT)
    return re.sub(f"[{sups}]+|[{subs}]+", run, text)


def _mixed_number(m: re.Match) -> str:
    sign, whole, frac = m.groups()
    return f"{sign}({whole}+{_VULGAR[frac]})"


def _sqrt(m: re.Match) -> str:
    body = m.group(1)
    return "\\sqrt" + (body if body.startswith("{") else "{" + body + "}")


def _ascii_digit(ch: str) -> str:
    if ch.isascii() or not ch.isdigit():
        return ch
    value = unicodedata.decimal(ch, None)
    return str(value) if value is not None else ch
