"""Names from inside an image (guest file names, labels) or from a host file system, as a
terminal may show them: control characters escaped the way `ls -b` (GNU
`--quoting-style=escape`) does, so a crafted name can neither run a terminal escape sequence
nor fake or hide a line of a listing.

  \\a \\b \\t \\n \\v \\f \\r       for those control characters
  \\ooo                     octal, per byte, for every other control character (ESC is \\033,
                            DEL \\177, a C1 control such as U+0085 is \\302\\205), for
                            bytes that are not UTF-8 (a name decoded with surrogateescape) and
                            for code points Unicode has not assigned
  \\\\                        a backslash, so that every escape reads back to one name

Unlike `ls -b`, spaces stay as they are (Windows guests are full of them), and the Unicode
characters that reorder or break lines (bidirectional overrides and isolates, U+2028,
U+2029) are escaped too: they are "printable" to `ls`, but they can make a line read as
another. `--json` output is not escaped: it keeps every name exactly.

The command line's error and warning path does not escape: it replaces control characters
with U+FFFD (`printable`), as the readers do for names in structures.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f",
          "\r": "\\r"}
_REORDERING = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                        "\u2066\u2067\u2068\u2069")


_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})


def _octal(char: str) -> str:
    # U+DC80..U+DCFF is a raw byte kept by surrogateescape; another lone surrogate (from
    # broken UTF-16) is shown as the bytes it would encode to.
    data = char.encode("utf-8", "surrogateescape" if 0xDC80 <= ord(char) <= 0xDCFF
                       else "surrogatepass")
    return "".join(f"\\{byte:03o}" for byte in data)


def _needs_escape(char: str) -> bool:
    # Control characters, raw bytes (lone surrogates), code points Unicode has not assigned
    # (what a terminal makes of them is anyone's guess), line and paragraph separators.
    return unicodedata.category(char) in _ESCAPED_CATEGORIES or char in _REORDERING


def escape(text: str, *, backslash: bool = True) -> str:
    """`text` with control characters escaped (see the module docstring).

    `backslash=False` leaves backslashes alone: for sentences that quote Windows paths
    (`verify` findings, `info` locators), where doubling them would only confuse; control
    characters are escaped all the same."""
    if text.isprintable() and "\\" not in text and not any(c in _REORDERING for c in text):
        return text  # the common case, at C speed
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\" if backslash else "\\")
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif _needs_escape(char):
            out.append(_octal(char))
        else:
            out.append(char)
    return "".join(out)


# Windows file names cannot hold control characters: in a locator or parent name they are
# damage, and printed as they are they would split one-line messages or drive the terminal.
_CONTROL_CHARACTERS = dict.fromkeys((*range(0x20), *range(0x7F, 0xA0)), "\ufffd")


def printable(text: str) -> str:
    """`text` with every control character (C0, DEL, C1) replaced by U+FFFD."""
    return text.translate(_CONTROL_CHARACTERS)
