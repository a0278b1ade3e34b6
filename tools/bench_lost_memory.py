"""Chapter 7's peak memory over its first chunks, on a dataset too long to run to the end here.

    python tools/bench_lost_memory.py --profile full --chunks 3 --work DIR

The full profile's chapter 7 runs LOST on all 5,011 VOC07 trainval images with four models
and a test-time register: about 2.5 hours on 2 CPU cores, too long to measure end to end
on the machines the course is developed on. Its memory does not need the whole run:
LOST keeps a few numbers per image and goes through the images 128 at a time
(:func:`vitreg_lib.discovery.discover`), which VOC07 reads from disk when they are used
(:class:`vitreg_lib.data.ImageFiles`). This benchmark takes chapter 7's steps with the
profile's settings on the profile's whole dataset, but stops each LOST pass after
``--chunks`` chunks, and prints the process's resident memory (``VmRSS``) and its
high-water mark (``VmHWM``) after every step: if the high-water mark stops rising after
the first chunk of each model, the chapter's peak is the largest of them whatever the
number of chunks. It plants what a runner downloads as ``tools/bench_publish.py`` does
(the same ``--work`` folder is reused) and runs the steps in a child process with the hub
offline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def memory_gb() -> tuple[float, float]:
    """This process's resident memory and its high-water mark, in GB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return tuple(int(fields[k].split()[0]) / 2**20 for k in ("VmRSS", "VmHWM"))


def steps(profile: str, chunks: int, smoke: bool) -> None:
    """Chapter 7's memory-relevant steps (the child process)."""
    import warnings

    from vitreg_lib import config, data, discovery, registers
    from vitreg_lib.models import each_model, load_model

    s = config.settings("pretrained", smoke, "cpu", profile=profile)
    d, q = s.discovery, s.search
    size = 128  # discover()'s chunk

    def say(step: str) -> None:
        rss, hwm = memory_gb()
        print(f"{step:<58} {rss:>7.2f} {hwm:>9.2f}", flush=True)

    print(f"{'step (' + profile + ' profile)':<58} {'RSS GB':>7} {'peak GB':>9}")
    say("start")
    ds = data.boxed_images(d.dataset, d.n_images, seed=30_000)
    images = data.ImageFiles(ds.images.paths[:chunks * size], ds.images.read)
    say(f"{ds.description}: boxes read")

    def lost(lm, label):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # planted weights degenerate; not the point here
            found = discovery.discover(lm, images, k=d.k, norms=True, batch_size=s.batch_size, chunk=size,
                                       progress=False)
        say(f"{label}: LOST on {len(images)} images ({-(-len(images) // size)} chunks)")
        return found

    each_model(d.models, lambda lm: lost(lm, lm.name), device="cpu")
    base = load_model(d.test_time, device="cpu")
    search = data.labelled_images(s.probe_dataset, q.n_images, seed=0)
    say(f"{base.name} loaded, {len(search.images)} search images")
    neurons = registers.find_register_neurons(base, base.preprocess(search.images), max_layer=q.max_layer,
                                              top_k=q.top_k, rule=registers.PATCH_MEAN_3STD,
                                              batch_size=s.batch_size, progress=False)
    say(f"register-neuron search ({q.n_images} images)")
    with registers.add_test_time_registers(base, neurons) as fixed:
        lost(fixed, f"{base.name}+ttr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="full", choices=("publish", "full"))
    p.add_argument("--chunks", type=int, default=3, help="LOST chunks (128 images each) per model")
    p.add_argument("--smoke", action="store_true", help="smoke size: the code path only")
    p.add_argument("--work", help="folder for the planted files (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        steps(args.profile, args.chunks, args.smoke)
        return 0
    import bench_publish

    work = Path(args.work or tempfile.mkdtemp(prefix="vitreg-bench-lost-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **bench_publish.plant_all(work, args.smoke, args.profile)}
    cmd = [sys.executable, __file__, "--child", "--profile", args.profile, "--chunks", str(args.chunks)]
    print(f"machine: {bench_publish.machine()}", flush=True)
    return subprocess.run(cmd + (["--smoke"] if args.smoke else []), cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
