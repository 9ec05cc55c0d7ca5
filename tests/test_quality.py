"""Parsing and filtering of LLM list output, and class-name handling (pure functions, real MiniLM)."""

from pathlib import Path

import pytest

from toolkit.core.errors import AugurError
from toolkit.stages.extrapolate import classnames
from toolkit.stages.extrapolate.embed import SemanticFilter
from toolkit.stages.extrapolate.quality import Limits, check_domain, compose_prompt, norm_key, parse_lines


def test_parse_lines_tolerates_format_drift():
    text = "- watercolor | a watercolor dog\n* neon sign|a neon dog\n3. origami\n\n-   \n- pixel art | a pixel art d"
    assert parse_lines(text, truncated=False) == [
        ("watercolor", "a watercolor dog"), ("neon sign", "a neon dog"), ("origami", None),
        ("pixel art", "a pixel art d")]
    assert parse_lines("- falcon | long black bird<start_of_image>  - male (photo)", False) == [
        ("falcon", "long black bird")]
    # A generation cut by max_tokens loses its (probably cut) last line.
    assert parse_lines(text, truncated=True)[-1] == ("origami", None)


def test_norm_key_ignores_case_articles_plurals_punctuation():
    assert norm_key("The Watercolor Paintings!") == norm_key("watercolor painting")
    assert norm_key("Pixel-art") == norm_key("pixel art")
    assert norm_key("neon sign") != norm_key("neon light")


def test_check_domain_rejects_restatements_and_excluded():
    cw = classnames.resolve("dog").content_words
    lim = Limits()
    assert check_domain("dogs", None, cw, [], lim) == "restates class"
    assert check_domain("a dog picture", None, cw, [], lim) == "restates class"
    assert check_domain("photograph", None, cw, ["photo"], lim) == "excluded domain"
    assert check_domain("oil painting", None, cw, ["art painting"], lim) == "excluded domain"
    assert check_domain("sketched lines", None, cw, ["sketch"], lim) == "excluded domain"
    assert check_domain("a very long domain name that goes on and on", None, cw, [], lim) == "length"
    assert check_domain("stained glass", "a dog in stained glass", cw, ["photo"], lim) is None


def test_the_prompt_limit_counts_clip_tokens_not_words():
    """The 77 that Stable Diffusion's text encoders keep is counted with OpenAI CLIP's own tokenizer (its BPE
    vocabulary ships with the package): its canonical ids for "a photo of a cat"; a 51-word prompt of common
    words fits, a 19-word one of rare words and codes does not."""
    from toolkit.stages.extrapolate import clip_tokens
    from toolkit.stages.extrapolate.quality import check_prompt, words

    tok = clip_tokens.tokenizer()
    assert len(tok) == 49408 and tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    lim = Limits()
    common = " ".join(["a small red bird sits on a green branch near the old stone wall by the river"] * 3)
    assert len(words(common)) == 51 and clip_tokens.count(common) == 53 and check_prompt(common, lim) is None
    rare = ("a dog by Zygodactyl Pteroglossus xanthogrammus 0x3f9a brk2 qxzv mthwz kyzylkum, 47/19 #b8e; "
            "tarsometatarsal 9-k crests, qjx 77vv zz, pqv 5k wrx, 3j9q")
    assert len(words(rare)) < 30 and clip_tokens.count(rare) > 77
    cw = classnames.resolve("dog").content_words
    assert check_domain("stained glass", rare, cw, [], lim) == "prompt tokens"
    assert check_domain("stained glass", common.replace("bird", "dog", 1)[:200], cw, [], lim) is None


def test_compose_prompt_keeps_class():
    cn = classnames.resolve("dog")
    assert compose_prompt("origami", "an origami dog", cn.phrase, cn.content_words) == "an origami dog"
    assert compose_prompt("origami", "folded paper art", cn.phrase, cn.content_words) == "a dog, origami"
    assert compose_prompt("origami", None, cn.phrase, cn.content_words) == "a dog, origami"


def test_ambiguous_names_are_disambiguated(capsys):
    c = classnames.resolve("crane")
    assert (c.label, c.phrase) == ("crane", "crane bird")
    assert "ambiguous" in capsys.readouterr().err
    m = classnames.resolve("crane (machine)")
    assert (m.label, m.phrase) == ("crane (machine)", "construction crane")
    assert classnames.resolve("heron (wading bird)").phrase == "heron wading bird"
    assert classnames.resolve("golden_retriever").phrase == "golden retriever"


