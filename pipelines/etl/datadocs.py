"""Great Expectations Data Docs that work inside a hospital network.

GX writes its Data Docs with Bootstrap, jQuery, Font Awesome, bootstrap-table and Vega
loaded from public CDNs, and its logo from S3: offline (or behind a proxy that blocks
them) the pages came out unstyled, and every view told those hosts who looked. After each
build, :func:`make_offline` rewrites the site's pages:

- every ``<script src>`` and ``<link href>`` pointing outside the site is removed (the
  validation content is plain HTML: the scripts only sort tables and draw the charts of
  profiling pages, which Vigil does not build);
- the logo comes from the site's own ``static/images``;
- Vigil's stylesheet (``static/styles/vigil-offline.css``, written here) styles what
  GX's markup uses: the sidebar, cards, tables, the pass/fail marks;
- a Content-Security-Policy ``<meta>`` allows this site only, so nothing a later GX
  release adds can load from elsewhere either.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

STYLESHEET = "static/styles/vigil-offline.css"
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'none'"
)
_EXTERNAL_SCRIPT = re.compile(
    r"<script\b[^>]*\bsrc=\"(?:https?:)?//[^\"]*\"[^>]*>\s*</script>", re.I
)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\"(?:https?:)?//[^\"]*\"[^>]*/?>", re.I)
_REMOTE_LOGO = re.compile(r"src=\"https://great-expectations-web-assets[^\"]*\"", re.I)
_NEWSLETTER = re.compile(r"<footer>\s*<p>\s*Stay current on everything GX.*?</footer>", re.I | re.S)

# Vigil's own rules for the classes GX's pages use (Bootstrap's names, our styling).
_CSS = """\
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; font-size: 14px; line-height: 1.45; }
a { color: #1f5fa8; }
.container-fluid { padding: 0 12px; }
.row { display: flex; flex-wrap: wrap; }
.col-12 { flex: 0 0 100%; }
.col-md-2, .col-lg-2 { flex: 0 0 230px; }
.col-md-10, .col-lg-10, .col-md-8 { flex: 1 1 600px; min-width: 0; }
.sticky-top { position: sticky; top: 0; align-self: flex-start; }
.d-none { display: none !important; }
.d-flex { display: flex; }
nav, .navbar { display: flex; align-items: center; gap: 12px; padding: 8px 0; }
.breadcrumb { display: flex; list-style: none; padding: 0; margin: 0; gap: 6px; }
.breadcrumb-item + .breadcrumb-item::before { content: "/ "; color: #889; }
.nav { list-style: none; padding: 0; margin: 0; }
.nav-link { display: block; padding: 2px 0; text-decoration: none; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; margin: 10px 0; }
.card-header { padding: 8px 12px; border-bottom: 1px solid #dde1e7; font-weight: 600;
               background: #eef1f5; }
.card-body { padding: 10px 12px; }
.ge-section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px;
              margin: 12px 0; padding: 6px 12px; }
.alert { padding: 6px 10px; border-radius: 4px; margin: 6px 0; }
.alert-secondary { background: #eef1f5; }
.table { border-collapse: collapse; width: 100%; margin: 6px 0; }
.table th, .table td { border-top: 1px solid #e3e6eb; padding: 4px 8px; text-align: left;
                       vertical-align: top; }
.table thead th { border-bottom: 2px solid #d0d5dc; background: #f3f5f8; }
.table-responsive { overflow-x: auto; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 8px; font-size: 12px; }
.badge-secondary { background: #e4e7ec; }
.text-success { color: #1e7b3c; }
.text-danger { color: #b3261e; }
.fas.fa-check-circle::before { content: "\\2714"; }
.fas.fa-times::before, .fas.fa-times-circle::before { content: "\\2718"; }
.btn { display: inline-block; padding: 4px 10px; border-radius: 4px; border: 1px solid #1f5fa8;
       text-decoration: none; }
.btn-primary { background: #1f5fa8; color: #fff; }
img[alt="Great Expectations"] { height: 28px; }
h1, h2, h3, h4, h5, h6, .h6 { margin: 10px 0 6px; }
"""


def _relative_root(page: Path, site: Path) -> str:
    rel = os.path.relpath(site, page.parent)
    return "" if rel == "." else rel + "/"


def rewrite_page(html: str, root: str) -> str:
    """One page of the site without outside loads; ``root``: the path from it to the
    site's top folder (``""`` or ``"../../"``)."""
    html = _EXTERNAL_SCRIPT.sub("", html)
    html = _EXTERNAL_LINK.sub("", html)
    html = _REMOTE_LOGO.sub(f'src="{root}static/images/logo-long.png"', html)
    html = _NEWSLETTER.sub("", html)
    if "vigil-offline.css" not in html:
        head = (
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<link rel="stylesheet" href="{root}{STYLESHEET}">'
        )
        html = html.replace("<head>", "<head>" + head, 1)
    return html


def make_offline(site: Path) -> int:
    """Rewrite every page of the Data Docs site at ``site``; returns the pages rewritten."""
    if not site.is_dir():
        return 0
    css = site / STYLESHEET
    css.parent.mkdir(parents=True, exist_ok=True)
    css.write_text(_CSS)
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        text = page.read_text()
        new = rewrite_page(text, _relative_root(page, site))
        if new != text:
            page.write_text(new)
    return len(pages)


def outside_loads(html: str) -> list[str]:
    """What a page would fetch from elsewhere (scripts, stylesheets, images, frames)."""
    return re.findall(
        r"<(?:script|img|iframe)\b[^>]*\bsrc=\"((?:https?:)?//[^\"]+)\""
        r"|<link\b[^>]*\bhref=\"((?:https?:)?//[^\"]+)\"",
        html,
        re.I,
    )
