"""Execute the notebooks with papermill, stage the book from the executed copies, build it.

    python tools/build_book.py --mode full [--tier pretrained]  # what `make book [TIER=...]` runs
    python tools/build_book.py --mode smoke --out DIR           # what the book test runs

Steps: (1) every notebook in ``_toc.yml`` runs on the project's kernel (``vitreg``,
registered by the Makefile) with ``smoke`` / ``tier`` as papermill parameters, into
``OUT/executed``; numbers go to ``OUT/results/<tier>`` (``VITREG_RESULTS_DIR``), one
folder per tier, so building one tier never touches the other's numbers; a failing
notebook stops the build and names the cell. (2) ``OUT/stage`` gets the book's sources
with the executed notebooks, the chapter/Colab table in the intro, the status page
(this build: tier, mode, models of each chapter) and the scorecard (every tier whose
results are in ``OUT/results``) filled in, and ``html.baseurl`` set to :func:`book_url`.
(3) ``jupyter-book build`` (1.x) runs with warnings as errors; the HTML lands in
:func:`html_dir`. Paths can be overridden with ``VITREG_BUILD_DIR`` and ``VITREG_KERNEL``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import scorecard  # tools/scorecard.py
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = "_build"  # OUT, relative to the repository root, unless --out / VITREG_BUILD_DIR
CELL_TIMEOUT_S = 900  # a cell that runs longer fails the build instead of hanging it


def html_dir(out: Path) -> Path:
    """Where ``jupyter-book build --path-output OUT`` writes the HTML (the folder to publish)."""
    return Path(out) / "_build" / "html"


def results_dir(out: Path, tier: str) -> Path:
    """Where a build of ``tier`` records its numbers and its ``_status.json``."""
    return Path(out) / "results" / tier


def toc_files(root: Path = ROOT) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def notebooks(root: Path = ROOT) -> list[str]:
    return [f + ".ipynb" for f in toc_files(root) if (root / (f + ".ipynb")).is_file()]


def repo_settings(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]


def colab_url(nb: str, root: Path = ROOT) -> str:
    repo = repo_settings(root)
    slug = repo["url"].rstrip("/").split("github.com/")[-1]
    return f"https://colab.research.google.com/github/{slug}/blob/{repo['branch']}/{nb}"


def book_url(url: str | None = None, root: Path = ROOT) -> str:
    """The published book's address, derived from ``repository.url`` (or ``url``):
    ``https://github.com/OWNER/REPO`` -> ``https://OWNER.github.io/REPO/`` (GitHub Pages;
    a repository named ``OWNER.github.io`` is served at the root)."""
    url = (url or repo_settings(root)["url"]).rstrip("/")
    owner, repo = url.split("github.com/")[-1].split("/")[:2]
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if repo.lower() == host else f"https://{host}/{repo}/"


def chapter_table(root: Path = ROOT) -> str:
    lines = ["| chapter | open in Colab |", "|---|---|"]
    for nb in notebooks(root):
        title = next((c for c in json.loads((root / nb).read_text())["cells"]
                      if c["cell_type"] == "markdown"), None)
        name = "".join(title["source"]).splitlines()[0].lstrip("# ") if title else nb
        lines.append(f"| {{doc}}`{name} </{nb[:-6]}>` | [{nb}]({colab_url(nb, root)}) |")
    return "\n".join(lines)


def execute(nb: str, out: Path, mode: str, tier: str, kernel: str) -> dict:
    import papermill as pm

    target = out / "executed" / nb
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    status = "ok"
    try:
        pm.execute_notebook(str(ROOT / nb), str(target), parameters=dict(smoke=mode == "smoke", tier=tier),
                            kernel_name=kernel, cwd=str(ROOT), progress_bar=False,
                            execution_timeout=CELL_TIMEOUT_S)
    except pm.PapermillExecutionError as err:
        status = f"failed in cell {err.exec_count}: {err.ename}: {err.evalue}"
    except TimeoutError as err:  # nbclient's CellTimeoutError derives from it
        status = f"a cell ran past {CELL_TIMEOUT_S} s: {err}"
    return dict(notebook=nb, status=status, seconds=round(time.time() - t0, 1), mode=mode, tier=tier,
                models=recorded_models(results_dir(out, tier) / f"{Path(nb).stem}.json"))


def recorded_models(path: Path) -> list[str]:
    """The distinct ``model`` fields of a notebook's recorded numbers, in order of first use."""
    entries = json.loads(path.read_text()) if path.is_file() else {}
    return list(dict.fromkeys(e["model"] for e in entries.values() if e.get("model")))


