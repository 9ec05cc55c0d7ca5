"""The `curate` stage: every rendered image scored, filtered and de-duplicated; what is kept is a training set.

    OUT/scores.jsonl        one row per rendered image: id, class, domain, every score, kept, every reason
    OUT/quality.json        set measures: Vendi per class (images, prompts), FD / CMMD to --real, counts
    OUT/<domain>/<class>/…  the kept images, hard links to the render folder's files (copies across
                            filesystems); the render folder is only read
    OUT/manifest.jsonl      the kept rows (the render rows plus their scores): training reads it as it
                            reads a render folder's
    OUT/DATASET.md, OUT/dataset_card.json   the dataset card (card.py)
    OUT/curate.json         the record: the render folder's manifest digest, the scorer and its sha256,
                            every threshold

Filters (each image collects every reason that applies; `kept` means none did):
unreadable or changed since rendering, class disagreement (--require-class-agreement), entropy above
--max-entropy, CLIPScore below --min-clip-score, a near-copy of a better-scored image of its class,
beyond the --max-per-class best. Near-copies are found over every readable image before the
thresholds, so raising a threshold can only shrink the kept set. Ranking: CLIPScore, then the
probability of the image's own class, then the image id.

Scoring runs in batches on the device; DataLoader workers read, verify (sha256), decode, hash (pHash)
and preprocess the next images meanwhile. Everything is a pure function of the render folder, the scorer
and the thresholds: a killed run re-run writes the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import read_json, read_jsonl, sha256_bytes, sha256_file, write_json, write_jsonl
from ...core.progress import progress_bar
from ...core.stagerun import StageResult, StageRun
from . import dedup, measures
from .config import CurateConfig
from .scorers import Scorer, best_present, load_scorer

RECORD_KEYS = ("image_id", "class", "domain", "prompt", "path", "sha256")
# How each rejection reason's text begins: the kinds counted in quality.json and the card.
REASONS = ("unreadable", "missing", "changed since rendering", "class disagreement", "entropy", "CLIPScore",
           "near-copy", "beyond")


# ----------------------------------------------------------------------------- the render folder
def read_source(source: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The manifest rows and record of a finished render folder (one line for anything else)."""
    source = Path(source)
    if not (source / "render.json").is_file() or not (source / "manifest.jsonl").is_file():
        raise AugurError(f"{source}: not a render output (it needs render.json and manifest.jsonl, as "
                         "`augur render` writes them)")
    record = read_json(source / "render.json")
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise AugurError(f"{source / 'render.json'}: not a render record (no identity)")
    rows = read_jsonl(source / "manifest.jsonl")
    if not rows:
        raise AugurError(f"{source}: the manifest lists no images (is the render finished?)")
    for n, row in enumerate(rows, 1):
        bad = [k for k in RECORD_KEYS if not isinstance(row.get(k), str)]
        if bad:
            raise AugurError(f"{source / 'manifest.jsonl'}:{n}: row lacks {', '.join(bad)}")
        if Path(row["path"]).is_absolute() or ".." in Path(row["path"]).parts:
            raise AugurError(f"{source / 'manifest.jsonl'}:{n}: path {row['path']!r} leaves the folder")
    prompts = record.get("prompts")
    per = record["identity"].get("images_per_prompt")
    if isinstance(prompts, str) and Path(prompts).is_file() and isinstance(per, int):
        wanted = len(read_jsonl(Path(prompts))) * per
        if len(rows) < wanted and not list(source.glob("manifest-*-of-*.jsonl")):
            raise AugurError(f"{source}: the render is not finished ({len(rows)} of {wanted} images); "
                             "re-run its `augur render` command first")
    return rows, record


# ----------------------------------------------------------------------------- decoding (DataLoader workers)
class _Decode:
    """(position, pixels or None, pHash or None, error or None) for one image; runs in the workers."""

    def __init__(self, items: list[tuple[Any, str | None]], preprocess):
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import io

        from ...learn.data import load_image, to_rgb

        src, sha = self.items[i]
        try:
            if isinstance(src, np.ndarray):
                image = load_image(src)
            else:
                data = Path(src).read_bytes()
                if sha is not None and sha256_bytes(data) != sha:
                    return i, None, None, "changed since rendering: sha256 differs from the render manifest"
                from PIL import Image

                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    image = to_rgb(im)
            return i, self.preprocess(image), dedup.phash(image), None
        except FileNotFoundError:
            return i, None, None, "missing: the file is not in the render folder"
        except Exception as e:  # PIL raises a zoo of types for broken files
            return i, None, None, f"unreadable: {e.__class__.__name__}"


