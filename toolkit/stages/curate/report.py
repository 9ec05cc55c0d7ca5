"""The curate stage's section of a report: what was kept and why, the score histograms with their
thresholds, each class's best- and worst-scored images, the near-copies found, the set measures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.files import read_json, read_jsonl

SCORES = (("clip_score", "CLIPScore (image vs its prompt)", "min_clip_score"),
          ("class_prob", "probability of its own class", None),
          ("entropy", "entropy of the class distribution (nats)", "max_entropy"))


def report(stage, folders: list[Path], page: Any) -> None:
    for f in folders:
        if not (f / "manifest.jsonl").is_file() or not (f / "quality.json").is_file():
            continue
        q = read_json(f / "quality.json")
        judged = read_jsonl(f / "scores.jsonl")
        c = q["counts"]
        s = q["scorer"]
        page.section("Curated images")
        page.text(f"Scorer `{s['scorer']}` ({s['scorer_kind']}, sha256 `{s['scorer_sha256'][:16]}…`). Kept "
                  f"**{c['kept']} of {c['rendered']}** rendered images. Every image's scores and reasons: "
                  f"`{f / 'scores.jsonl'}`; the dataset card: `{f / 'DATASET.md'}`.")
        page.table(["rejection reason", "images"], [[k, v] for k, v in c["reasons"].items()] or [["(none)", 0]])
        page.table(["class", "rendered", "kept", "Vendi (images)", "Vendi (kept)", "Vendi (prompts)"],
                   [[k, v["rendered"], v["kept"], f"{v['vendi_images']:.2f}", f"{v['vendi_images_kept']:.2f}",
                     f"{v['vendi_prompts']:.2f}"] for k, v in q["per_class"].items()])
        if q.get("unscored_classes"):
            page.text(f"**Class agreement unscored for {len(q['unscored_classes'])} class(es)**: "
                      f"{', '.join(q['unscored_classes'])} (the scorer cannot name them).")
        name = f"curate_scores_{len(page.images)}.png"
        if _histograms(judged, q["thresholds"], page.path(name)):
            page.figure(name, "score distributions with their thresholds")
        if (f / "best_worst.png").is_file():
            page.image(f / "best_worst.png", "best- and worst-scored images per class", "curate_best_worst")
        dups = [r for r in judged if r.get("duplicate_of")]
        if dups:
            page.text(f"{len(dups)} near-copies removed (first 10):")
            page.table(["image", "class", "copy of"], [[r["image_id"], r["class"], r["duplicate_of"]] for r in dups[:10]])
        real = q.get("real")
        if real:
            rows = [["all", real["overall"]["fd"], real["overall"]["cmmd"]]]
            rows += [[d, v["fd"], v["cmmd"]] for d, v in real["per_domain"].items()]
            page.text(f"Distance of the kept images to `{real['real']}` ({real['real_images']} real images of "
                      f"{len(real['classes_in_common'])} classes; features: {real['features']}). Near-copies of "
                      f"real images: {real['near_copies_of_real']['total']} of "
                      f"{real['near_copies_of_real']['of_rendered']} rendered.")
            page.table(["real domain", "FD", "CMMD"], rows)
        page.provenance("curate", s["scorer"], s["scorer_sha256"], "", ", ".join(
            f"{k} {v}" for k, v in q["thresholds"].items() if v is not None))


def _histograms(judged: list[dict[str, Any]], thresholds: dict[str, Any], path: Path) -> bool:
    from ..report.page import pyplot

    present = [(k, label, t) for k, label, t in SCORES if any(r.get(k) is not None for r in judged)]
    if not present:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), squeeze=False)
    for ax, (key, label, t) in zip(axes[0], present):
        values = [r[key] for r in judged if r.get(key) is not None]
        ax.hist(values, bins=20, color="#4878a8")
        if t and thresholds.get(t) is not None:
            ax.axvline(thresholds[t], color="red", linestyle="--", label=f"{t} {thresholds[t]:g}")
            ax.legend(fontsize=7)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("images", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