def test_semantic_filter_with_real_minilm(embedder):
    f = SemanticFilter(embedder, 0.8, avoid=["photo"])
    assert f.check("watercolor painting") is None
    assert f.check("watercolour painting") == "semantic duplicate"
    assert f.check("underwater scene") is None
    assert f.check("photograph") == "semantically excluded"


def test_class_sources(tmp_path: Path):
    assert classnames.collect("a, b,c", None, None) == ["a", "b", "c"]
    f = tmp_path / "classes.txt"
    f.write_text("# birds\nheron\ncrane (bird)\n")
    assert classnames.collect(None, f, None) == ["heron", "crane (bird)"]
    root = tmp_path / "ds"
    for d in ("photo", "sketch"):
        for c in ("dog", "cat"):
            (root / d / c).mkdir(parents=True)
    assert classnames.collect(None, None, root) == ["cat", "dog"]
    assert classnames.dataset_domains(root) == ["photo", "sketch"]
    (root / "sketch" / "cow").mkdir()
    with pytest.raises(AugurError, match="different classes.*cow"):
        classnames.collect(None, None, root)
    with pytest.raises(AugurError, match="empty"):
        classnames.collect(" , ", None, None)
    with pytest.raises(AugurError, match="twice"):
        classnames.collect("dog,Dog", None, None)
    with pytest.raises(AugurError, match="cannot read"):
        classnames.collect(None, tmp_path, None)


def test_near_duplicates_and_leaked_example_subjects():
    from toolkit.stages.extrapolate.quality import near_duplicate

    assert near_duplicate("3d printed plastic", ["watercolor", "3d printing"])
    assert near_duplicate("neon", ["neon sign"])
    assert not near_duplicate("oil painting", ["watercolor", "neon sign"])
    cn = classnames.resolve("dog")
    leaked = "a dog in a 3d rendering of an elephant"
    assert compose_prompt("3d render", leaked, cn.phrase, cn.content_words, {"elephant"}) == "a dog, 3d render"
    cn = classnames.resolve("elephant")  # the class itself may of course be named
    assert compose_prompt("clay", "a clay elephant", cn.phrase, cn.content_words, {"elephant"}) == "a clay elephant"


def test_non_words_are_rejected_everywhere():
    from toolkit.stages.extrapolate.quality import check_class, check_group

    lim = Limits()
    assert check_domain("3D", None, set(), [], lim) == "not a word"
    assert check_group("1930s", "birds", lim) == "not a word"
    assert check_group("birds", "birds", lim) == "restates realm"
    assert check_group("raptors", "birds", lim) is None
    assert check_class("59s", "a bird with a yellow head", set(), lim) == "not a word"
    assert check_class("hawk", "big", set(), lim) == "description length"
    assert check_class("hawk", "big raptor with a hooked beak", {"hawk"}, lim) == "duplicate"
    assert check_class("hawk", "big raptor with a hooked beak", set(), lim) is None


