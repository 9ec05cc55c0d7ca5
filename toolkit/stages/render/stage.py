"""The `render` stage: every prompt row becomes images in the DomainBed layout, plus a manifest.

    OUT/<domain>/<class>/<image_id>.png   (directly a training set; names encoded by core.names)
    OUT/manifest.jsonl                     (one row per image: exact labels, prompt, seed, model, settings, sha256)
    OUT/render.json                        (what run this folder holds; another run is refused)
    OUT/contact_sheet.png                  (a grid of samples per class x domain)
    OUT/DATASET.md, OUT/dataset_card.json  (the dataset card's render part: card.py)

Folder and file names are derived from labels injectively (`core.names.path_name`); the manifest
keeps the exact labels, and training reads labels from it, not from folder names.

The device is never kept waiting for the disk: a batch's PNGs are encoded, hashed and written by a
pool of writer threads (PIL's encoder and hashlib release the GIL) while the next batch renders, and
the batch's manifest rows are appended once all its files are on disk, in order. A kill anywhere
leaves whole files and a manifest that lists only finished ones.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import __version__
from ...core import outdir
from ...core.cache import derive_seed, key_of
from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import (append_jsonl, atomic_write, read_json, read_jsonl, sha256_bytes, sha256_file, write_bytes,
                           write_jsonl)
from ...core.names import check_label, path_name
from ...core.progress import progress_bar
from ...core.stagerun import StageResult, StageRun
from .card import write_render_card
from .config import RenderConfig
from .guides import Guides
from .pipeline import Renderer, Resolved, Unit, resolve_model

REQUIRED_ROW_KEYS = ("id", "class", "domain", "prompt")


def relpath(unit: Unit) -> str:
    return f"{path_name(unit.row['domain'])}/{path_name(unit.row['class'])}/{path_name(unit.image_id)}.png"


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    if not rows:
        raise AugurError(f"{path}: no prompt rows")
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in REQUIRED_ROW_KEYS if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise AugurError(f"{path}:{lineno}: row lacks {', '.join(missing)} (needs {', '.join(REQUIRED_ROW_KEYS)})")
        for key in ("id", "class", "domain"):
            check_label(row[key], f"{path}:{lineno}: {key}")
        if row["id"] in seen:
            raise AugurError(f"{path}:{lineno}: id '{row['id']}' repeats line {seen[row['id']]}")
        seen[row["id"]] = lineno
    return rows


def plan(rows: list[dict[str, Any]], images_per_prompt: int, seed: int, shard: tuple[int, int],
         strengths: list[float] | None = None, guides: Guides | None = None) -> list[Unit]:
    """All images of the run in a fixed order; a shard keeps the ones whose id hashes to it. A guided run
    draws every (row, k) at each strength, from one guide and one seed: strength by strength, so that a GPU
    batch holds one strength (the pipelines take one per call)."""
    i, n = shard
    units = []
    for strength in (strengths or [None]):
        for row in rows:
            for k in range(images_per_prompt):
                image_id = f"{row['id']}-{k}" if strength is None else f"{row['id']}-{k}-s{strength:g}"
                if n == 1 or int(key_of("shard", image_id)[:8], 16) % n == i:
                    units.append(Unit(image_id, row, k, derive_seed(seed, "render", row["id"], k), strength,
                                      guides.pick(row, k, seed) if guides is not None else None))
    return units


def png_bytes(array, info: dict[str, Any]) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("augur", json.dumps(info, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def manifest_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return "manifest.jsonl" if n == 1 else f"manifest-{i}-of-{n}.jsonl"


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows appended so far; a last line torn by a crash is dropped (its image is simply redone)."""
    return read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []


def done_units(out: Path, units: list[Unit]) -> dict[str, dict[str, Any]]:
    """Manifest rows whose image is on disk with the recorded sha256."""
    wanted = {u.image_id for u in units}
    done = {}
    for name in sorted(p.name for p in out.glob("manifest*.jsonl")):
        for row in read_manifest(out / name):
            iid = row.get("image_id")
            if iid in wanted and iid not in done:
                p = out / row.get("path", "")
                if p.is_file() and sha256_file(p) == row.get("sha256"):
                    done[iid] = row
    return done


