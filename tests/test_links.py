"""The book's launch buttons and every Colab link point at this repository's notebooks.

_config.yml's ``repository.url`` (with ``branch`` and ``path_to_book``) is the one
setting the links derive from. Jupyter Book turns it and ``launch_buttons.colab_url``
into each notebook page's Colab button (sphinx-book-theme's ``add_launch_buttons``,
run here on the configuration the book build stages, the way Sphinx runs it); the
intro's chapter table and the README write ``build_book.colab_url``. Each must name the
configured repository and branch and a notebook of _toc.yml that git tracks (Colab reads
the file from GitHub, so an untracked path opens nothing)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

COLAB = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)\"'`]+)/([^/\s)\"'`]+)"
                   r"/blob/([^/\s)\"'`]+)/([^\s)\"'`>\]]+)")


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return set(out.stdout.splitlines())


def expected_parts() -> tuple[str, str, str]:
    """``(owner, repository, branch)`` of _config.yml's repository settings."""
    repo = build_book.repo_settings()
    owner, name = repo["url"].rstrip("/").split("github.com/")[1].split("/")[:2]
    return owner, name, repo["branch"]


def check_colab_url(url: str, files: set[str]) -> str:
    """The notebook path a Colab link opens, after checking it is this repository's."""
    m = COLAB.fullmatch(url)
    assert m, f"not a Colab link to a GitHub file: {url}"
    owner, name, branch, path = m.groups()
    assert (owner, name, branch) == expected_parts(), f"{url}: not repository.url / branch"
    assert path.endswith(".ipynb") and path in files, f"{url}: {path} is not a notebook git tracks"
    return path


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """The book's source folder as tools/build_book.py stages it (its _config.yml
    included), from the committed notebooks standing in for executed copies."""
    out = tmp_path_factory.mktemp("links")
    runs = []
    for nb in build_book.notebooks():
        (out / "executed" / nb).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / nb, out / "executed" / nb)
        runs.append(dict(notebook=nb, status="ok", mode="smoke", tier="offline", seconds=0.0, models=[]))
    return build_book.stage(out, runs)


def launch_buttons(stage: Path) -> dict[str, list[dict]]:
    """Each notebook's launch buttons as sphinx-book-theme builds them for its page, from
    the Sphinx configuration Jupyter Book makes of the staged _config.yml."""
    from jupyter_book.config import get_final_config
    from sphinx_book_theme.header_buttons import update_context_with_repository_info
    from sphinx_book_theme.header_buttons.launch import add_launch_buttons

    class Config(dict):
        __getattr__ = dict.__getitem__

    sphinx_config, _ = get_final_config(user_yaml=stage / "_config.yml", sourcedir=stage,
                                        cli_config={"latex_individualpages": False})
    config = Config(sphinx_config)
    config.setdefault("html_context", {})
    env = SimpleNamespace(doc2path=lambda page: str(stage / f"{page}.ipynb"), metadata={})
    app = SimpleNamespace(config=config, builder=None, env=env)
    update_context_with_repository_info(app)  # the theme's builder-inited step
    buttons = {}
    for nb in build_book.notebooks():
        page = nb[:-len(".ipynb")]
        env.metadata[page] = json.loads((stage / nb).read_text())["metadata"]
        context = dict(config.html_context, pagename=page, header_buttons=[], page_source_suffix=".ipynb",
                       sourcename=f"{nb}.txt")  # as Sphinx names a page's copied source
        add_launch_buttons(app, page, "page.html", context, None)  # the html-page-context step
        groups = [g for g in context["header_buttons"] if g.get("label") == "launch-buttons"]
        buttons[nb] = [b for g in groups for b in g["buttons"]]
    return buttons


def test_every_toc_notebook_has_a_colab_button_to_its_own_file_in_this_repository(staged):
    files = tracked()
    buttons = launch_buttons(staged)
    assert list(buttons) == build_book.notebooks() and buttons  # every chapter of _toc.yml
    for nb, found in buttons.items():
        colab = [b["url"] for b in found if b.get("text") == "Colab"]
        assert len(colab) == 1, f"{nb}: launch buttons {found}"
        assert check_colab_url(colab[0], files) == nb  # the page's own notebook, not another
        assert colab[0] == build_book.colab_url(nb)  # the same link the intro and README give


def test_the_staged_config_keeps_the_one_repository_setting(staged):
    import yaml

    config = yaml.safe_load((staged / "_config.yml").read_text())
    root = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"] == root["repository"] and config["launch_buttons"] == root["launch_buttons"]
    assert root["launch_buttons"]["colab_url"].rstrip("/") == "https://colab.research.google.com"
    assert root["repository"].get("path_to_book", "") == ""  # notebooks/ sits at the repository's root


def test_every_colab_link_in_the_project_opens_a_tracked_notebook_of_this_repository():
    """The README's chapter table, the intro's (built from build_book.chapter_table), and
    any Colab link written in a page, a notebook or the docs."""
    files = tracked()
    texts = {"intro's chapter table": build_book.chapter_table()}
    for f in sorted(files):
        if f.endswith((".md", ".ipynb")) and (ROOT / f).is_file():
            texts[f] = (ROOT / f).read_text()
    links = {f: [m.group(0) for m in COLAB.finditer(t)] for f, t in texts.items()}
    for url in (u for urls in links.values() for u in urls):
        check_colab_url(url, files)
    for place in ("intro's chapter table", "README.md"):
        opened = {check_colab_url(u, files) for u in links[place]}
        assert opened == set(build_book.notebooks()), f"{place}: Colab links for {sorted(opened)}"