# DomainNet's 345 classes, as its folders name them (its class list, e.g. clipart_train.txt).
DOMAINNET_CLASSES = {c.replace("_", " ").lower() for c in """
aircraft_carrier airplane alarm_clock ambulance angel animal_migration ant anvil apple arm asparagus axe
backpack banana bandage barn baseball baseball_bat basket basketball bat bathtub beach bear beard bed bee belt
bench bicycle binoculars bird birthday_cake blackberry blueberry book boomerang bottlecap bowtie bracelet brain
bread bridge broccoli broom bucket bulldozer bus bush butterfly cactus cake calculator calendar camel camera
camouflage campfire candle cannon canoe car carrot castle cat ceiling_fan cello cell_phone chair chandelier
church circle clarinet clock cloud coffee_cup compass computer cookie cooler couch cow crab crayon crocodile
crown cruise_ship cup diamond dishwasher diving_board dog dolphin donut door dragon dresser drill drums duck
dumbbell ear elbow elephant envelope eraser eye eyeglasses face fan feather fence finger fire_hydrant fireplace
firetruck fish flamingo flashlight flip_flops floor_lamp flower flying_saucer foot fork frog frying_pan garden
garden_hose giraffe goatee golf_club grapes grass guitar hamburger hammer hand harp hat headphones hedgehog
helicopter helmet hexagon hockey_puck hockey_stick horse hospital hot_air_balloon hot_dog hot_tub hourglass
house house_plant hurricane ice_cream jacket jail kangaroo key keyboard knee knife ladder lantern laptop leaf
leg light_bulb lighter lighthouse lightning line lion lipstick lobster lollipop mailbox map marker matches
megaphone mermaid microphone microwave monkey moon mosquito motorbike mountain mouse moustache mouth mug
mushroom nail necklace nose ocean octagon octopus onion oven owl paintbrush paint_can palm_tree panda pants
paper_clip parachute parrot passport peanut pear peas pencil penguin piano pickup_truck picture_frame pig pillow
pineapple pizza pliers police_car pond pool popsicle postcard potato power_outlet purse rabbit raccoon radio
rain rainbow rake remote_control rhinoceros rifle river roller_coaster rollerskates sailboat sandwich saw
saxophone school_bus scissors scorpion screwdriver sea_turtle see_saw shark sheep shoe shorts shovel sink
skateboard skull skyscraper sleeping_bag smiley_face snail snake snorkel snowflake snowman soccer_ball sock
speedboat spider spoon spreadsheet square squiggle squirrel stairs star steak stereo stethoscope stitches
stop_sign stove strawberry streetlight string_bean submarine suitcase sun swan sweater swing_set sword syringe
table teapot teddy-bear telephone television tennis_racquet tent The_Eiffel_Tower The_Great_Wall_of_China
The_Mona_Lisa tiger toaster toe toilet tooth toothbrush toothpaste tornado tractor traffic_light train tree
triangle trombone truck trumpet t-shirt umbrella underwear van vase violin washing_machine watermelon waterslide
whale wheel windmill wine_bottle wine_glass wristwatch yoga zebra zigzag
""".split()}
assert len(DOMAINNET_CLASSES) == 345

# The classes of DomainBed's image datasets (PACS, VLCS, OfficeHome, TerraIncognita; DomainNet above), as their
# folders name them.
DG_CLASSES = DOMAINNET_CLASSES | {
    "dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "bird", "car", "chair", "bobcat", "cat",
    "coyote", "opossum", "rabbit", "raccoon", "squirrel", "alarm clock", "backpack", "batteries", "bed", "bike",
    "bicycle", "bottle", "bucket", "calculator", "calendar", "candles", "clipboards", "computer", "couch",
    "curtains", "desk lamp", "drill", "eraser", "exit sign", "fan", "file cabinet", "flipflops", "flowers", "folder",
    "fork", "glasses", "hammer", "helmet", "kettle", "keyboard", "knives", "lamp shade", "laptop", "marker",
    "monitor", "mop", "mouse", "mug", "notebook", "oven", "pan", "paper clip", "pen", "pencil", "postit notes",
    "printer", "push pin", "radio", "refrigerator", "ruler", "scissors", "screwdriver", "shelf", "sink", "sneakers",
    "soda", "speaker", "spoon", "tv", "table", "telephone", "toothbrush", "toys", "trash can", "webcam"}


def test_worked_examples_name_no_class_of_a_common_dg_dataset():
    """An example subject that is a target class (PACS's elephant, DomainNet's lighthouse and teapot) would show
    the model that class's own domains as the answer to copy."""
    from toolkit.stages.extrapolate.templates import DOMAINS, DOMAINS_REASONING

    for template in (DOMAINS, DOMAINS_REASONING):
        subjects = [q.split("\n")[0].removeprefix("Class: ") for q, _ in template.examples]
        assert subjects == list(template.subjects)
        assert not set(subjects) & DG_CLASSES
        for q, a in template.examples:  # each example asks for as many as it answers, beyond what it lists
            n = int(q.rsplit("\n", 1)[1].split()[0])
            assert len([line for line in a.splitlines() if line.startswith("- ")]) == n


def test_markdown_and_reasoning_spans_are_not_items():
    """Instruct models bold their items and reasoning models think aloud first: neither is part of an item."""
    text = ("<think>\nThe user wants - origami | paper things\n</think>\n- **Watercolor** | a *soft* watercolor of x\n"
            "- __neon sign__ | a `neon` sign\n- snake_case_thing | x\n1. **Pixel art**")
    assert parse_lines(text, truncated=False) == [("Watercolor", "a soft watercolor of x"), ("neon sign", "a neon sign"),
                                                 ("snake_case_thing", "x"), ("Pixel art", None)]
    assert parse_lines("<think>\nstill thinking\n- origami | paper", truncated=True) == []  # never closed