def render(prompts: Path, out: Path, cfg: RenderConfig | None = None, renderer: Renderer | None = None
           ) -> dict[str, Any]:
    """Render a prompts file into OUT; resumable, shardable. Returns the run summary."""
    cfg = cfg or RenderConfig()
    t0 = time.perf_counter()
    prompts, out = Path(prompts), Path(out)
    shard = cfg.shard_tuple()
    rows = load_rows(prompts)
    outdir.check_out_path(out)
    if out.is_dir() and (other := outdir.foreign_stage(out, "render")):
        raise AugurError(f"{out} holds a {other} run, not a render run; use another --out")
    # the guides are checked before the model loads: a guide folder without the prompts' classes is one line
    guides = Guides(cfg.init_images, cfg.init_domains, [r["class"] for r in rows]) if cfg.init_images else None
    if renderer is None:
        renderer = Renderer(resolve_model(cfg.model, cfg.backend), cfg)
    units = plan(rows, cfg.images_per_prompt, cfg.seed, shard, renderer.strengths, guides)
    resolved: Resolved = renderer.resolved
    identity = {"prompts_sha256": sha256_file(prompts), "model": resolved.card.name, "model_sha256": resolved.sha256,
                "images_per_prompt": cfg.images_per_prompt, "seed": cfg.seed, **renderer.settings()}
    extra = {"prompts": str(prompts.resolve())}
    tokens = renderer.prompt_tokens([r["prompt"] for r in rows])
    if tokens is not None:
        extra["prompt_tokens"] = tokens
    if guides is not None:  # absent for text-only runs: older folders keep their identity
        identity["init_images"] = guides.identity()
        extra["init_images"] = guides.data if guides.data == "digits" else str(Path(guides.data).expanduser().resolve())
    _refuse_other_gpu_batch(out, identity)
    # A shard claims the folder beside its siblings (core/outdir.py): every process of a launch writes.
    with StageRun(out, "render", identity, hint="use another --out, or delete that folder", shard=shard,
                  extra=extra) as run:
        manifest = out / manifest_name(shard)
        done = done_units(out, units)
        todo = [u for u in units if u.image_id not in done]
        base = {"model": resolved.card.name, "model_sha256": resolved.sha256, **renderer.settings(),
                **renderer.provenance(), "run_seed": cfg.seed, "toolkit_version": __version__}
        bar = progress_bar(len(units), "render", unit="img", initial=len(units) - len(todo), disable=not cfg.progress,
                       leave=True)
        t_render = time.perf_counter()
        _draw(todo, renderer, cfg, out, manifest, base, guides, done, bar)
        bar.close()
        # Canonical order once complete, whatever the interruptions: the unit order.
        final = [done[u.image_id] for u in units]
        write_jsonl(manifest, final)
        if shard[1] == 1:
            contact_sheet(out, final)
            write_render_card(out, {"identity": identity, **extra}, final)
        run.finish()
    wall = time.perf_counter() - t0
    rendered = len(todo)
    return {"images": len(units), "rendered": rendered, "resumed": len(units) - rendered, "wall_seconds": wall,
            "model_digest": "cached" if resolved.digest_cached else "computed",
            "images_per_second": rendered / max(time.perf_counter() - t_render, 1e-9) if rendered else 0.0,
            "manifest": str(manifest), "prompt_tokens": tokens, "warnings": list(renderer.warnings),
            "line": (f"render: {len(units)} images ({rendered} new, {len(units) - rendered} already done) "
                     f"with {resolved.card.name} on {renderer.cfg.backend}/{renderer.device}/{renderer.dtype}, "
                     f"{renderer.steps} steps, {renderer.size}px"
                     + (" (model folder's digest from the cache: no file changed)" if resolved.digest_cached else "")
                     + (f", guided by {cfg.init_images} at strength {', '.join(f'{x:g}' for x in renderer.strengths)}"
                        if guides is not None else "") + f"; {wall:.1f} s → {manifest}")}


