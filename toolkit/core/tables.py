"""The one table formatter: aligned plain text for terminals, Markdown for reports, LaTeX for papers."""

from __future__ import annotations

from typing import Any, Sequence

STYLES = ("plain", "markdown", "latex")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("$", "\\$"), ("{", "\\{"), ("}", "\\}"), ("±", "$\\pm$")):
        text = text.replace(a, b)
    return text


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], style: str = "plain",
                 caption: str | None = None) -> str:
    header = [str(h) for h in header]
    body = [[str(c) for c in r] for r in rows]
    if style == "markdown":
        esc = lambda v: v.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
        return "\n".join(([f"**{caption}**", ""] if caption else []) + lines)
    if style == "latex":
        lines = ["\\begin{table}[t]", "\\centering"]
        if caption:
            lines.append(f"\\caption{{{_latex_escape(caption)}}}")
        lines += ["\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
                  " & ".join("\\textbf{" + _latex_escape(h) + "}" for h in header) + " \\\\", "\\midrule"]
        lines += [" & ".join(_latex_escape(c) for c in r) + " \\\\" for r in body]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *body)] if body else [len(h) for h in header]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join(([caption] if caption else []) + [fmt(header), *(fmt(r) for r in body)])
