"""Prompt templates: one instruction, worked examples, and the query.

Base models see `instructions + examples + query` as plain text and continue it; instruct models
get the same content as chat messages. A template's id carries a digest of its text, so editing a
template changes every cache key and provenance record that depends on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    name: str
    instructions: str
    examples: tuple[tuple[str, str], ...]  # (query, answer) pairs; answers are "- item" lines
    query: str  # str.format() text with the item fields
    answer_head: str = "-"  # base models continue from here (no trailing space: words carry their own)
    subjects: tuple[str, ...] = ()  # the examples' own subjects, which must not leak into outputs
    preamble: str = ""  # a line the answer opens with before its list (a reasoning step), never an item
    fields: int = 1  # "|"-separated fields of a list line: 1 (item), 2 (item | text), 3 (common | Latin | text)

    def answer(self, text: str) -> str:
        """The list part of an answer: what follows the preamble's line(s), up to the first '- ' line."""
        if not self.preamble:
            return text
        lines = text.split("\n")
        first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("- ")), len(lines))
        return "\n".join(lines[first:])

    def grammar(self, chat: bool, max_item_chars: int) -> str:
        """A GBNF grammar of the answer (`--grammar`): list lines of exactly `fields` fields, the first (the
        item) at most `max_item_chars` characters after the dash's space, after the preamble's line when there
        is one. A base prompt ends in `answer_head`, so its answer goes on from there; a chat answer starts
        afresh. The answer may end after any whole line."""
        line = "item" + ' " | " field' * (self.fields - 1)
        nl = r'"\n-"'  # GBNF's escape: a newline, then the next line's dash
        if self.preamble:
            head = f'"{self.preamble}" ' if chat else ""
            root = rf'root ::= {head}[^\n]+ ({nl} {line})+ "\n"?'
        else:
            head = '"-" ' if chat else ""
            root = rf'root ::= {head}{line} ({nl} {line})* "\n"?'
        rules = [root, rf'item ::= " "? [^|\n ] [^|\n]{{0,{max_item_chars - 1}}}', r"field ::= [^|\n]+"]
        return "\n".join(rules[: 3 if self.fields > 1 else 2]) + "\n"

    @property
    def id(self) -> str:
        body = repr((self.instructions, self.examples, self.query, self.answer_head)).encode()
        return f"{self.name}@{hashlib.sha256(body).hexdigest()[:10]}"

    def prefix(self) -> str:
        """The fixed part of a base prompt (identical for every request: its KV cache is reused)."""
        shots = "\n\n".join(q + "\n" + a for q, a in self.examples)
        return f"{self.instructions}\n\n{shots}\n\n"

    def suffix(self, **fields: str) -> str:
        return self.query.format(**fields) + "\n" + self.answer_head

    def messages(self, **fields: str) -> list[dict[str, str]]:
        form = (f" Answer with one '{self.preamble}' line, then the list, one '- ' line per item." if self.preamble
                else " Answer with the list only, one '- ' line per item.")
        msgs = [{"role": "system", "content": self.instructions + form}]
        for q, a in self.examples:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": self.query.format(**fields)})
        return msgs


