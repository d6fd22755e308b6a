"""A small report builder: the same content as Markdown (images linked) and as one self-contained
HTML file (images embedded as base64)."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Optional

import pandas as pd

__all__ = ["Document"]

_CSS = """body{font-family:system-ui,-apple-system,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:.85em;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
code,pre{background:#f6f6f6;padding:1px 4px}pre{padding:.6em;overflow-x:auto}
.verdict{font-weight:bold}"""


class Document:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> "Document":
        self.parts.append(("h", level, text))
        return self

    def paragraph(self, text: str) -> "Document":
        self.parts.append(("p", text))
        return self

    def bullets(self, items: list[str]) -> "Document":
        self.parts.append(("ul", list(items)))
        return self

    def code(self, text: str) -> "Document":
        self.parts.append(("pre", text))
        return self

    def table(self, df: pd.DataFrame, floatfmt: str = "{:.4g}") -> "Document":
        self.parts.append(("table", df.copy(), floatfmt))
        return self

    def image(self, path, caption: str = "") -> "Document":
        self.parts.append(("img", Path(path), caption))
        return self

    # --- rendering ---------------------------------------------------------------------------------
    @staticmethod
    def _fmt(v, floatfmt):
        if isinstance(v, float):
            return "" if v != v else floatfmt.format(v)
        return str(v)

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
                    out.append("| " + " | ".join(self._fmt(v, ff) for v in row) + " |")
                out.append("")
            elif kind == "img":
                p = part[1]
                rel = os.path.relpath(p, base) if base else p.name
                out += [f"![{part[2]}]({rel})", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(self.title)}</title>",
               f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(self.title)}</h1>"]
        for part in self.parts:
            kind = part[0]
            if kind == "h":
                out.append(f"<h{part[1]}>{html.escape(part[2])}</h{part[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(part[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(it)}</li>" for it in part[1]) + "</ul>")
            elif kind == "pre":
                out.append(f"<pre>{html.escape(part[1])}</pre>")
            elif kind == "table":
                df, ff = part[1], part[2]
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(v, ff))}</td>" for v in row) + "</tr>"
                               for row in df.itertuples(index=False))
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                p, cap = part[1], part[2]
                mime = "image/svg+xml" if p.suffix == ".svg" else "image/png"
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(f"<figure><img alt='{html.escape(cap)}' src='data:{mime};base64,{data}'>"
                           f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, out_dir, stem: str = "report") -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, ht = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md.write_text(self.markdown(out_dir))
        ht.write_text(self.html())
        return md, ht


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    import re
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
