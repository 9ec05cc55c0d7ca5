"""`augur curate` on real parts: the real EfficientNet-Lite0 ImageNet classifier, the tiny CLIP stand-in in the
real transformers layout (CLIPModel/CLIPProcessor), real imagehash pHashes, vendi-score, renders of the real
tiny-lcm pipeline, scikit-learn's sample photo and the real digits."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from toolkit import models
from toolkit.core.files import read_json, read_jsonl, sha256_bytes, sha256_tree, write_jsonl
from toolkit.stages.curate import dedup, measures
from toolkit.stages.curate.config import CurateConfig
from toolkit.stages.curate.stage import run_curate
from toolkit.stages.render.config import RenderConfig
from toolkit.stages.render.stage import render

from helpers import ROOT

CLASSES = ("daisy", "goldfinch", "zork")  # two ImageNet class names and one no ImageNet class matches


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *fragments):
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def flower():
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg")).resize((160, 120))


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A real render folder of noise (the built-in tiny-lcm): 3 classes x 2 domains x 3 images."""
    models.ensure("tiny-lcm")
    root = tmp_path_factory.mktemp("render")
    prompts = root / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"{c}--{d}", "class": c, "domain": d, "prompt": f"a {c} made of {d}"}
                          for c in CLASSES for d in ("origami", "stained-glass")])
    render(prompts, root / "images", RenderConfig(model="tiny-lcm", device="cpu", quiet=True, images_per_prompt=3))
    return root / "images"


