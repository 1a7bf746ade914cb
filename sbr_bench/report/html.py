"""The report as one self-contained HTML page (figures embedded as data URIs), viewable offline.

It renders the Markdown the report writes, a small known subset: headings, paragraphs, pipe tables, bullet
lists, images alone on a line, and inline code, bold, italics, <u>, links and escaped characters. The
dependency list is fixed, so this is written here rather than taken from a Markdown package; anything else
is shown as escaped text, never interpreted as HTML.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from urllib.parse import unquote

from ..io import write_text

IMAGE = re.compile(r"!\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)")
IMAGES_LINE = re.compile(rf"^(?:{IMAGE.pattern}\s*)+$")
CODE = re.compile(r"(`[^`]+`)")
INLINE = [  # applied in order to escaped text outside code spans
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w\\])_([^_]+)_(?!\w)"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((https?://[^)\s&\"'<>]+|[\w./#%-]+)\)"), r'<a href="\2">\1</a>'),
    (re.compile(r"&lt;(/?)u&gt;"), r"<\1u>"),
    (re.compile(r"\\([*_`\\|\[\]])"), r"\1"),
]
STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:.25em .6em}
td{text-align:right}td:first-child{text-align:left}th{background:#f0f0f0}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}figure{margin:1.5em 0}"""


def inline(text: str) -> str:
    """Escaped text (quotes too: nothing recorded becomes an attribute) with the inline markup applied
    outside code spans."""
    out = []
    for i, piece in enumerate(CODE.split(text)):
        if i % 2:  # a code span: escaped, nothing inside it is markup
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        piece = html.escape(piece)
        for pattern, replacement in INLINE:
            piece = pattern.sub(replacement, piece)
        out.append(piece)
    return "".join(out)


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _image(alt: str, target: str, folder: Path) -> str:
    alt = re.sub(r"\\(.)", r"\1", alt)
    path = folder / unquote(target)
    if path.suffix.lower() != ".png" or not path.is_file():
        return f"<p><em>missing figure: {html.escape(target)}</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def render(markdown: str, folder: Path, title: str = "sbr-bench report") -> str:
    """The HTML page of `markdown`, with the PNG figures it names (relative to `folder`) embedded."""
    lines, out, i = markdown.splitlines(), [], 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            out.append(f"<h{len(m[1])}>{inline(m[2])}</h{len(m[1])}>")
            i += 1
        elif IMAGES_LINE.match(line.strip()):  # one or more images alone on a line
            out += [_image(m[1], m[2], folder) for m in IMAGE.finditer(line)]
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "  ")) and lines[i].strip():
                if lines[i].startswith("- "):
                    items.append(lines[i][2:])
                else:
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline(t)}</li>" for t in items) + "</ul>")
        else:  # a paragraph: this line (whatever it is) and the plain lines after it
            para = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6} |\||- )", lines[i]) \
                    and not IMAGES_LINE.match(lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_html(markdown_path: Path) -> Path:
    """report.html beside `markdown_path` (report.md), self-contained."""
    markdown_path = Path(markdown_path)
    target = markdown_path.with_suffix(".html")
    write_text(target, render(markdown_path.read_text(encoding="utf-8"), markdown_path.parent))
    return target
