"""The one rule for names that become paths.

Labels (class and domain names, row and image ids) come from users and LLMs and may hold anything.
`path_name` turns one into a folder or file name that is:
- safe: no separator, no control character, nothing Windows forbids, never hidden ('.x') or reserved
  (CON, NUL, ...), never '', '.' or '..';
- bounded: at most MAX_NAME characters, well under every file system's limit;
- injective: two different labels never share a name, on case-insensitive file systems too. A label
  made only of lowercase ASCII letters, digits and a few plain characters is its own name ('dog',
  'crane (bird)', 'stained-glass'); any other label gets a readable part plus '~' and a hash of the
  exact label ('AC/DC' -> 'ac_dc~3f0c1a9b2e'), and '~' never appears in a name of the first kind.
The exact label stays in the manifest and is what training reads back.

Identifiers (model cards, recipe and run names) are not encoded but checked against a pattern.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .errors import AugurError

MAX_NAME = 80
_HASH = 10
_PLAIN = re.compile(r"^[a-z0-9][a-z0-9 _()+,&.-]*$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")


def control_characters(text: str) -> list[str]:
    """Control characters (NUL, newline, tab, ...) a label must not hold: they end up in file names and logs."""
    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def check_label(text: str, what: str) -> str:
    """A label is any printable text; a control character or an empty label is an error naming `what`."""
    if not isinstance(text, str) or not text.strip():
        raise AugurError(f"{what} is empty")
    bad = control_characters(text)
    if bad:
        raise AugurError(f"{what} {text[:40]!r} holds control character(s) {', '.join(bad)}")
    return text


def _is_plain(label: str) -> bool:
    stem = label.split(".")[0]
    return (len(label) <= MAX_NAME and bool(_PLAIN.match(label)) and not label.endswith((" ", "."))
            and "  " not in label and stem not in _WINDOWS_RESERVED)


def path_name(label: str) -> str:
    """The folder / file name for `label` (see the module docstring)."""
    if _is_plain(label):
        return label
    ascii_ = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().lower()
    # no dots in the readable part: 'con.txt~...' would still be a reserved device name on Windows
    readable = re.sub(r"[^a-z0-9()+,&-]+", "_", ascii_).strip("_-") or "x"
    readable = readable[: MAX_NAME - _HASH - 1].rstrip("_-") or "x"
    return f"{readable}~{hashlib.sha256(label.encode('utf-8')).hexdigest()[:_HASH]}"


def check_identifier(name: str, what: str) -> str:
    """Model, card, recipe and run names: letters, digits, '.', '_', '+', '-'; no path parts."""
    if not isinstance(name, str) or not IDENTIFIER.match(name) or ".." in name:
        raise AugurError(f"{what} {name!r} is not a valid name: use letters, digits, '.', '_', '+' and '-' "
                         f"(at most 80, starting with a letter or digit)")
    return name