# Every query states how many items it wants and what this list already holds ("Already listed"), and one
# worked example of each template shows a continuation: a retry asks for the rest, not for the same list
# again. No example names a class of DomainBed's image datasets (PACS, VLCS, OfficeHome, TerraIncognita,
# DomainNet's 345): a user's class that is an example's subject would be shown that example's own domains
# as the answer to copy (tests/test_quality.py).
DOMAINS = Template(
    name="domains",
    instructions=(
        "Novel visual domains for image generation. For each object class, list as many new domains as "
        "asked in which the object could be depicted, far from the usual photos: art styles, media, "
        "materials, settings, weather, lighting, camera types. Avoid the listed domains and those already "
        "listed. Each line: domain | image prompt."
    ),
    examples=(
        ("Class: accordion\nAvoid: photo, sketch\nAlready listed: none\n8 new domains:",
         "- watercolor | a watercolor painting of an accordion on a cafe table\n"
         "- neon sign | an accordion drawn as a glowing neon sign on a brick wall\n"
         "- underwater | an accordion lying on the sandy sea floor among fish\n"
         "- origami | an origami accordion folded from colored paper\n"
         "- blizzard | an accordion half buried in snow during a blizzard\n"
         "- mosaic | an accordion made of small ceramic mosaic tiles\n"
         "- pixel art | an accordion in retro pixel art\n"
         "- thermal camera | a thermal camera image of an accordion"),
        ("Class: gramophone\nAvoid: cartoon\nAlready listed: none\n6 new domains:",
         "- stained glass | a gramophone in a stained glass church window\n"
         "- clay figure | a small handmade clay figure of a gramophone\n"
         "- night vision | a green night vision image of a gramophone in a dark attic\n"
         "- embroidery | a gramophone embroidered on a linen cloth\n"
         "- chalk drawing | a chalk drawing of a gramophone on a sidewalk\n"
         "- foggy morning | a gramophone on a porch in thick morning fog"),
        ("Class: typewriter\nAvoid: photo, painting\nAlready listed: woodcut print, lego bricks, desert sunset\n"
         "5 new domains:",
         "- blueprint | a technical blueprint drawing of a typewriter\n"
         "- ice sculpture | a typewriter carved from clear ice\n"
         "- graffiti | a typewriter painted as graffiti on a concrete wall\n"
         "- tattoo | a typewriter tattoo on an arm\n"
         "- low poly 3d | a low poly 3d render of a typewriter"),
    ),
    query="Class: {cls}\nAvoid: {avoid}\nAlready listed: {listed}\n{n} new domains:",
    subjects=("accordion", "gramophone", "typewriter"),
    fields=2,
)

# Beyond Finite Data's way: a role, and a reasoning step before the list (the paper prompts its LLM to think
# about what would be new for the class first). The reasoning is read past: it is never an item or a prompt.
DOMAINS_REASONING = Template(
    name="domains-reasoning",
    instructions=(
        "You are an expert in visual domains for image generation. For each object class, first reason in one "
        "sentence about which art styles, media, materials, settings, weather, lighting or camera types would "
        "depict it far from its usual photos; then list as many new domains as asked, none of the avoided or "
        "already listed ones. Each list line: domain | image prompt."
    ),
    examples=(
        ("Class: accordion\nAvoid: photo, sketch\nAlready listed: none\n4 new domains:",
         "Reasoning: an accordion is a folded, shiny instrument, so crafts, light and odd places make it new.\n"
         "- origami | an origami accordion folded from colored paper\n"
         "- neon sign | an accordion drawn as a glowing neon sign on a brick wall\n"
         "- underwater | an accordion lying on the sandy sea floor among fish\n"
         "- thermal camera | a thermal camera image of an accordion"),
        ("Class: typewriter\nAvoid: photo, painting\nAlready listed: woodcut print, lego bricks\n3 new domains:",
         "Reasoning: a typewriter is boxy and mechanical; materials and technical drawings change its look most.\n"
         "- blueprint | a technical blueprint drawing of a typewriter\n"
         "- ice sculpture | a typewriter carved from clear ice\n"
         "- low poly 3d | a low poly 3d render of a typewriter"),
    ),
    query="Class: {cls}\nAvoid: {avoid}\nAlready listed: {listed}\n{n} new domains:",
    answer_head="Reasoning:",
    subjects=("accordion", "typewriter"),
    preamble="Reasoning:",
    fields=2,
)

GROUPS = Template(
    name="realm-groups",
    instructions=(
        "Taxonomies of visual concepts. For each realm, list as many of its main sub-groups of "
        "similar-looking classes as asked, none already listed. Each line: group."
    ),
    examples=(
        ("Realm: vehicles\nAlready listed: none\n6 new groups:",
         "- cars\n- trucks\n- motorcycles\n- boats\n- aircraft\n- trains"),
        ("Realm: fruit\nAlready listed: citrus fruits, berries\n4 new groups:",
         "- stone fruits\n- tropical fruits\n- melons\n- apples and pears"),
        ("Realm: furniture\nAlready listed: none\n5 new groups:", "- chairs\n- tables\n- beds\n- sofas\n- cabinets"),
    ),
    query="Realm: {realm}\nAlready listed: {listed}\n{n} new groups:",
)