def status_table(runs: list[dict]) -> str:
    tiers = sorted({r["tier"] for r in runs})
    modes = sorted({r["mode"] for r in runs})
    lines = [f"This build: **{', '.join(tiers)}** tier, **{', '.join(modes)}** mode.", "",
             "| chapter | status | mode | tier | seconds | models |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['mode']} | {r['tier']} | {r['seconds']} | "
              f"{', '.join(r['models']) or '(none recorded)'} |" for r in runs]
    return "\n".join(lines)


TIER_NOTES = {
    "mini": (
        "The figures in this build come from the **mini** tier, not from the paper's models. "
        "The mini models are small and briefly trained, and so far they show no high-norm tokens. "
        "The mini-lab's search for a recipe that makes them emerge is logged, failures included, "
        "on the {doc}`mini-lab page </experiments/RESULTS>`. Read the mini-tier figures as a "
        "demonstration of the method, not as a check of the paper's numbers. To get the paper's "
        "models, run a chapter on the pretrained tier."),
    "pretrained": (
        "The figures in this build come from the **pretrained** tier: the paper's model families "
        "(DINOv2, DeiT-III, OpenCLIP), downloaded from the Hugging Face hub, on public images "
        "(scikit-image's photos, CIFAR-10, VOC07), which are not always the paper's data: every "
        "recorded number names its model and data, and the {doc}`scorecard <scorecard>` says "
        "which can be compared with the paper."),
}


def tier_note(tiers: list[str]) -> str:
    """The intro's note on where this build's figures come from."""
    body = " ".join(TIER_NOTES[t] for t in tiers)
    return f"```{{important}}\n{body}\n```"


def stage(out: Path, runs: list[dict]) -> Path:
    st = out / "stage"
    if st.exists():
        shutil.rmtree(st)
    st.mkdir(parents=True)
    shutil.copy(ROOT / "_toc.yml", st / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("html", {})["baseurl"] = book_url()  # derived, never typed in _config.yml
    (st / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    shutil.copytree(ROOT / "book", st / "book")
    (st / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "RESULTS.md", st / "experiments" / "RESULTS.md")
    if (ROOT / "experiments" / "figures").is_dir():  # the mini-lab's training curves
        shutil.copytree(ROOT / "experiments" / "figures", st / "experiments" / "figures")
    for nb in notebooks():
        (st / nb).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "executed" / nb, st / nb)
    intro = st / "book" / "intro.md"
    tiers = sorted({r["tier"] for r in runs})
    intro.write_text(intro.read_text().replace("<!-- chapter-links -->", chapter_table())
                     .replace("<!-- tier-note -->", tier_note(tiers)))
    status = st / "book" / "status.md"
    status.write_text(status.read_text().replace("<!-- status-table -->", status_table(runs)))
    card = st / "book" / "scorecard.md"
    chapters = {Path(nb).stem: nb[:-len(".ipynb")] for nb in notebooks()}
    card.write_text(card.read_text().replace("<!-- scorecard -->",
                                             scorecard.page(out / "results", chapters)))
    return st


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("full", "smoke"), default="full")
    p.add_argument("--tier", choices=("mini", "pretrained"), default="mini")
    p.add_argument("--out", default=os.environ.get("VITREG_BUILD_DIR", str(ROOT / BUILD_DIR)))
    p.add_argument("--kernel", default=os.environ.get("VITREG_KERNEL", "vitreg"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    results = results_dir(out, args.tier)
    if results.exists():  # this tier's numbers come from this build only; other tiers stay
        shutil.rmtree(results)
    results.mkdir(parents=True)
    os.environ["VITREG_RESULTS_DIR"] = str(results)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    runs = []
    for nb in notebooks():
        print(f"executing {nb} ({args.mode}, {args.tier}) ...", flush=True)
        run = execute(nb, out, args.mode, args.tier, args.kernel)
        print(f"  {run['status']} in {run['seconds']} s", flush=True)
        runs.append(run)
        if run["status"] != "ok":
            print(f"FAILED: {nb} {run['status']} (executed copy: {out / 'executed' / nb})",
                  file=sys.stderr)
            return 1
    (results / scorecard.STATUS_FILE).write_text(json.dumps(runs, indent=1))  # the tier is complete

    st = stage(out, runs)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(st), "--path-output", str(out), "-W", "-n", "--keep-going"]
    print(" ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        print("FAILED: jupyter-book build (warnings are errors; see above)", file=sys.stderr)
        return 1
    index = html_dir(out) / "index.html"
    print(f"Book built: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
