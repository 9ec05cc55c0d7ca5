"""Class names as datasets spell them, and the unambiguous phrase used in prompts.

The label stays what the dataset calls the class (it names folders); only the prompt phrase changes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import AugurError
from .quality import stem, words

# Names that mean different things to a text-to-image model; the first sense is the default.
# Each sense maps to the phrase used in prompts.
AMBIGUOUS: dict[str, dict[str, str]] = {
    "crane": {"bird": "crane bird", "machine": "construction crane"},
    "mouse": {"animal": "mouse animal", "computer": "computer mouse"},
    "bat": {"animal": "bat animal", "sports": "baseball bat"},
    "seal": {"animal": "seal animal", "stamp": "wax seal stamp"},
    "jaguar": {"animal": "jaguar big cat", "car": "jaguar car"},
    "kite": {"toy": "flying kite toy", "bird": "kite bird of prey"},
    "mole": {"animal": "mole animal", "skin": "skin mole"},
    "bass": {"fish": "bass fish", "guitar": "bass guitar"},
    "apple": {"fruit": "apple fruit", "computer": "apple computer"},
    "nail": {"hardware": "metal nail", "finger": "fingernail"},
    "bow": {"weapon": "archery bow", "ribbon": "ribbon bow"},
    "palm": {"tree": "palm tree", "hand": "palm of a hand"},
    "glasses": {"eyewear": "eyeglasses", "drinking": "drinking glasses"},
    "monitor": {"screen": "computer monitor", "lizard": "monitor lizard"},
    "ram": {"animal": "ram sheep", "memory": "ram memory module"},
    "tank": {"vehicle": "military tank", "container": "water tank"},
    "pitcher": {"jug": "water pitcher jug", "baseball": "baseball pitcher"},
    "bug": {"insect": "bug insect", "car": "volkswagen beetle car"},
}
_QUALIFIED = re.compile(r"^\s*(.+?)\s*\(\s*([^()]+?)\s*\)\s*$")


@dataclass(frozen=True)
class ClassName:
    label: str  # what the dataset calls it; names folders
    phrase: str  # what prompts say

    @property
    def content_words(self) -> set[str]:
        return {stem(w) for w in words(self.phrase + " " + self.label)}


def resolve(raw: str, warn: bool = True) -> ClassName:
    """'crane (bird)' → label 'crane (bird)', phrase 'crane bird'; bare 'crane' → default sense, with a warning."""
    raw = raw.strip()
    m = _QUALIFIED.match(raw)
    if m:
        base, qual = m.group(1), m.group(2)
        senses = AMBIGUOUS.get(base.lower(), {})
        return ClassName(raw, senses.get(qual.lower(), f"{base} {qual}"))
    label_words = " ".join(words(raw))
    senses = AMBIGUOUS.get(label_words)
    if senses and len(senses) > 1:
        sense, phrase = next(iter(senses.items()))
        if warn:
            others = ", ".join(f"'{raw} ({s})'" for s in list(senses)[1:])
            print(f"warning: '{raw}' is ambiguous; prompting for '{raw} ({sense})'. Write {others} for another sense.",
                  file=sys.stderr)
        return ClassName(raw, phrase)
    return ClassName(raw, raw.replace("_", " "))


def parse_class_list(text: str) -> list[str]:
    items = [c.strip() for part in text.splitlines() for c in part.split(",")]
    return [c for c in items if c and not c.startswith("#")]


def collect(classes: list[str] | str | None, classes_file: str | Path | None, dataset: str | Path | None) -> list[str]:
    """Class names from exactly one of: a list (or comma text), a file (one per line or commas), a DomainBed folder."""
    given = [x for x in (classes, classes_file, dataset) if x]
    if len(given) != 1:
        raise AugurError("give the classes once: --classes a,b,c or --classes-file FILE or --dataset DIR")
    if classes:
        names = parse_class_list(classes) if isinstance(classes, str) else [c.strip() for c in classes if c.strip()]
    elif classes_file:
        try:
            names = parse_class_list(Path(classes_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise AugurError(f"{classes_file}: cannot read the class list ({e.__class__.__name__})") from None
        if "\x00" in "".join(names):
            raise AugurError(f"{classes_file}: not a text file of class names (it holds NUL bytes)")
    else:
        names = dataset_classes(Path(dataset))
    if not names:
        raise AugurError("the class list is empty")
    seen: set[str] = set()
    dups = [n for n in names if n.lower() in seen or seen.add(n.lower())]
    if dups:
        raise AugurError(f"class listed twice: {', '.join(dups)}")
    return names


def dataset_classes(root: Path) -> list[str]:
    """Classes of a DomainBed-layout folder ROOT/<domain>/<class>/; every domain must agree."""
    if not root.is_dir():
        raise AugurError(f"{root}: no such dataset folder")
    domains = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domains:
        raise AugurError(f"{root}: expected ROOT/<domain>/<class>/ folders, found no domain folders")
    per = {d.name: sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")) for d in domains}
    first = per[domains[0].name]
    for name, cls in per.items():
        if cls != first:
            diff = sorted(set(first) ^ set(cls))
            raise AugurError(f"{root}: domain '{name}' has different classes from '{domains[0].name}': {', '.join(diff)}")
    return first


def dataset_domains(root: Path) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
