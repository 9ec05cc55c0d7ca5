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
        msgs = [{"role": "system", "content": self.instructions + " Answer with the list only, one '- ' line per item."}]
        for q, a in self.examples:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": self.query.format(**fields)})
        return msgs


DOMAINS = Template(
    name="domains",
    instructions=(
        "Novel visual domains for image generation. For each object class, list domains in which the "
        "object could be depicted, far from the usual photos: art styles, media, materials, settings, "
        "weather, lighting, camera types. Avoid the listed domains. Each line: domain | image prompt."
    ),
    examples=(
        ("Class: bicycle\nAvoid: photo, sketch\nDomains:",
         "- watercolor | a watercolor painting of a bicycle leaning on a garden fence\n"
         "- neon sign | a bicycle drawn as a glowing neon sign on a brick wall\n"
         "- underwater | a bicycle lying on the sandy sea floor among fish\n"
         "- origami | an origami bicycle folded from colored paper\n"
         "- blizzard | a bicycle half buried in snow during a blizzard\n"
         "- mosaic | a bicycle made of small ceramic mosaic tiles\n"
         "- pixel art | a bicycle in retro pixel art\n"
         "- thermal camera | a thermal camera image of a bicycle"),
        ("Class: elephant\nAvoid: cartoon\nDomains:",
         "- stained glass | an elephant in a stained glass church window\n"
         "- clay figure | a small handmade clay figure of an elephant\n"
         "- night vision | a green night vision image of an elephant at night\n"
         "- embroidery | an elephant embroidered on a linen cloth\n"
         "- chalk drawing | a chalk drawing of an elephant on a sidewalk\n"
         "- foggy morning | an elephant walking through thick morning fog\n"
         "- cave painting | an elephant as an ancient cave painting\n"
         "- x-ray | an x-ray image of an elephant"),
        ("Class: teapot\nAvoid: photo, painting\nDomains:",
         "- woodcut print | a teapot as a black and white woodcut print\n"
         "- lego bricks | a teapot built from lego bricks\n"
         "- desert sunset | a teapot on desert sand at sunset\n"
         "- blueprint | a technical blueprint drawing of a teapot\n"
         "- ice sculpture | a teapot carved from clear ice\n"
         "- graffiti | a teapot painted as graffiti on a concrete wall\n"
         "- tattoo | a teapot tattoo on an arm\n"
         "- low poly 3d | a low poly 3d render of a teapot"),
    ),
    query="Class: {cls}\nAvoid: {avoid}\nDomains:",
    subjects=("bicycle", "elephant", "teapot"),
)

GROUPS = Template(
    name="realm-groups",
    instructions=(
        "Taxonomies of visual concepts. For each realm, list its main sub-groups of similar-looking "
        "classes. Each line: group."
    ),
    examples=(
        ("Realm: vehicles\nGroups:", "- cars\n- trucks\n- motorcycles\n- boats\n- aircraft\n- trains"),
        ("Realm: fruit\nGroups:", "- citrus fruits\n- berries\n- stone fruits\n- tropical fruits\n- melons\n- apples and pears"),
        ("Realm: furniture\nGroups:", "- chairs\n- tables\n- beds\n- sofas\n- cabinets\n- shelves"),
    ),
    query="Realm: {realm}\nGroups:",
)

CLASSES = Template(
    name="realm-classes",
    instructions=(
        "Fine-grained visual classes. For each group of a realm, name real, visually distinct classes, "
        "each with a short description of how it looks. Each line: class | visual description."
    ),
    examples=(
        ("Realm: birds\nGroup: waterfowl\nClasses:",
         "- mallard | duck with a glossy green head, white neck ring and grey body\n"
         "- mute swan | large white swan with an orange bill and a black knob\n"
         "- wood duck | small duck with a green crest, red eye and patterned face\n"
         "- canada goose | brown goose with a black neck and a white chin strap\n"
         "- common eider | stocky sea duck, white back, black belly, pale green nape"),
        ("Realm: vehicles\nGroup: trucks\nClasses:",
         "- fire truck | red truck with a long ladder, hoses and flashing lights\n"
         "- dump truck | truck with a large open tipping bed for gravel\n"
         "- tow truck | truck with a crane boom and hook at the back\n"
         "- garbage truck | boxy truck with a rear loading compactor\n"
         "- tanker truck | truck carrying a long shiny cylindrical tank"),
    ),
    query="Realm: {realm}\nGroup: {group}\nClasses:",
)

TEMPLATES = {t.name: t for t in (DOMAINS, GROUPS, CLASSES)}
# A base model ends a list with a blank line or starts the next example; stop there.
BASE_STOPS = ["\n\n", "\nClass:", "\nRealm:", "\nGroup:"]
