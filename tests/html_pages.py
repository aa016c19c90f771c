"""Reading the HTML reports back in tests: tables by id, links, and their targets."""

from __future__ import annotations

import dataclasses
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path


@dataclasses.dataclass
class Page:
    """What a test needs from a report.

    Attributes:
        tables: Table id to its rows, each a list of cell texts (header row included).
        cell_links: Table id to its rows, each a list of the links (hrefs) in each cell.
        links: Every href in the page, in order.
        text: All the page's text, whitespace collapsed.
    """

    tables: dict[str, list[list[str]]]
    cell_links: dict[str, list[list[list[str]]]]
    links: list[str]
    text: str


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page({}, {}, [], "")
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._cell_hrefs: list[str] = []
        self._texts: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "style":
            self._in_style = True
        elif tag == "table":
            self._table = values.get("id") or f"table{len(self.page.tables)}"
            self.page.tables[self._table] = []
            self.page.cell_links[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.page.tables[self._table].append([])
            self.page.cell_links[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._cell_hrefs = [], []
        elif tag == "a" and values.get("href"):
            self.page.links.append(values["href"])
            if self._cell is not None:
                self._cell_hrefs.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.page.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self.page.cell_links[self._table][-1].append(self._cell_hrefs)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._in_style:
            return
        self._texts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def read_page(path: Path) -> Page:
    """Parse a report."""
    reader = _Reader()
    reader.feed(path.read_text(encoding="utf-8"))
    reader.page.text = " ".join(" ".join(reader._texts).split())
    return reader.page


def link_target(page_path: Path, href: str) -> Path:
    """The file a relative link of a page points to."""
    return (page_path.parent / urllib.parse.unquote(href)).resolve()


def broken_links(page_path: Path, page: Page) -> list[str]:
    """The page's links to files that do not exist (in-page anchors are not checked)."""
    files = [h.split("#")[0] for h in page.links if not h.startswith("#")]
    return [h for h in files if not link_target(page_path, h).is_file()]
