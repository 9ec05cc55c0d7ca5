"""The leakage guard of leave-one-domain-out DG: a synthetic image guided by a photo of the test domain never
trains (nor validates) the run that tests on it. The guided images here are real digits in a render folder's
layout whose manifest rows name their guide (`init_image`: path, domain, sha256), as a guided render writes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from toolkit.core.files import read_json, write_json, write_jsonl
from toolkit.learn.data import rotated_digits
from toolkit.stages.dg.config import DGConfig
from toolkit.stages.dg.stage import RunSpec, plan_run, resolve, run_dg

GUIDES = ("0", "15")  # the real domains whose photos guided the images
PER_CLASS = 3


def guided_folder(root):
    real = rotated_digits()
    rows = []
    for guide in GUIDES:
        d = real.domain(guide)
        for c in range(10):
            for k, i in enumerate(np.flatnonzero(d.labels == c)[:PER_CLASS]):
                path = f"watercolor/{c}/{guide}-{k}.png"
                (root / "watercolor" / str(c)).mkdir(parents=True, exist_ok=True)
                Image.fromarray(d.images[i]).convert("RGB").save(root / path)
                rows.append({"path": path, "class": str(c), "domain": "watercolor", "prompt": f"a {c}, watercolor",
                             "init_image": {"path": f"digits/{guide}/{i}", "domain": guide, "sha256": "0" * 64},
                             "strength": 0.5})
    write_jsonl(root / "manifest.jsonl", rows)
    write_json(root / "render.json", {"stage": "render"})
    return root


def test_images_guided_by_the_test_domain_never_enter_its_run(tmp_path):
    folder = guided_folder(tmp_path / "guided")
    cfg = DGConfig(data="digits", synthetic=str(folder), test_domains=list(GUIDES), steps=2, checkpoint_freq=1,
                   batch_size=4, image_size=16, quiet=True, threads=1)
    # the plan of each run: the synthetic environment's train and validation splits hold no image guided by a test
    # domain of that run, and every other guided image is still there
    sw = resolve(cfg)
    sw.images(cfg)
    (synth,) = [e for e in sw.envs if not e.real]
    assert sorted(set(synth.source_of)) == list(GUIDES)
    for t in GUIDES:
        rp = plan_run(cfg, sw, RunSpec((t,), 0, 0))
        used = np.concatenate(rp.splits["synthetic"])
        assert len(used) == 10 * PER_CLASS and t not in set(synth.source_of[used])
        assert rp.leakage == {"kept": 10 * PER_CLASS, "dropped": 10 * PER_CLASS, "test_domains": [t]}
    # the sweep: each run's record and rows say what the guard dropped; its evaluations saw the kept images only
    res = run_dg(cfg, tmp_path / "dg").data
    for t in GUIDES:
        rec = read_json(tmp_path / "dg" / "runs" / f"test-{t}-trial0-hp0" / "records.json")
        assert rec["leakage_guard"] == {"kept": 30, "dropped": 30, "test_domains": [t]}
        counts = rec["records"][-1]["acc"]["synthetic"]
        assert counts["in"][1] + counts["out"][1] == 10 * PER_CLASS
    assert {r["test_domain"]: r["leakage_guard"]["dropped"] for r in res["rows"]} == {t: 30 for t in GUIDES}