def _draw(todo: list[Unit], renderer: Renderer, cfg: RenderConfig, out: Path, manifest: Path, base: dict[str, Any],
          guides, done: dict[str, Any], bar) -> None:
    """Render `todo` in batches; while the next batch renders, writer threads encode the last one's PNGs, whose
    rows are then appended to the manifest (a kill loses at most the batches in flight)."""
    t_render = time.perf_counter()
    pending: tuple[list[Unit], list] | None = None  # the batch whose files the writers are writing

    def finish(batch_units, futures) -> None:
        new_rows = [f.result() for f in futures]  # in order; a writer's error surfaces here
        append_jsonl(manifest, new_rows)
        kill_point("render.after_batch")
        done.update({r["image_id"]: r for r in new_rows})
        bar.update(len(batch_units))

    with ThreadPoolExecutor(max_workers=writer_threads(cfg, renderer.device), thread_name_prefix="png") as pool:
        try:
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start: start + cfg.batch_size]
                arrays = renderer(batch)
                if pending is not None:
                    finish(*pending)
                pending = (batch, [pool.submit(_write_image, out, u, arr, base, renderer, guides)
                                   for u, arr in zip(batch, arrays)])
                bar.set_postfix(img_s=f"{(start + len(batch)) / max(time.perf_counter() - t_render, 1e-9):.2f}")
            if pending is not None:
                finish(*pending)
                pending = None
        except BaseException:
            for f in (pending[1] if pending else []):
                f.cancel()
            raise


def render_stage(prompts: Path, out: Path, cfg: RenderConfig) -> StageResult:
    """The stage as `augur render` and a recipe run it. Under `accelerate launch` with several processes
    (and no --shard), each process renders its own shard of the images, and once all have, the main one
    merges their manifests: `augur run` shards its render stage the same way."""
    import dataclasses

    from ...core import distributed

    state = distributed.state() if cfg.shard is None else None
    if state is None:
        res = render(prompts, out, cfg)
        return StageResult([res["line"]], files={"manifest": res["manifest"]}, data=res, warnings=run_warnings(res))
    cfg = dataclasses.replace(cfg, shard=f"{state.process_index}/{state.num_processes}",
                              quiet=cfg.quiet or not state.is_main_process)
    res = render(prompts, out, cfg)
    lines = [res["line"]]  # each process says what its shard did
    state.wait_for_everyone()  # every shard is on disk
    if state.is_main_process:
        with distributed.alone():
            lines.append(merge(out)["line"])
    state.wait_for_everyone()  # the merged manifest is there for whoever reads it next
    return StageResult(lines, files={"manifest": str(Path(out) / "manifest.jsonl")}, data=res,
                       warnings=run_warnings(res) if state.is_main_process else [])


def run_warnings(res: dict[str, Any]) -> list[str]:
    """The run's warnings: the renderer's, and prompts the text encoder cut."""
    t = res.get("prompt_tokens")
    if not t or not t["truncated"]:
        return list(res.get("warnings", []))
    return list(res.get("warnings", [])) + [f"{t['truncated']} of {t['prompts']} prompts are longer than the text encoder's {t['limit']} tokens "
            f"and were cut (longest {t['longest']} tokens, e.g. '{t['example']}')"]


def writer_threads(cfg: RenderConfig, device: str) -> int:
    from ...core.device import cpu_count

    if cfg.writers:
        return cfg.writers
    return max(1, min(8 if device == "cuda" else 2, cpu_count()))


def _write_image(out: Path, u: Unit, arr, base: dict[str, Any], renderer: Renderer,
                 guides: Guides | None = None) -> dict[str, Any]:
    """One image: its provenance, PNG bytes, an atomic write; returns its manifest row (a writer thread)."""
    info = {"image_id": u.image_id, "row_id": u.row["id"], "class": u.row["class"], "domain": u.row["domain"],
            "prompt": u.row["prompt"], "seed": u.seed, "index": u.index, **base}
    if u.guide is not None and guides is not None:  # the photo it started from, and how far it moved
        info.update(init_image=guides.record(u.guide), strength=u.strength,
                    denoising_steps=renderer.denoising_steps[u.strength])
    if renderer.takes_negative and renderer.negative_prompt:
        info["negative_prompt"] = u.row.get("negative_prompt") or renderer.negative_prompt
    data = png_bytes(arr, info)
    write_bytes(out / relpath(u), data)
    kill_point("render.after_png")
    return {**info, "path": relpath(u), "sha256": sha256_bytes(data)}


