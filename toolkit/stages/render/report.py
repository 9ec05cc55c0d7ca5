"""The render stage in a report (what drew the images, their guides, the contact sheet, provenance) and an
unfinished recipe folder's progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECORD = "render.json"  # the stage's record in its folder (core/outdir.py: a run's record)


def write_section(folders: list[Path], page: Any) -> None:
    from ...core.files import read_json

    for f in folders:
        ident = read_json(f / RECORD)["identity"]
        page.section("Generated images")
        if ident["model"] == "tiny-lcm" or "-tiny" in ident["model"]:
            page.text(f"**These images were drawn by `{ident['model']}`, a random-weight model: they are noise.** "
                      "Import a real diffusion model (`augur models import NAME PATH`) for real images.")
        else:
            page.text(f"These images were drawn by `{ident['model']}` (sha256 `{ident['model_sha256'][:16]}…`).")
        guides = ident.get("init_images")
        if isinstance(guides, dict):
            rec = read_json(f / RECORD)
            page.text(f"Guided by real images ({ident.get('pipeline', 'image-to-image')}): each image started from "
                      f"a photo of its class in `{rec.get('init_images')}` (domains "
                      f"{', '.join(map(str, guides.get('domains') or []))}), at strength "
                      f"{', '.join(f'{x:g}' for x in ident.get('strengths') or [])}; manifest.jsonl names each "
                      "image's guide (`init_image`).")
        if (f / "contact_sheet.png").is_file():
            page.image(f / "contact_sheet.png", "contact sheet")
        page.provenance("render", ident["model"], ident["model_sha256"], ident["seed"],
                        f"{ident['backend']}/{ident['device']}/{ident['dtype']}, {ident['scheduler']}, "
                        f"{ident['steps']} steps, {ident['size']} px")


def unfinished(images: Path) -> str:
    from ...core.files import read_json, read_jsonl

    done = sum(len(read_jsonl(m, tolerate_torn_tail=True)) for m in images.glob("manifest*.jsonl"))
    record = images / RECORD
    info = read_json(record) if record.is_file() else {}
    prompts = info.get("prompts")
    ident = info.get("identity", {})
    total = (len(read_jsonl(Path(prompts))) * ident.get("images_per_prompt", 1) * len(ident.get("strengths") or [1])
             if prompts and Path(prompts).is_file() else None)
    return f"{done} of {total} images" if total else f"{done} images"