def score_all(scorer: Scorer, items: list[tuple[Any, str | None]], prompts: list[str], cfg: CurateConfig,
              device: str, desc: str) -> dict[str, Any]:
    """Every item scored in batches: embeddings, class distributions, CLIPScores, pHashes, errors."""
    import torch
    from torch.utils.data import DataLoader

    workers = cfg.workers if cfg.workers is not None else (min(4, os.cpu_count() or 1) if device == "cuda" else 1)
    loader = DataLoader(_Decode(items, scorer.preprocess), batch_size=cfg.batch_size, num_workers=workers,
                        collate_fn=list, pin_memory=device == "cuda", prefetch_factor=4 if workers else None)
    n = len(items)
    out: dict[str, Any] = {"emb": None, "probs": None, "clip": None, "hash": np.zeros(n, dtype=np.uint64),
                           "error": [None] * n}
    bar = progress_bar(n, desc, unit="img", disable=not cfg.progress)
    for batch in loader:
        ok = [b for b in batch if b[3] is None]
        for i, _, _, err in batch:
            out["error"][i] = err
        if ok:
            pos = np.array([b[0] for b in ok])
            s = scorer(torch.stack([b[1] for b in ok]), [prompts[i] for i in pos])
            if out["emb"] is None:
                out["emb"] = np.zeros((n, s.embeddings.shape[1]), dtype=np.float32)
            out["emb"][pos] = s.embeddings
            if s.class_probs is not None:
                if out["probs"] is None:
                    out["probs"] = np.zeros((n, s.class_probs.shape[1]), dtype=np.float64)
                out["probs"][pos] = s.class_probs
            if s.clip_scores is not None:
                if out["clip"] is None:
                    out["clip"] = np.zeros(n, dtype=np.float64)
                out["clip"][pos] = s.clip_scores
            out["hash"][pos] = [b[2] for b in ok]
        bar.update(len(batch))
    bar.close()
    if out["emb"] is None:
        out["emb"] = np.zeros((n, 1), dtype=np.float32)
    return out


# ----------------------------------------------------------------------------- the filters
def judge(rows: list[dict[str, Any]], sc: dict[str, Any], scorer: Scorer, cfg: CurateConfig) -> list[dict[str, Any]]:
    """One scores row per rendered image (see the module docstring for the filters and their order)."""
    scored = {c: k for k, c in enumerate(scorer.scored)}
    out = []
    for i, row in enumerate(rows):
        s: dict[str, Any] = {"image_id": row["image_id"], "class": row["class"], "domain": row["domain"],
                             "path": row["path"], "scorer": scorer.name}
        reasons = []
        if sc["error"][i] is not None:
            reasons.append(sc["error"][i])
            s.update(clip_score=None, class_agreement=None, class_prob=None, predicted=None, entropy=None)
        else:
            s["clip_score"] = round(float(sc["clip"][i]), 4) if sc["clip"] is not None else None
            k = scored.get(row["class"])
            if k is None or sc["probs"] is None:
                s.update(class_agreement=None, class_prob=None, predicted=None, entropy=None)
            else:
                p = sc["probs"][i]
                top = int(np.argmax(p))
                s.update(class_agreement=top == k, class_prob=round(float(p[k]), 6), predicted=scorer.scored[top],
                         entropy=round(float(measures.entropy(p[None])[0]), 6))
                if cfg.require_class_agreement and top != k:
                    reasons.append(f"class disagreement: top-1 is {scorer.scored[top]!r} (p {p[top]:.3f})")
                if cfg.max_entropy is not None and s["entropy"] > cfg.max_entropy:
                    reasons.append(f"entropy {s['entropy']:.3f} > max {cfg.max_entropy:g}")
            if cfg.min_clip_score is not None and s["clip_score"] is not None and s["clip_score"] < cfg.min_clip_score:
                reasons.append(f"CLIPScore {s['clip_score']:.2f} < min {cfg.min_clip_score:g}")
        s["reasons"] = reasons
        out.append(s)
    _near_copies(out, sc, cfg)
    if cfg.max_per_class is not None:
        for cls, members in _by_class(out).items():
            passing = [i for i in members if not out[i]["reasons"]]
            for rank, i in enumerate(passing):
                if rank >= cfg.max_per_class:
                    out[i]["reasons"].append(f"beyond the {cfg.max_per_class} best of its class")
    for s in out:
        s["kept"] = not s["reasons"]
    return out


