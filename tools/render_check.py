"""Render an HTML report in headless Chromium: every <img> must decode, no script error may occur;
optionally save a screenshot.

    python tools/render_check.py results/report56/report.html --screenshot report.png

Exit status 0 when the page renders cleanly, 1 otherwise, 2 when no Chromium is installed (Debian:
``apt-get install chromium``). Prints one JSON object: images, broken, errors, browser.
"""
from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40));
  const out = {images: imgs.length, broken: broken, errors: window.__errors};
  const pre = document.createElement('pre'); pre.id = '__rendercheck'; pre.textContent = JSON.stringify(out);
  (document.body || document.documentElement).appendChild(pre);
});
</script>"""


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check(html: Path, screenshot: Path | None = None, browser: str | None = None, timeout: float = 120) -> dict:
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    text = Path(html).read_text(encoding="utf-8")
    # the probe goes first, so that its error listener is in place before any script of the page runs
    m = re.search(r"<head[^>]*>|<body[^>]*>", text, re.I)
    probe = text[:m.end()] + PROBE + text[m.end():] if m else PROBE + text
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"  # beside nothing: a self-contained report needs no other file
        page.write_text(probe, encoding="utf-8")
        r = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                           timeout=timeout)
        m = re.search(r'<pre id="__rendercheck">(.*?)</pre>', r.stdout, re.S)
        if not m:
            raise RuntimeError(f"the page did not finish loading in {browser}: {r.stderr[-1500:]}")
        res = json.loads(html_lib.unescape(m.group(1)))
        if screenshot is not None:
            Path(tmp, "shot.html").write_text(text, encoding="utf-8")
            subprocess.run([browser, *flags, "--window-size=1280,4000", f"--screenshot={Path(screenshot).resolve()}",
                            Path(tmp, "shot.html").as_uri()], capture_output=True, text=True, timeout=timeout)
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
    return dict(res, browser=version, ok=not res["broken"] and not res["errors"] and res["images"] > 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html")
    p.add_argument("--screenshot")
    args = p.parse_args(argv)
    try:
        res = check(Path(args.html), Path(args.screenshot) if args.screenshot else None)
    except FileNotFoundError as e:
        print(f"render_check: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
