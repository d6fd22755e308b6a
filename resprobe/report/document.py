"""A small report builder: one list of parts rendered both as Markdown (images linked) and as one
self-contained HTML file (images embedded as base64) — the two documents cannot disagree."""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .. import fmt
from ..io.atomic import write_text
from ..verdict import Verdict

__all__ = ["Document", "verdict_rows"]

_CSS = """body{font-family:system-ui,-apple-system,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:.85em;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
code,pre{background:#f6f6f6;padding:1px 4px}pre{padding:.6em;overflow-x:auto}
figcaption{font-size:.9em;color:#444;margin-bottom:1.2em}
.supported{color:#1a7f37;font-weight:bold}.notsupported{color:#b42318;font-weight:bold}
.inconclusive{color:#8a6d00;font-weight:bold}.notapplicable{color:#555;font-weight:bold}td.text{text-align:left}"""


def _statistic(v: Verdict) -> str:
    if v.statistic is None:
        return f"{v.statistic_name}: not judged"
    return (f"{v.statistic_name} = {fmt.ci(v.statistic, v.ci_low, v.ci_high)}"
            + (f" (margin {fmt.num(v.threshold, 3)})" if v.threshold is not None else ""))


def _per_seed(v: Verdict) -> str:
    return "; ".join(f"{k}: {fmt.num(x, 3)}" for k, x in v.per_seed.items()) if len(v.per_seed) > 1 else ""


def verdict_rows(verdicts: Sequence[Verdict], counted: str = "images") -> pd.DataFrame:
    """The summary table: the claim (headline), verdict, statistic with CI and margin, per-seed values, scope
    (with the number of ``counted`` things measured: images, or token windows), and why (the reason a gate failed,
    or the criterion)."""
    return pd.DataFrame([dict(claim=v.conjecture, verdict=v.verdict, statistic=_statistic(v), per_seed=_per_seed(v),
                              scope=v.scope + (f", {v.n_images} {counted}" if v.n_images else ""),
                              why=v.reason if v.verdict == "not applicable" else v.criterion
                              + (f" — {v.reason}" if v.reason else ""))
                         for v in verdicts], columns=["claim", "verdict", "statistic", "per_seed", "scope", "why"])


class Document:
    def __init__(self, title: str, counted: str = "images"):
        self.title = title
        self.counted = counted      # what a verdict's n_images counts: images, or token windows
        self.parts: list[tuple] = []
        self._figures = 0

    def heading(self, text: str, level: int = 2) -> "Document":
        self.parts.append(("h", level, text))
        return self

    def paragraph(self, text: str) -> "Document":
        self.parts.append(("p", text))
        return self

    def bullets(self, items: Sequence[str]) -> "Document":
        if items:
            self.parts.append(("ul", list(items)))
        return self

    def code(self, text: str) -> "Document":
        self.parts.append(("pre", text))
        return self

    def table(self, df: pd.DataFrame, floatfmt: str = "{:.4g}", text_columns: Sequence[str] = ()) -> "Document":
        self.parts.append(("table", df.copy(), floatfmt, tuple(text_columns)))
        return self

    def verdicts(self, verdicts: Sequence[Verdict]) -> "Document":
        if verdicts:
            self.table(verdict_rows(verdicts, self.counted), text_columns=("claim", "verdict", "statistic", "per_seed", "scope", "why"))
        return self

    def verdict(self, v: Verdict) -> "Document":
        self.paragraph(f"**Verdict: {v.verdict}** — {_statistic(v)}; scope: {v.scope}"
                       + (f", {v.n_images} {self.counted}" if v.n_images else "") + ".")
        if v.verdict == "not applicable":
            self.paragraph(f"Not applicable: {v.reason}.")
        self.paragraph(f"Criterion: {v.criterion}." + (f" Note: {v.reason}." if v.reason and
                                                        v.verdict != "not applicable" else ""))
        extra = [f"Margin {fmt.num(v.threshold, 3)}: {v.margin_source}" if v.margin_source else "",
                 f"Interval: {v.interval}" if v.interval else "",
                 f"Per seed: {_per_seed(v)}" if _per_seed(v) else ""]
        self.bullets([e for e in extra if e] + [f"Gate: {g}" for g in v.gates])
        return self

    def image(self, path, caption: str = "") -> "Document":
        self._figures += 1
        if self.counted != "images":   # the studies' captions speak of images; on token windows CIs resample documents
            caption = caption.replace("over images", "over documents")
        self.parts.append(("img", Path(path), f"Figure {self._figures}. {caption}"))
        return self

    # --- rendering ---------------------------------------------------------------------------------
    @staticmethod
    def _fmt(v, floatfmt):
        if isinstance(v, float):
            return "" if v != v else floatfmt.format(v).replace("-", fmt.MINUS)
        return "" if v is None or v is pd.NA else str(v)

    def markdown(self, base: Optional[Path] = None) -> str:
        out = [f"# {self.title}", ""]
        for part in self.parts:
            kind = part[0]
            if kind == "h":
                out += ["#" * part[1] + " " + part[2], ""]
            elif kind == "p":
                out += [part[1], ""]
            elif kind == "ul":
                out += [f"- {it}" for it in part[1]] + [""]
            elif kind == "pre":
                out += ["```", part[1], "```", ""]
            elif kind == "table":
                df, ff = part[1], part[2]
                out.append("| " + " | ".join(map(str, df.columns)) + " |")
                out.append("|" + "---|" * len(df.columns))
                for row in df.itertuples(index=False):
                    out.append("| " + " | ".join(self._fmt(v, ff).replace("|", "\\|") for v in row) + " |")
                out.append("")
            elif kind == "img":
                p = part[1]
                rel = os.path.relpath(p, base) if base else p.name
                out += [f"![{part[2]}]({rel})", "", f"*{part[2]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(self.title)}</title>",
               f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(self.title)}</h1>"]
        for part in self.parts:
            kind = part[0]
            if kind == "h":
                out.append(f"<h{part[1]}>{_inline(part[2])}</h{part[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(part[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(it)}</li>" for it in part[1]) + "</ul>")
            elif kind == "pre":
                out.append(f"<pre>{html.escape(part[1])}</pre>")
            elif kind == "table":
                out.append(self._html_table(*part[1:]))
            elif kind == "img":
                p, cap = part[1], part[2]
                mime = "image/svg+xml" if p.suffix == ".svg" else "image/png"
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(f"<figure><img alt='{html.escape(cap)}' src='data:{mime};base64,{data}'>"
                           f"<figcaption>{_inline(cap)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def _html_table(self, df: pd.DataFrame, ff: str, text_cols: tuple) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        rows = []
        for row in df.itertuples(index=False):
            cells = []
            for c, v in zip(df.columns, row):
                s = html.escape(self._fmt(v, ff))
                cls = ' class="text"' if c in text_cols else ""
                if c == "verdict":
                    s = f'<span class="{s.replace(" ", "")}">{s}</span>'
                cells.append(f"<td{cls}>{s}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    def write(self, out_dir, stem: str = "report") -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, ht = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        for path, text in ((md, self.markdown(out_dir)), (ht, self.html())):
            write_text(path, text)
        return md, ht


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