def _rank_key(s: dict[str, Any]):
    return (-(s["clip_score"] if s["clip_score"] is not None else -1.0),
            -(s["class_prob"] if s["class_prob"] is not None else -1.0), s["image_id"])


def _by_class(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """class -> positions, best-ranked first."""
    groups: dict[str, list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: _rank_key(rows[i])):
        groups.setdefault(rows[i]["class"], []).append(i)
    return dict(sorted(groups.items()))


def _near_copies(out: list[dict[str, Any]], sc: dict[str, Any], cfg: CurateConfig) -> None:
    max_bits = cfg.hash_distance if cfg.hash_distance >= 0 else -1
    for cls, members in _by_class(out).items():
        readable = [i for i in members if sc["error"][i] is None]
        dropped = dedup.deduplicate(readable, sc["hash"], sc["emb"], cfg.dedup_threshold, max_bits)
        for i, info in dropped.items():
            twin = out[info["twin"]]
            out[i]["duplicate_of"] = twin["image_id"]
            out[i]["reasons"].append(f"near-copy of {twin['image_id']} (cosine {info['cosine']:.3f}, pHash distance "
                                     f"{info['hash_distance']})")


# ----------------------------------------------------------------------------- the real data
def real_items(real: str, classes: list[str]) -> tuple[list[tuple[Any, None]], list[str], list[str], str]:
    """The real images of the classes in common: (items, their domains, their classes, the data's name)."""
    from ...learn.data import load

    ds = load(real, report=False)
    common = sorted(set(classes) & set(ds.classes))
    if not common:
        raise AugurError(f"--real {real}: no class in common with the rendered set (real: "
                         f"{', '.join(ds.classes[:6])}{', …' if len(ds.classes) > 6 else ''}; rendered: "
                         f"{', '.join(classes[:6])}{', …' if len(classes) > 6 else ''}); the Fréchet distance "
                         "compares the same classes, so it is refused")
    items, domains, labels = [], [], []
    for d in ds.domains:
        for src, y in zip(d.images, d.labels):
            if ds.classes[y] in common:
                items.append((src, None))
                domains.append(d.name)
                labels.append(ds.classes[y])
    return items, domains, labels, ds.source


def real_measures(out: list[dict[str, Any]], sc: dict[str, Any], real: dict[str, Any], scorer: Scorer,
                  cfg: CurateConfig) -> dict[str, Any]:
    """FD (and CMMD) of the kept images to the real ones, overall and per real domain; near-copies of real
    images (memorisation), per real domain."""
    ok_real = np.array([e is None for e in real["sc"]["error"]])
    r_emb, r_hash = real["sc"]["emb"][ok_real], real["sc"]["hash"][ok_real]
    r_dom = np.array(real["domains"])[ok_real]
    r_cls = np.array(real["classes"])[ok_real]
    common = set(r_cls)
    kept = np.array([s["kept"] and s["class"] in common for s in out])
    readable = np.array([sc["error"][i] is None for i in range(len(out))])
    k_emb = sc["emb"][kept]
    result: dict[str, Any] = {"real": real["source"], "real_images": int(ok_real.sum()),
                              "classes_in_common": sorted(common), "features": scorer.describe()["embedding"]}

    def distances(mask: np.ndarray) -> dict[str, Any]:
        if kept.sum() < 2 or mask.sum() < 2:
            return {"fd": None, "cmmd": None, "why": "fewer than 2 images on one side"}
        d = {"fd": round(measures.frechet_of(k_emb, r_emb[mask]), 6)}
        d["cmmd"] = round(measures.cmmd(k_emb, r_emb[mask]), 6) if scorer.kind == "clip" else None
        return d

    result["overall"] = distances(np.ones(len(r_emb), dtype=bool))
    result["per_domain"] = {d: distances(r_dom == d) for d in sorted(set(r_dom))}
    # memorisation: a rendered image that is a near-copy of a real one
    pos = np.flatnonzero(readable)
    nn, cos, dist = dedup.nearest(sc["hash"][pos], sc["emb"][pos], r_hash, r_emb)
    copies: dict[str, int] = {d: 0 for d in sorted(set(r_dom))}
    max_bits = cfg.hash_distance
    for j, i in enumerate(pos):
        if cos[j] >= cfg.dedup_threshold or (max_bits >= 0 and dist[j] <= max_bits):
            dom = str(r_dom[nn[j]])
            copies[dom] += 1
            out[i]["real_twin"] = {"domain": dom, "cosine": round(float(cos[j]), 6), "hash_distance": int(dist[j])}
    result["near_copies_of_real"] = {"per_domain": copies, "total": int(sum(copies.values())),
                                     "of_rendered": int(len(pos))}
    return result


# ----------------------------------------------------------------------------- measures and outputs
def set_measures(rows: list[dict[str, Any]], out: list[dict[str, Any]], sc: dict[str, Any]) -> dict[str, Any]:
    from ..extrapolate.stage import open_embedder

    embed = open_embedder()
    readable = [i for i in range(len(out)) if sc["error"][i] is None]
    per_class: dict[str, Any] = {}
    for cls in sorted({s["class"] for s in out}):
        mine = [i for i in readable if out[i]["class"] == cls]
        kept = [i for i in mine if out[i]["kept"]]
        prompts_all = embed([rows[i]["prompt"] for i in mine])
        per_class[cls] = {
            "rendered": sum(1 for s in out if s["class"] == cls), "readable": len(mine), "kept": len(kept),
            "vendi_images": round(measures.vendi(sc["emb"][mine]), 6),
            "vendi_images_kept": round(measures.vendi(sc["emb"][kept]), 6),
            "vendi_prompts": round(measures.vendi(prompts_all), 6),
            "vendi_prompts_kept": round(measures.vendi(prompts_all[[mine.index(i) for i in kept]]), 6)
            if kept else 0.0}
    return {"per_class": per_class, "prompt_embedder": {"model": "all-minilm-l6-v2", "sha256": embed.sha256}}


def counts(out: list[dict[str, Any]]) -> dict[str, Any]:
    """Kept/rejected per class and per domain, and how often each filter fired."""
    def reason_kind(r: str) -> str:
        return next((k for k in REASONS if r.startswith(k)), r)

    by: dict[str, dict[str, dict[str, int]]] = {"class": {}, "domain": {}}
    fired: dict[str, int] = {}
    for s in out:
        for key in ("class", "domain"):
            c = by[key].setdefault(s[key], {"rendered": 0, "kept": 0})
            c["rendered"] += 1
            c["kept"] += s["kept"]
        for r in s["reasons"]:
            k = reason_kind(r)
            fired[k] = fired.get(k, 0) + 1
    return {"rendered": len(out), "kept": sum(s["kept"] for s in out), "per_class": by["class"],
            "per_domain": by["domain"], "reasons": dict(sorted(fired.items()))}


def link(src: Path, dst: Path) -> str:
    """A hard link to `src` at `dst` (a copy across filesystems); an existing identical file stays."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
        return "link" if os.path.samefile(src, dst) else "copy"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "link"
    except OSError:
        shutil.copyfile(src, tmp)
        how = "copy"
    os.replace(tmp, dst)
    return how


def run_curate(source: Path, out: Path, cfg: CurateConfig) -> StageResult:
    from ...core import threads as thread_policy
    from ...core.device import pick_device
    from ...core.outdir import check_out_path

    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    rows, record = read_source(source)
    check_out_path(out)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise AugurError(f"--out {out} is inside the render folder {source}; the render folder is never modified")
    classes = sorted({r["class"] for r in rows})
    name = cfg.scorer if cfg.scorer != "auto" else best_present()
    device = pick_device(cfg.device)
    choice = thread_policy.apply(cfg.threads)
    scorer = load_scorer(name, classes, device)
    if cfg.min_clip_score is not None and not scorer.measures_prompts:
        raise AugurError(f"--min-clip-score needs a CLIP scorer; '{name}' scores no prompts")
    real = None
    if cfg.real:
        items, domains, labels, real_source = real_items(cfg.real, classes)
    identity = {"source": str(source.resolve()), "source_manifest_sha256": sha256_file(source / "manifest.jsonl"),
                **scorer.describe(), **cfg.thresholds(), "real": cfg.real,
                "real_images": len(items) if cfg.real else None}
    with StageRun(out, "curate", identity, hint="use another --out, or delete that folder") as run:
        sc = score_all(scorer, [(source / r["path"], r["sha256"]) for r in rows], [r["prompt"] for r in rows], cfg,
                       device, "curate")
        kill_point("curate.after_scores")
        judged = judge(rows, sc, scorer, cfg)
        quality = {"scorer": scorer.describe(), "thresholds": cfg.thresholds(), "counts": counts(judged),
                   **set_measures(rows, judged, sc)}
        if cfg.real:
            real = {"sc": score_all(scorer, items, [""] * len(items), cfg, device, "curate real"),
                    "domains": domains, "classes": labels, "source": real_source}
            quality["real"] = real_measures(judged, sc, real, scorer, cfg)
        unscored = [c for c in classes if c not in scorer.scored]
        quality["unscored_classes"] = unscored
        quality["imagenet_matches"] = scorer.matches if scorer.kind == "classifier" else None
        write_jsonl(out / "scores.jsonl", judged)
        write_json(out / "quality.json", quality)
        hows = set()
        kept_rows = []
        for row, s in zip(rows, judged):
            if s["kept"]:
                hows.add(link(source / row["path"], out / row["path"]))
                kept_rows.append({**row, "curate": {k: s[k] for k in ("clip_score", "class_agreement", "class_prob",
                                                                      "predicted", "entropy", "scorer")}})
        kill_point("curate.after_links")
        if not kept_rows:
            raise AugurError(f"curate: every one of the {len(rows)} images was rejected "
                             f"({', '.join(f'{k} {v}' for k, v in quality['counts']['reasons'].items())}); "
                             f"see {out / 'scores.jsonl'} and loosen a threshold")
        from .card import write_card

        write_card(out, source, record, judged, quality, scorer, cfg)
        best_worst_sheet(out, source, judged)
        write_jsonl(out / "manifest.jsonl", kept_rows)  # last: its presence means the folder is complete
        run.finish()
    wall = time.perf_counter() - t0
    c = quality["counts"]
    line = (f"curate: kept {c['kept']} of {c['rendered']} images with {scorer.name} on {device} "
            f"({', '.join(f'{k} {v}' for k, v in c['reasons'].items()) or 'nothing rejected'}"
            f"{f'; {len(unscored)} class(es) unscored' if unscored else ''}); {wall:.1f} s → {out / 'manifest.jsonl'}")
    warnings = [f"curate: class agreement unscored for {len(unscored)} class(es) the scorer cannot name: "
                f"{', '.join(unscored[:8])}{' …' if len(unscored) > 8 else ''}"] if unscored else []
    return StageResult([line], warnings=warnings, files={"manifest": str(out / "manifest.jsonl"),
                                                         "scores": str(out / "scores.jsonl")},
                       data={"quality": quality, "links": sorted(hows), "threads": choice.threads})


def best_worst_sheet(out: Path, source: Path, judged: list[dict[str, Any]], per_side: int = 4,
                     thumb: int = 64) -> Path:
    """Per class: its best-scored images on the left, its worst on the right (what a person must look at)."""
    from PIL import Image, ImageDraw

    from ...core.files import atomic_write

    groups = _by_class(judged)
    label_w, gap = 110, 12
    width = label_w + 2 * per_side * thumb + gap
    sheet = Image.new("RGB", (width, 14 + max(1, len(groups)) * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 2), "best scored", fill="black")
    draw.text((label_w + per_side * thumb + gap, 2), "worst scored", fill="black")
    for r, (cls, members) in enumerate(groups.items()):
        y = 14 + r * (thumb + 14)
        draw.text((4, y + thumb // 2), cls[:17], fill="black")
        best, worst = members[:per_side], members[::-1][:per_side]
        for side, chosen in enumerate((best, worst)):
            for k, i in enumerate(chosen):
                x = label_w + side * (per_side * thumb + gap) + k * thumb
                s = judged[i]
                try:
                    with Image.open(source / s["path"]) as im:
                        tile = im.convert("RGB").resize((thumb, thumb))
                except Exception:  # an unreadable image shows as grey
                    tile = Image.new("RGB", (thumb, thumb), "grey")
                sheet.paste(tile, (x, y))
                mark = "kept" if s["kept"] else "out"
                draw.text((x + 2, y + thumb), mark, fill="green" if s["kept"] else "red")
    target = out / "best_worst.png"
    with atomic_write(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target
