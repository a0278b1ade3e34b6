"""The GitHub workflows: they parse, run the README's commands, and publish the folder
tools/build_book.py writes the HTML to."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

HTML = build_book.html_dir(Path(build_book.BUILD_DIR)).as_posix()  # what `make book` writes


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(wf: dict) -> dict:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    if isinstance(on, str):
        return {on: None}
    return on if isinstance(on, dict) else dict.fromkeys(on)


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def runs(wf: dict) -> list[str]:
    return [line.strip() for s in steps(wf) for line in s.get("run", "").splitlines() if line.strip()]


def uses(wf: dict, action: str) -> list[dict]:
    return [s for s in steps(wf) if s.get("uses", "").split("@")[0] == action]


@pytest.mark.parametrize("name", ["ci.yml", "pages.yml", "book-pretrained.yml"])
def test_workflow_parses_and_names_its_commands_as_the_readme_does(name):
    wf = load(name)
    assert triggers(wf) and wf["jobs"], name
    for job in wf["jobs"].values():
        assert "runs-on" in job and ("steps" in job), name
        for s in job["steps"]:
            assert ("uses" in s) != ("run" in s), (name, s)  # one action or one command per step
            assert "@" in s.get("uses", "@"), (name, s)  # actions are pinned to a version
    readme = (ROOT / "README.md").read_text()
    for cmd in runs(wf):
        if cmd.startswith("make "):
            assert f"`{cmd}`" in readme, f"{name} runs `{cmd}`, which the README does not document"
    every_env = [wf.get("env", {})] + [j.get("env", {}) for j in wf["jobs"].values()] + \
                [s.get("env", {}) for s in steps(wf)]
    assert not any("VITREG_BUILD_DIR" in e for e in every_env), "the upload path assumes the default folder"


def test_ci_runs_make_test_on_every_push_and_pull_request():
    wf = load("ci.yml")
    on = triggers(wf)
    assert {"push", "pull_request"} <= set(on)
    assert not on["push"] and not on["pull_request"]  # no branch filter: every push, every PR
    assert "make test" in runs(wf)
    (job,) = wf["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    (setup,) = uses(wf, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"


def deploys(wf: dict) -> None:
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    assert uses(wf, "actions/configure-pages") and uses(wf, "actions/deploy-pages")
    (upload,) = uses(wf, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == HTML


def test_pages_builds_the_mini_book_on_main_and_deploys_the_html_folder():
    wf = load("pages.yml")
    assert set(triggers(wf)) == {"push"} and triggers(wf)["push"]["branches"] == ["main"]
    assert "make book" in runs(wf) and not any("TIER=" in r for r in runs(wf))  # the default: mini
    deploys(wf)
    assert HTML == "_build/_build/html"


def test_pretrained_book_is_manual_passes_the_tier_and_keeps_the_caches():
    wf = load("book-pretrained.yml")
    assert set(triggers(wf)) == {"workflow_dispatch"}
    books = [r for r in runs(wf) if r.startswith("make book")]
    assert books[-1] == "make book TIER=pretrained"  # the last build is the HTML that is uploaded
    cached = [p.strip() for s in uses(wf, "actions/cache") for p in s["with"]["path"].splitlines()]
    assert "~/.cache/huggingface" in cached and "~/.cache/vitreg" in cached
    for s in uses(wf, "actions/cache"):
        assert "restore-keys" in s["with"], "without restore-keys a changed key starts from an empty cache"
    deploys(wf)


@pytest.mark.parametrize("args, tier", [([], "mini"), (["TIER=pretrained"], "pretrained")])
def test_make_book_passes_the_tier_to_the_build(args, tier, tmp_path):
    out = subprocess.run(["make", "-n", "book", f"VENV={tmp_path}/venv", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if "tools/build_book.py" in line]
    assert re.search(rf"--mode full --tier {tier}$", line), line
