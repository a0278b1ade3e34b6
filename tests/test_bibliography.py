"""book/references.bib against the book: every {cite} of a book page (book/*.md and the
markdown cells of the notebooks) resolves, every entry is a complete reference, and a
book page that names a work of the bibliography in prose ("Bach et al.") cites it."""

import json
import re
import sys
from pathlib import Path

import pytest
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

BIB = ROOT / "book" / "references.bib"
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")  # {cite}`a`, {cite:t}`a,b`, {cite:p}`a`


def pages() -> dict[str, str]:
    """Every page of the book as the reader gets its prose: the Markdown pages of book/
    and of _toc.yml, and the markdown cells of each notebook (code cells are not prose)."""
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "book").glob("*.md")}
    for f in build_book.toc_files():
        files |= {f"{f}{ext}" for ext in (".md", ".ipynb") if (ROOT / f"{f}{ext}").is_file()}
    out = {}
    for f in sorted(files):
        if f.endswith(".ipynb"):
            cells = json.loads((ROOT / f).read_text())["cells"]
            out[f] = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            out[f] = (ROOT / f).read_text()
    return out


def cited(text: str) -> set[str]:
    return {key.strip() for keys in CITE.findall(text) for key in keys.split(",") if key.strip()}


@pytest.fixture(scope="module")
def bib():
    return parse_file(str(BIB)).entries  # a duplicate key or a syntax error fails here


def test_every_cite_of_the_book_is_in_the_bibliography(bib):
    every = {f: cited(text) for f, text in pages().items()}
    assert any(every.values())  # the scan finds the cites there are
    missing = {f: sorted(keys - set(bib)) for f, keys in every.items() if keys - set(bib)}
    assert not missing, f"cite keys missing from {BIB.name}: {missing}"
    assert any(f.endswith(".ipynb") and keys for f, keys in every.items())  # notebooks are read too


def test_every_entry_is_a_complete_reference(bib):
    required = {"article": {"journal"}, "inproceedings": {"booktitle"}, "misc": set()}
    for key, entry in bib.items():
        assert entry.type in required, f"{key}: entry type {entry.type}"
        fields = {f.lower() for f in entry.fields}
        assert {"title", "year"} | required[entry.type] <= fields, f"{key}: {sorted(fields)}"
        assert entry.persons.get("author"), f"{key}: no author"
        assert fields & {"url", "doi", "eprint"}, f"{key}: nowhere to read it"
        assert "not recorded" not in entry.fields["title"], f"{key}: a placeholder title"
        if "eprint" in fields:
            assert re.fullmatch(r"\d{4}\.\d{4,5}", entry.fields["eprint"]), key
            assert entry.fields["eprint"] in entry.fields.get("url", entry.fields["eprint"]), key


def first_authors(bib) -> dict[str, set[str]]:
    """First author's surname -> the keys of the works with three or more authors
    (those a text names as "Surname et al.")."""
    out: dict[str, set[str]] = {}
    for key, entry in bib.items():
        authors = entry.persons.get("author", [])
        if len(authors) >= 3:
            surname = " ".join(authors[0].last_names).replace("{", "").replace("}", "")
            out.setdefault(surname, set()).add(key)
    return out


@pytest.mark.parametrize("page", sorted(pages()))
def test_a_page_that_names_a_work_in_prose_cites_it(bib, page):
    text = pages()[page]
    keys = cited(text)
    prose = CITE.sub("", text)
    for surname, works in first_authors(bib).items():
        if re.search(rf"\b{re.escape(surname)} et al\.", prose):
            assert keys & works, f"{page} names {surname} et al. without citing any of {sorted(works)}"
