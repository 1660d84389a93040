"""A tiny document model, so the report is written once and rendered as Markdown or RST.

Inline text uses a shared subset: ``**bold**``, ``*italic*`` and ```code```.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    """A section title; level 1 is the document title."""

    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of inline text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table with a caption line above it."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    """An image, by path relative to the report."""

    path: str
    alt: str


Block = Heading | Paragraph | Bullets | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [
                block.caption,
                "",
                "| " + " | ".join(block.header) + " |",
                "|" + "---|" * len(block.header),
            ]
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        else:
            out.append(f"![{block.alt}]({block.path})")
    return "\n\n".join(out) + "\n"


_RST_UNDERLINE = {1: "=", 2: "-", 3: "~", 4: "^"}


def _rst_inline(text: str) -> str:
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


def to_rst(blocks: list[Block], image_prefix: str = "") -> str:
    """Render as reStructuredText for Sphinx; ``image_prefix`` goes before figure paths."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            text = _rst_inline(block.text)
            out.append(f"{text}\n{_RST_UNDERLINE[block.level] * len(text)}")
        elif isinstance(block, Paragraph):
            out.append(_rst_inline(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_rst_inline(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = [_rst_inline(block.caption), "", ".. list-table::", "   :header-rows: 1", ""]
            for row in (block.header, *block.rows):
                cells = [_rst_inline(cell) for cell in row]
                lines.append(f"   * - {cells[0]}")
                lines += [f"     - {cell}" for cell in cells[1:]]
            out.append("\n".join(lines))
        else:
            out.append(f".. image:: {image_prefix}{block.path}\n   :alt: {block.alt}")
    return "\n\n".join(out) + "\n"