def _refuse_other_gpu_batch(out: Path, identity: dict[str, Any]) -> None:
    """GPU images depend on the batch size and the GPU: a resume or shard that differs in them would mix
    images of two computations in one folder. One line saying what the folder was made with."""
    record = out / "render.json"
    if not record.is_file():
        return
    try:
        old = read_json(record).get("identity") or {}
    except AugurError:
        return
    if old.get("device") != "cuda" and identity.get("device") != "cuda":
        return
    diff = [k for k in ("device", "compute_batch", "gpu") if old.get(k) != identity.get(k)]
    if not diff:
        return
    def made(ident):
        gpu = ident.get("gpu") or {}
        where = gpu.get("name", ident.get("device", "?"))
        return f"{where} in batches of {ident.get('compute_batch')}"

    raise AugurError(f"{out} was rendered on {made(old)}, and GPU images depend on both; this run would render on "
                     f"{made(identity)}: resume with the same GPU and --batch-size {old.get('compute_batch')}, "
                     "or use another --out")


def merge(out: Path) -> dict[str, Any]:
    """Merge shard manifests (manifest-i-of-n.jsonl) into manifest.jsonl after checking every image."""
    out = Path(out)
    if not (out / "render.json").is_file():
        raise AugurError(f"{out}: not a render folder (no render.json)")
    info = read_json(out / "render.json")
    extra = {k: info[k] for k in ("prompts", "init_images") if k in info}
    with StageRun(out, "render", info["identity"], extra=extra) as run:
        shards = sorted(out.glob("manifest-*-of-*.jsonl"))
        if not shards:
            raise AugurError(f"{out}: no shard manifests (manifest-i-of-n.jsonl) to merge")
        ns = {int(p.stem.rsplit("-", 1)[1]) for p in shards}
        if len(ns) != 1:
            raise AugurError(f"{out}: shard manifests of different splits ({', '.join(map(str, sorted(ns)))}) "
                             "cannot merge")
        (n,) = ns
        have = {int(p.stem.split("-")[1]) for p in shards}
        missing = sorted(set(range(n)) - have)
        if missing:
            raise AugurError(f"{out}: shard(s) {', '.join(map(str, missing))} of {n} are missing")
        rows = load_rows(Path(info["prompts"]))
        identity = info["identity"]
        units = plan(rows, identity["images_per_prompt"], identity["seed"], (0, 1), identity.get("strengths"))
        by_id: dict[str, dict[str, Any]] = {}
        for p in shards:
            for row in read_manifest(p):
                by_id.setdefault(row["image_id"], row)
        absent = [u.image_id for u in units if u.image_id not in by_id]
        if absent:
            raise AugurError(f"{out}: {len(absent)} image(s) not rendered yet, e.g. {absent[0]}; finish every shard first")
        for u in units:
            row = by_id[u.image_id]
            if sha256_file(out / row["path"]) != row["sha256"]:
                raise AugurError(f"{out / row['path']}: sha256 does not match its manifest row")
        merged = [by_id[u.image_id] for u in units]
        write_jsonl(out / "manifest.jsonl", merged)
        contact_sheet(out, merged)
        write_render_card(out, info, merged)
        run.finish()
    return {"images": len(merged), "shards": n, "line": f"render merge: {len(merged)} images from {n} shards → "
                                                           f"{out / 'manifest.jsonl'}"}


def contact_sheet(out: Path, rows: list[dict[str, Any]], thumb: int = 96, per_class: int = 8) -> Path:
    """One row per class, one column per domain (first image of each), labelled."""
    from PIL import Image, ImageDraw

    classes: dict[str, dict[str, str]] = {}
    for r in rows:
        classes.setdefault(r["class"], {}).setdefault(r["domain"], r["path"])
    cols = min(per_class, max((len(d) for d in classes.values()), default=1))
    label_w, label_h = 120, 14
    sheet = Image.new("RGB", (label_w + cols * thumb, max(1, len(classes)) * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for ri, (cls, domains) in enumerate(classes.items()):
        y = ri * (thumb + label_h)
        draw.text((4, y + thumb // 2), cls[:18], fill="black")
        for ci, (domain, path) in enumerate(list(domains.items())[:cols]):
            with Image.open(out / path) as im:
                tile = im.convert("RGB").resize((thumb, thumb), Image.NEAREST if im.width < thumb else Image.BILINEAR)
            x = label_w + ci * thumb
            sheet.paste(tile, (x, y))
            draw.text((x + 2, y + thumb), domain[:16], fill="black")
    target = out / "contact_sheet.png"
    with atomic_write(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target
