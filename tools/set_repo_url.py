"""Point the project at another repository (a fork): python tools/set_repo_url.py URL

_config.yml's ``repository.url`` is the one setting; this rewrites it and the places that
cannot read it at run time: each notebook's Colab install cell, the README's Colab links
and the README's address of the published book (``build_book.book_url``: GitHub Pages).
tests/test_book.py checks that they agree.
"""

import sys
from pathlib import Path

import yaml
from build_book import book_url

ROOT = Path(__file__).resolve().parents[1]


def main(new: str, root: Path = ROOT) -> None:
    new = new.rstrip("/")
    if not new.startswith("https://github.com/"):
        sys.exit("Give a GitHub URL such as https://github.com/you/vitreg")
    cfg = root / "_config.yml"
    old = yaml.safe_load(cfg.read_text())["repository"]["url"].rstrip("/")
    old_slug, new_slug = old.split("github.com/")[1], new.split("github.com/")[1]
    old_book, new_book = book_url(old), book_url(new)
    files = [cfg, root / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]
    for f in files:
        f.write_text(f.read_text().replace(old, new).replace(f"/github/{old_slug}/", f"/github/{new_slug}/")
                     .replace(old_book, new_book))
    print(f"repository URL: {old} -> {new}, book: {new_book}, in {len(files)} files")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
