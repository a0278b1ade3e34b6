"""Execute the notebooks with papermill, stage the book from the executed copies, build it.

    python tools/build_book.py --mode full            # what `make book` runs
    python tools/build_book.py --mode smoke --out DIR # what the book test runs

Steps: (1) every notebook in ``_toc.yml`` runs on the project's kernel (``vitreg``,
registered by the Makefile) with ``smoke`` / ``tier`` as papermill parameters, into
``OUT/executed``; numbers go to ``OUT/results`` (``VITREG_RESULTS_DIR``); a failing
notebook stops the build and names the cell. (2) ``OUT/stage`` gets the book's sources
with the executed notebooks, the chapter/Colab table in the intro and the status
page filled in. (3) ``jupyter-book build`` (1.x) runs with warnings as errors.
Paths can be overridden with ``VITREG_BUILD_DIR`` and ``VITREG_KERNEL``.
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = 900  # a cell that runs longer fails the build instead of hanging it


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
    return dict(notebook=nb, status=status, seconds=round(time.time() - t0, 1), mode=mode, tier=tier)


def stage(out: Path, runs: list[dict]) -> Path:
    st = out / "stage"
    if st.exists():
        shutil.rmtree(st)
    st.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, st / name)
    shutil.copytree(ROOT / "book", st / "book")
    (st / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "RESULTS.md", st / "experiments" / "RESULTS.md")
    for nb in notebooks():
        (st / nb).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "executed" / nb, st / nb)
    intro = st / "book" / "intro.md"
    intro.write_text(intro.read_text().replace("<!-- chapter-links -->", chapter_table()))
    rows = ["| chapter | status | mode | tier | seconds |", "|---|---|---|---|---|"]
    rows += [f"| {r['notebook']} | {r['status']} | {r['mode']} | {r['tier']} | {r['seconds']} |"
             for r in runs]
    status = st / "book" / "status.md"
    status.write_text(status.read_text().replace("<!-- status-table -->", "\n".join(rows)))
    return st


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("full", "smoke"), default="full")
    p.add_argument("--tier", choices=("mini", "pretrained"), default="mini")
    p.add_argument("--out", default=os.environ.get("VITREG_BUILD_DIR", str(ROOT / "_build")))
    p.add_argument("--kernel", default=os.environ.get("VITREG_KERNEL", "vitreg"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    os.environ["VITREG_RESULTS_DIR"] = str(out / "results")
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
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "_status.json").write_text(json.dumps(runs, indent=1))

    st = stage(out, runs)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(st), "--path-output", str(out), "-W", "-n", "--keep-going"]
    print(" ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        print("FAILED: jupyter-book build (warnings are errors; see above)", file=sys.stderr)
        return 1
    index = out / "_build" / "html" / "index.html"
    print(f"Book built: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
