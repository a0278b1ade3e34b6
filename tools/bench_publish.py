"""What the published book costs: the pretrained tier's publish profile, end to end.

    python tools/bench_publish.py            # what `make bench-publish` runs (28 min on 2 Xeon cores)
    python tools/bench_publish.py --smoke    # the same path at smoke size (what `make test` runs)
    python tools/bench_publish.py --chapters 05_registers,06_test_time_registers --work DIR
        # only these chapters, each alone with a cold feature cache (no HTML): an upper
        # bound of what each costs inside a build, to remeasure a chapter after a change
    python tools/bench_publish.py --profile full --chapters 03_redundant_patches \
        --cell-timeout 10800 --work DIR
        # a chapter of the full profile (the GPU readers' sizes) on this CPU: its peak RAM
        # (the 8-GB budget holds in every profile); its minutes say nothing of a GPU, and
        # its cells outlast the build's 30-min limit on a CPU

The hub and the dataset hosts are out of reach here, so the benchmark plants what a runner
would download (``tools/plant.py``): random weights of every model of the profile saved
under their real timm hub ids in a temporary Hugging Face cache (same architectures, so
the same FLOPs and memory), CIFAR-10's test split and Pascal VOC 2007 trainval in their
real on-disk formats (VOC07 at its real 5,011 images). Then it runs
``tools/build_book.py --tier pretrained --profile publish`` exactly as the Pages workflow
does, hub offline, and prints each chapter's minutes, the peak resident memory of its
kernel and what the feature cache saved, the total, and the machine (CPU, cores).

Budget of the profile: every chapter in 60 minutes in all on a GitHub-hosted runner
(4 vCPU, 16 GB), and at most 8 GB of RAM in any chapter. The planted CIFAR-10 files hold
random pixels, so their md5 sums are not the real archive's: torchvision checks them, and
this benchmark alone (a ``sitecustomize`` on the kernel's path) skips that check.
Planting is timed apart; it is not part of the build's cost (a runner downloads instead,
or restores its cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402
import plant  # noqa: E402

from vitreg_lib.paper import JIANG_DINOV2_L_NEURONS  # noqa: E402

BUDGET_MIN, BUDGET_GB = 60, 8
#: register neurons planted in the random weights (tools/plant.py): the authors' DINOv2-L list,
#: so that chapter 6's search their way finds it and its overlap with their list is measured,
#: and a few in DINOv2-S (the smoke size's chapter 6 and chapter 5's test-time register)
PLANTED_NEURONS = {"dinov2_l": JIANG_DINOV2_L_NEURONS, "dinov2_s": {6: [11, 200, 901], 7: [5]}}
SKIP_MD5 = '''# written by tools/bench_publish.py: the planted CIFAR-10 is random, its md5 is not the real one
import torchvision.datasets.cifar as _cifar
_cifar.check_integrity = lambda *args, **kwargs: True  # the batches' and the metadata's md5
'''


def plant_all(where: Path, smoke: bool, profile: str = "publish") -> dict:
    """Plant ``profile``'s weights and datasets under ``where``; returns the environment
    a build needs to use them."""
    from vitreg_lib.config import settings
    from vitreg_lib.models import get_spec

    s = settings("pretrained", smoke=smoke, device="cpu", profile=profile)
    for name in s.all_models():
        if plant.hub_file(where / "hub", get_spec(name).source).is_file():
            continue  # planted by an earlier run into the same --work folder
        print(f"planting random weights for {name} ({get_spec(name).source})", flush=True)
        plant.fill_hub_cache(where / "hub", get_spec(name).source)
        if name in PLANTED_NEURONS:  # a known answer for chapter 6's searches
            plant.plant_register_neurons(where / "hub", get_spec(name).source, PLANTED_NEURONS[name])
    plant.plant_cifar10(where / "data", n=200 if smoke else 10_000)
    plant.plant_voc07(where / "data", n=20 if smoke else 5011)
    (where / "site").mkdir(exist_ok=True)
    (where / "site" / "sitecustomize.py").write_text(SKIP_MD5)
    path = os.pathsep.join(p for p in (str(where / "site"), os.environ.get("PYTHONPATH")) if p)
    return dict(HF_HUB_CACHE=str(where / "hub"), HF_HUB_OFFLINE="1", VITREG_DATA=str(where / "data"),
                PYTHONPATH=path)


def machine() -> str:
    info = build_book.build_info("offline", "smoke", "full")  # the machine fields only
    ram = "?" if info["ram_gb"] is None else f"{info['ram_gb']} GB"
    return f"{info['cpu']}, {info['cores']} cores, {ram} RAM"


def report(runs: list[dict], wall_min: float, plant_min: float) -> str:
    lines = [f"{'chapter':<42} {'status':<8} {'min':>6} {'peak GB':>8} {'cache saved min':>16}"]
    for r in runs:
        peak = "n/a" if r.get("peak_gb") is None else f"{r['peak_gb']:.2f}"
        status = "ok" if r["status"] == "ok" else "FAILED"
        lines.append(f"{Path(r['notebook']).name:<42} {status:<8} {r['seconds'] / 60:>6.1f} {peak:>8} "
                     f"{r.get('cache_saved_s', 0) / 60:>16.1f}")
    total = sum(r["seconds"] for r in runs) / 60
    peak = max((r.get("peak_gb") or 0) for r in runs)
    lines += [f"chapters: {total:.1f} min in all (budget {BUDGET_MIN}); whole build with the HTML: "
              f"{wall_min:.1f} min; largest peak RAM of a chapter: {peak:.2f} GB (budget {BUDGET_GB})",
              f"feature cache saved {sum(r.get('cache_saved_s', 0) for r in runs) / 60:.1f} min of "
              f"extraction; planting (not part of the build) took {plant_min:.1f} min",
              f"machine: {machine()}; torch threads: {torch_threads()}"]
    return "\n".join(lines)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def chapters_alone(names: list[str], work: Path, env: dict, smoke: bool, plant_min: float,
                   profile: str = "publish", cell_timeout: int = build_book.CELL_TIMEOUT_S) -> int:
    """Run each named chapter alone, with no feature cache (so: at most its cost in a
    build, where earlier chapters may have filled the cache), and report as :func:`main`."""
    wanted = {Path(nb).stem: nb for nb in build_book.notebooks()}
    unknown = [n for n in names if n not in wanted]
    if unknown:
        raise SystemExit(f"unknown chapters {unknown}; the book's are {list(wanted)}")
    out = work / "alone"
    if out.exists():
        shutil.rmtree(out)
    saved = dict(os.environ)  # the kernels inherit this process's environment; restored after
    try:
        os.environ.update(env)
        os.environ.pop("VITREG_FEATURE_CACHE", None)
        os.environ["VITREG_RESULTS_DIR"] = str(build_book.results_dir(out, "pretrained"))
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        os.environ["VITREG_STATIC_BOOK"] = "1"  # as in a build
        mode, t0 = "smoke" if smoke else "full", time.time()
        runs = []
        for n in names:  # each chapter's line is written as it ends: a long run killed midway keeps them
            runs.append(build_book.execute(wanted[n], out, mode, "pretrained", "vitreg", profile,
                                           cell_timeout))
            (work / f"bench_{profile}_alone.json").write_text(json.dumps(dict(runs=runs, machine=machine()),
                                                                      indent=1))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"\n{profile} profile, chapters alone with a cold cache ({mode} size), planted weights and data "
          f"under {work}:\n{report(runs, (time.time() - t0) / 60, plant_min)}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="smoke size: the code path only")
    p.add_argument("--work", help="folder for the planted files and the build (default: a temporary one)")
    p.add_argument("--chapters", help="comma-separated notebook names: run only these, each alone and cold")
    p.add_argument("--profile", default="publish", choices=("publish", "full"),
                   help="the pretrained profile (full: only with --chapters, for its memory)")
    p.add_argument("--cell-timeout", type=int, default=build_book.CELL_TIMEOUT_S,
                   help="seconds a cell may run (default: the build's); the full profile on a CPU "
                        "needs hours")
    args = p.parse_args(argv)
    if args.profile != "publish" and not args.chapters:
        p.error("--profile full measures chapters one by one: give --chapters too")
    work = Path(args.work or tempfile.mkdtemp(prefix="vitreg-bench-publish-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    env = plant_all(work, args.smoke, args.profile)
    plant_min = (time.time() - t0) / 60
    if args.chapters:
        return chapters_alone(args.chapters.split(","), work, env, args.smoke, plant_min, args.profile,
                              args.cell_timeout)
    out = work / "build"
    if out.exists():  # a benchmark starts cold: no feature cache or results from an earlier build
        shutil.rmtree(out)
    cmd = [sys.executable, str(ROOT / "tools" / "build_book.py"), "--mode", "smoke" if args.smoke else "full",
           "--tier", "pretrained", "--profile", "publish", "--out", str(out)]
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}).returncode
    wall_min = (time.time() - t0) / 60
    results = build_book.results_dir(out, "pretrained")
    status = results / ("_status.json" if code == 0 else "_failed.json")
    runs = json.loads(status.read_text()) if status.is_file() else []
    text = report(runs, wall_min, plant_min) if runs else "no chapter ran"
    print(f"\npublish profile of the pretrained tier ({'smoke' if args.smoke else 'full'} size), "
          f"planted weights and data under {work}:\n{text}")
    (work / "bench_publish.json").write_text(json.dumps(dict(runs=runs, wall_min=wall_min, exit=code,
                                                             machine=machine()), indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