def with_flower(rendered, tmp_path):
    """A copy of the render folder whose first daisy image is the real flower photo (its manifest row's
    sha256 updated), and whose second daisy image is a resized, re-encoded copy of it."""
    import shutil

    from PIL import Image

    src = tmp_path / "render"
    shutil.copytree(rendered, src)
    rows = read_jsonl(src / "manifest.jsonl")
    daisies = [r for r in rows if r["class"] == "daisy"]
    photo = png(flower())
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).resize((120, 90)).save(buf, format="JPEG", quality=85)
    copy = png(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    for row, data in ((daisies[0], photo), (daisies[1], copy)):
        (src / row["path"]).write_bytes(data)
        row["sha256"] = sha256_bytes(data)
    write_jsonl(src / "manifest.jsonl", rows)
    return src, daisies[0]["image_id"], daisies[1]["image_id"]


def cfg(**kw) -> CurateConfig:
    return CurateConfig(**{"scorer": "efficientnet-lite0-imagenet", "device": "cpu", "quiet": True, "workers": 0, **kw})


def test_imagenet_classifier_ranks_the_flower_above_noise_and_leaves_an_unmatched_class_unscored(rendered, tmp_path):
    src, photo_id, copy_id = with_flower(rendered, tmp_path)
    res = run_curate(src, tmp_path / "out", cfg(require_class_agreement=False, max_entropy=0.05))
    scores = {r["image_id"]: r for r in read_jsonl(tmp_path / "out" / "scores.jsonl")}
    daisy = [r for r in scores.values() if r["class"] == "daisy"]
    noise = [r for r in daisy if r["image_id"] not in (photo_id, copy_id)]
    photo = scores[photo_id]
    assert photo["predicted"] == "daisy" and photo["class_agreement"] is True
    assert photo["class_prob"] > max(r["class_prob"] for r in noise)
    assert photo["entropy"] < min(r["entropy"] for r in noise)
    # the threshold keeps the photo and rejects every noise image of a scored class
    assert photo["kept"] and not any(r["kept"] for r in noise)
    assert all(any(x.startswith("entropy") for x in r["reasons"]) for r in noise)
    # "zork" names no ImageNet class: unscored (None), never counted as agreeing, and said so
    zork = [r for r in scores.values() if r["class"] == "zork"]
    assert zork and all(r["class_agreement"] is None and r["class_prob"] is None and r["entropy"] is None for r in zork)
    q = read_json(tmp_path / "out" / "quality.json")
    assert q["unscored_classes"] == ["zork"] and q["imagenet_matches"]["daisy"] == ["daisy"]
    card = read_json(tmp_path / "out" / "dataset_card.json")
    assert any("unscored for 1 class" in x for x in card["limits"])
    assert "zork" in res.warnings[0]
    # every row names its scorer; the kept set trains as a render folder does (hard links, its own manifest)
    assert {r["scorer"] for r in scores.values()} == {"efficientnet-lite0-imagenet"}
    kept = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert {r["image_id"] for r in kept} == {i for i, r in scores.items() if r["kept"]}
    for r in kept:
        assert (tmp_path / "out" / r["path"]).stat().st_ino == (src / r["path"]).stat().st_ino


def test_a_resized_reencoded_copy_is_a_duplicate_and_a_different_image_is_not(rendered, tmp_path):
    src, photo_id, copy_id = with_flower(rendered, tmp_path)
    run_curate(src, tmp_path / "out", cfg(require_class_agreement=False))
    scores = {r["image_id"]: r for r in read_jsonl(tmp_path / "out" / "scores.jsonl")}
    # the copy scores lower than the photo (or equal): it is the one dropped, and it names its twin
    assert scores[copy_id]["duplicate_of"] == photo_id and not scores[copy_id]["kept"]
    assert any(r.startswith("near-copy of " + photo_id) for r in scores[copy_id]["reasons"])
    assert scores[photo_id]["kept"] and "duplicate_of" not in scores[photo_id]
    # pHash alone: the copy is within a few bits, a noise image is far
    from PIL import Image

    h = [dedup.phash(Image.open(src / scores[i]["path"]).convert("RGB")) for i in (photo_id, copy_id)]
    other = next(r for r in scores.values() if r["class"] == "goldfinch")
    h_other = dedup.phash(Image.open(src / other["path"]).convert("RGB"))
    d = dedup.hash_distances(np.array(h, dtype=np.uint64), np.array([h[0], h_other], dtype=np.uint64))
    assert d[1, 0] <= 4 and d[0, 1] > 10


def test_vendi_is_one_for_identical_and_n_for_orthogonal_embeddings():
    assert measures.vendi(np.ones((7, 5))) == pytest.approx(1.0)
    assert measures.vendi(np.eye(6)) == pytest.approx(6.0)
    # two orthogonal groups of three identical rows: exp(ln 2) = 2
    assert measures.vendi(np.repeat(np.eye(2), 3, axis=0)) == pytest.approx(2.0)
    # fewer items than dimensions (the n x n kernel is taken): the same definition
    assert measures.vendi(np.ones((3, 8))) == pytest.approx(1.0)
    assert measures.vendi(np.eye(4, 9)) == pytest.approx(4.0)
    from vendi_score import vendi as vs

    x = np.random.default_rng(0).normal(size=(10, 40))
    assert measures.vendi(x) == pytest.approx(vs.score_dual(x, q=1, normalize=True), rel=1e-9)


def test_frechet_distance_is_zero_for_identical_sets_and_the_closed_form_for_two_gaussians():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 4)
    assert measures.frechet_of(x, x) == pytest.approx(0.0, abs=1e-6)
    # diagonal Gaussians: FD = |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) = sum (sqrt s1 - sqrt s2)^2 + ...
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert measures.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    # a full covariance against itself shifted: only the means differ
    a = rng.randn(4, 4)
    s = a @ a.T + np.eye(4)
    assert measures.frechet_distance(np.zeros(4), s, np.full(4, 0.5), s) == pytest.approx(1.0, abs=1e-6)