CLASSES = Template(
    name="realm-classes",
    instructions=(
        "Fine-grained visual classes. For each group of a realm, name as many real, visually distinct "
        "classes as asked, none already listed, each with a short description of how it looks. Each line: "
        "class | visual description."
    ),
    examples=(
        ("Realm: birds\nGroup: waterfowl\nAlready listed: none\n5 new classes:",
         "- mallard | duck with a glossy green head, white neck ring and grey body\n"
         "- mute swan | large white swan with an orange bill and a black knob\n"
         "- wood duck | small duck with a green crest, red eye and patterned face\n"
         "- canada goose | brown goose with a black neck and a white chin strap\n"
         "- common eider | stocky sea duck, white back, black belly, pale green nape"),
        ("Realm: vehicles\nGroup: trucks\nAlready listed: fire truck, dump truck\n3 new classes:",
         "- tow truck | truck with a crane boom and hook at the back\n"
         "- garbage truck | boxy truck with a rear loading compactor\n"
         "- tanker truck | truck carrying a long shiny cylindrical tank"),
    ),
    query="Realm: {realm}\nGroup: {group}\nAlready listed: {listed}\n{n} new classes:",
    fields=2,
)

# Premonition's own way (the paper's notebook, cl-premonition/premonition): a biological realm is split by
# scientific order, each order lists species with their Latin names, and each description is short (at most
# 180 characters) and says what tells the species apart from others in a photograph. Prompts then read
# "A photograph of a {common} ({latin}): {description}". A realm that is not biological lists its main
# sub-types, and its classes carry "-" for a Latin name.
ORDERS = Template(
    name="premonition-orders",
    instructions=(
        "Taxonomies for image datasets. For a realm of living things, list as many of its scientific orders as "
        "asked (Latin order names); for any other realm, its main sub-types. None already listed. Each line: group."
    ),
    examples=(
        ("Realm: mammals\nAlready listed: none\n5 new groups:",
         "- Carnivora\n- Rodentia\n- Chiroptera\n- Artiodactyla\n- Primates"),
        ("Realm: kitchen appliances\nAlready listed: ovens\n3 new groups:",
         "- coffee makers\n- food processors\n- kettles and toasters"),
    ),
    query="Realm: {realm}\nAlready listed: {listed}\n{n} new groups:",
)

SPECIES = Template(
    name="premonition-species",
    instructions=(
        "Fine-grained classes for image datasets. For a group of a realm, name as many real species (or, outside "
        "living things, models or kinds) as asked, none already listed, each with its Latin name (\"-\" when "
        "there is none) and a description of at most 180 characters that helps tell it from other species in a "
        "photograph. Each line: common name | Latin name | description."
    ),
    examples=(
        ("Realm: mammals\nGroup: Carnivora\nAlready listed: none\n3 new species:",
         "- Red fox | Vulpes vulpes | Slender fox with rusty-orange fur, white-tipped bushy tail, black legs and "
         "pointed black-backed ears\n"
         "- Eurasian badger | Meles meles | Stocky grey body, short legs and a white face with two bold black "
         "stripes through the eyes\n"
         "- Snow leopard | Panthera uncia | Pale grey cat with dark rosettes, thick fur and a very long, heavy "
         "tail, often on rocky slopes"),
        ("Realm: kitchen appliances\nGroup: coffee makers\nAlready listed: moka pot\n2 new species:",
         "- French press | - | Glass cylinder in a metal frame with a plunger rod and mesh filter on top\n"
         "- Espresso machine | - | Boxy steel machine with a portafilter handle, steam wand and cup tray"),
    ),
    query="Realm: {realm}\nGroup: {group}\nAlready listed: {listed}\n{n} new species:",
    fields=3,
)

TEMPLATES = {t.name: t for t in (DOMAINS, DOMAINS_REASONING, GROUPS, CLASSES, ORDERS, SPECIES)}
# A base model ends a list with a blank line or starts the next example; stop there.
BASE_STOPS = ["\n\n", "\nClass:", "\nRealm:", "\nGroup:", "\nAlready listed:"]
