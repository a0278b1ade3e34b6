"""Point the project at another repository (a fork): python tools/set_repo_url.py URL

_config.yml's ``repository.url`` is the one setting; this rewrites it and the two
places that cannot read it at run time: each notebook's Colab install cell and the
README's Colab links. tests/test_book.py checks that they agree.
"""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(new: str) -> None:
    new = new.rstrip("/")
    if not new.startswith("https://github.com/"):
        sys.exit("Give a GitHub URL such as https://github.com/you/vitreg")
    cfg = ROOT / "_config.yml"
    old = yaml.safe_load(cfg.read_text())["repository"]["url"].rstrip("/")
    old_slug, new_slug = old.split("github.com/")[1], new.split("github.com/")[1]
    files = [cfg, ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for f in files:
        f.write_text(f.read_text().replace(old, new).replace(f"/github/{old_slug}/", f"/github/{new_slug}/"))
    print(f"repository URL: {old} -> {new} in {len(files)} files")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