def test_frechet_of_fewer_images_than_dimensions_is_the_full_size_computation():
    """Two sets of fewer rows than dimensions (rank-deficient covariances, the rule for a class's images): FD
    taken in the span of the rows is dgm-eval's full-size formula, to its sqrtm's rounding."""
    rng = np.random.RandomState(1)
    a = rng.randn(30, 300) @ rng.randn(300, 300) * 0.1 + 0.2
    b = rng.randn(45, 300) + 0.5
    full = measures.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert measures.frechet_of(a, b) == pytest.approx(full, rel=1e-6)
    assert measures.frechet_of(a, a) == pytest.approx(0.0, abs=1e-6)
    # the means' distance is taken in full, not in the span (a shift along a direction no row spans)
    shift = np.zeros(300)
    shift[-1] = 3.0
    assert measures.frechet_of(a, a + shift) == pytest.approx(9.0, abs=1e-6)


def test_cmmd_is_cmmd_pytorchs_definition_on_hand_computed_inputs():
    # x = {e1}, y = {e2}: k_xx = k_yy = 1, k_xy = exp(-|e1 - e2|^2 / (2 sigma^2)) = exp(-2 / 200)
    x, y = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert measures.cmmd(x, y) == pytest.approx(1000 * (2 - 2 * np.exp(-0.01)))
    assert measures.cmmd(x, x) == pytest.approx(0.0)
    assert measures.entropy(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx([np.log(2), 0.0])


@pytest.fixture(scope="module")
def tiny_clip():
    from toolkit.models.tiny import pull_tiny

    pull_tiny(models.get_card("clip-vit-b16"))
    return "clip-vit-b16-tiny"


def test_the_tiny_clip_runs_the_whole_clip_path(rendered, tmp_path, tiny_clip):
    """CLIPScore against each image's own prompt, zero-shot over every class, Vendi, FD and CMMD to real data."""
    import shutil

    real = tmp_path / "real"
    for d in ("photo", "sketch"):
        for c in CLASSES:
            (real / d / c).mkdir(parents=True)
    for k, p in enumerate(sorted(rendered.rglob("*.png"))[:12]):  # stand-in "real" images, 2 per class-domain
        if p.name == "contact_sheet.png":
            continue
        shutil.copy(p, real / ("photo", "sketch")[k % 2] / CLASSES[k % 3] / p.name)
    run_curate(rendered, tmp_path / "out", cfg(scorer=tiny_clip, real=str(real), require_class_agreement=False,
                                               min_clip_score=0.0))
    scores = read_jsonl(tmp_path / "out" / "scores.jsonl")
    assert all(r["clip_score"] is not None and 0 <= r["clip_score"] <= 100 for r in scores)
    assert all(r["class_prob"] is not None and r["predicted"] in CLASSES for r in scores)
    q = read_json(tmp_path / "out" / "quality.json")
    assert q["unscored_classes"] == [] and q["scorer"]["scorer_kind"] == "clip"
    assert q["real"]["overall"]["cmmd"] is not None and q["real"]["overall"]["fd"] is not None
    assert set(q["real"]["per_domain"]) == {"photo", "sketch"}
    # the copied "real" images are found as near-copies of rendered ones (memorisation)
    assert q["real"]["near_copies_of_real"]["total"] >= 10


def test_the_kept_set_shrinks_monotonically_as_a_threshold_rises(rendered, tmp_path):
    kept = []
    for t in (None, 1.0, 0.6, 0.3, 0.0):
        out = tmp_path / f"t{t}"
        try:
            run_curate(rendered, out, cfg(max_entropy=t, require_class_agreement=False))
            kept.append({r["image_id"] for r in read_jsonl(out / "manifest.jsonl")})
        except Exception as e:  # every image rejected: the stage says so
            assert "every one of the" in str(e)
            kept.append(set())
    for a, b in zip(kept, kept[1:]):
        assert b <= a
    assert len(kept[0]) > len(kept[-1])


def test_max_per_class_keeps_the_k_best(rendered, tmp_path):
    run_curate(rendered, tmp_path / "out", cfg(require_class_agreement=False, max_per_class=2))
    scores = read_jsonl(tmp_path / "out" / "scores.jsonl")
    for c in ("daisy", "goldfinch"):
        mine = [r for r in scores if r["class"] == c and not any(x.startswith("near-copy") for x in r["reasons"])]
        kept = [r for r in mine if r["kept"]]
        assert len(kept) == 2
        assert min(r["class_prob"] for r in kept) >= max(r["class_prob"] for r in mine if not r["kept"])


def test_kill_and_resume_gives_the_same_files_and_the_render_folder_is_unchanged(rendered, tmp_path):
    import os

    from helpers import assert_same_files, killed_at

    before = sha256_tree(rendered)
    base = [sys.executable, "-m", "cli", "curate", str(rendered), "--scorer", "efficientnet-lite0-imagenet",
            "--device", "cpu", "--quiet", "--out"]
    env = {**os.environ}
    subprocess.run(base + [str(tmp_path / "ref")], cwd=ROOT, env=env, check=True, capture_output=True)
    for point in ("curate.after_scores", "curate.after_links"):
        out = tmp_path / point
        killed_at(base + [str(out)], point, env)
        assert not (out / "manifest.jsonl").exists()  # nothing half-written looks complete
        res = CliRunner().invoke(main, [*base[3:], str(out)])  # resumed in this process: it reads only `out`
        assert res.exit_code == 0, (res.output[-2000:], repr(res.exception))
        assert_same_files(tmp_path / "ref", out, masked_text=(str(tmp_path / "ref"), str(out)))
    assert sha256_tree(rendered) == before


def test_dg_pretrain_and_cl_train_on_a_curated_folder(rendered, tmp_path):
    from toolkit.stages.dg.config import DGConfig
    from toolkit.stages.dg.stage import run_dg
    from toolkit.stages.pretrain.config import PretrainConfig
    from toolkit.stages.pretrain.stage import pretrain

    run_curate(rendered, tmp_path / "cur", cfg(require_class_agreement=False, max_per_class=4))
    kept = read_jsonl(tmp_path / "cur" / "manifest.jsonl")
    card = pretrain(PretrainConfig(data=str(tmp_path / "cur"), epochs=1, batch_size=4, image_size=16, quiet=True,
                                   threads=1), tmp_path / "pt").data
    assert card["images"] == len(kept) < 18
    # data-free DG on the curated images, tested on real domains that hold the same classes
    real = tmp_path / "real"
    for d in ("a", "b"):
        for c in CLASSES:
            (real / d / c).mkdir(parents=True)
            for k, r in enumerate(x for x in kept if x["class"] == c):
                (real / d / c / f"{k}.png").write_bytes((rendered / r["path"]).read_bytes())
    res = run_dg(DGConfig(data=str(real), synthetic=str(tmp_path / "cur"), data_free=True, steps=2, checkpoint_freq=1,
                          batch_size=2, image_size=16, quiet=True, threads=1), tmp_path / "dg").data
    assert res["rows"]
    # with and without the curated images, each rendered domain an environment of its own: the report pairs the
    # arms before its DG section, and says per rendered domain what it held, its scores and its validation accuracy
    from toolkit.stages.report.page import write_report

    for arm, synthetic in (("none", None), ("cur", str(tmp_path / "cur"))):
        run_dg(DGConfig(data=str(real), synthetic=synthetic, synthetic_envs="per-domain", steps=2, checkpoint_freq=1,
                        batch_size=2, image_size=16, quiet=True, threads=1), tmp_path / "arms" / arm)
    md = write_report(tmp_path / "arms")["markdown"].read_text()
    assert md.index("## What the synthetic data changed") < md.index("## Domain generalization")
    assert "| ERM | cur (per-domain) vs none | a | 1 |" in md
    table = md[md.index("Rendered domains of `cur`"):]
    assert "| rendered domain | images | kept of rendered | CLIPScore | class agreement (%) | entropy | " \
           "validation acc (%) | runs |" in table
    for d in ("origami", "stained-glass"):
        n = sum(r["domain"] == d for r in kept)
        assert f"| {d} | {n} | {n} of 9 |" in table
        assert table.split(f"| {d} | {n} | {n} of 9 |")[1].split("\n")[0].rstrip().endswith("| 2 |")  # two runs
    # cl: the curated images as its data, and the backbone pretrained on them under its first task (Premonition)
    from toolkit.stages.cl.config import CLConfig
    from toolkit.stages.cl.stage import run_cl

    r = run_cl(CLConfig(data=str(tmp_path / "cur"), strategy="ncm", weights=str(tmp_path / "pt"), initial_classes=2,
                        increment=1, image_size=16, quiet=True, threads=1), tmp_path / "cl").data
    assert r["weights"] == "pretrained:pt" and len(r["accuracy_matrix"]) == 2
    assert r["data"] == str(tmp_path / "cur") and sorted(sum(r["tasks"], [])) == sorted(CLASSES)
    assert sum(n for _, n in r["counts"][-1]) == len(CLASSES)  # 20% of each class's 4 kept images: one each


def test_bad_input_is_one_line(rendered, tmp_path, tiny_clip):
    # a folder that is not a render output
    (tmp_path / "plain").mkdir()
    one_line_error(cli("curate", tmp_path / "plain", "--out", tmp_path / "o1"), "not a render output")
    # --real with no class in common
    one_line_error(cli("curate", rendered, "--real", "digits", "--out", tmp_path / "o2", "--scorer",
                       "efficientnet-lite0-imagenet"), "no class in common")
    assert not (tmp_path / "o2").exists()
    # thresholds out of range
    one_line_error(cli("curate", rendered, "--max-entropy", "-1", "--out", tmp_path / "o3"), "max-entropy")
    one_line_error(cli("curate", rendered, "--dedup-threshold", "1.5", "--out", tmp_path / "o3"), "dedup-threshold")
    one_line_error(cli("curate", rendered, "--min-clip-score", "101", "--out", tmp_path / "o3"), "min-clip-score")
    # a scorer card that is absent, or of the wrong kind; a CLIPScore threshold without a CLIP
    one_line_error(cli("curate", rendered, "--scorer", "no-such-model", "--out", tmp_path / "o4"), "no-such-model")
    one_line_error(cli("curate", rendered, "--scorer", "tiny-lcm", "--out", tmp_path / "o4"), "not a scorer")
    one_line_error(cli("curate", rendered, "--scorer", "clip-vit-l14", "--out", tmp_path / "o4"), "clip-vit-l14")
    one_line_error(cli("curate", rendered, "--scorer", "efficientnet-lite0-imagenet", "--min-clip-score", "20",
                       "--out", tmp_path / "o4"), "CLIP scorer")
    # --out inside the render folder: the render folder is never modified
    one_line_error(cli("curate", rendered, "--out", rendered / "sub"), "never modified")


def test_missing_and_corrupt_images_are_rejected_with_their_reason(rendered, tmp_path):
    import shutil

    src = tmp_path / "render"
    shutil.copytree(rendered, src)
    rows = read_jsonl(src / "manifest.jsonl")
    (src / rows[0]["path"]).unlink()
    (src / rows[1]["path"]).write_bytes(b"\x89PNG not really")
    res = cli("curate", src, "--out", tmp_path / "out", "--scorer", "efficientnet-lite0-imagenet",
              "--no-require-class-agreement", "--quiet")
    assert res.exit_code == 0, res.output
    scores = {r["image_id"]: r for r in read_jsonl(tmp_path / "out" / "scores.jsonl")}
    assert scores[rows[0]["image_id"]]["reasons"] == ["missing: the file is not in the render folder"]
    assert scores[rows[1]["image_id"]]["reasons"][0].startswith("changed since rendering")
    assert len(read_jsonl(tmp_path / "out" / "manifest.jsonl")) <= 16
    assert json.loads((tmp_path / "out" / "quality.json").read_text())["counts"]["reasons"]["missing"] == 1
