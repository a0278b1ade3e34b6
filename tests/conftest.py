"""Shared tiny models: random timm ViTs small enough for a unit test; the planted
stand-ins for hub weights and datasets come from tools/plant.py; a real browser
(Debian's chromium driven by Playwright) for the pages the explorer and the book write."""

import os
import shutil
import sys
from pathlib import Path

import pytest

# Under pytest-xdist the workers share the cores: each worker, and every notebook kernel it
# starts (kernels inherit the environment), gets its share of threads. Two workers with
# two OpenMP threads each on 2 cores spin against each other: a chapter's 100-s smoke run
# took over 8 minutes that way.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(THREADS)

import torch  # noqa: E402 (after the thread setting, which torch reads when it starts)

from vitreg_lib.models import LoadedModel, ModelSpec, build_vit

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(THREADS)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from plant import fill_hub_cache, plant_image_folder  # noqa: E402, F401 (re-exported to the tests)


def tiny(registers: int = 2, cls_token: bool = True, img_size: int = 16, depth: int = 3,
         seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    arch = dict(img_size=img_size, patch_size=4, embed_dim=32, depth=depth, num_heads=2,
                num_classes=3, reg_tokens=registers, class_token=cls_token,
                global_pool="token" if cls_token else "avg")
    model = build_vit(arch).eval()
    spec = ModelSpec(f"tiny_r{registers}", "mini", "", "test", registers=registers,
                     cls_token=cls_token, img_size=img_size)
    return LoadedModel(spec, model, (0.5,) * 3, (0.5,) * 3, img_size)


@pytest.fixture
def tiny_model():
    return tiny()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(5, 3, 16, 16)


# --------------------------------------------------------------------------- a real browser

BROWSERS = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
INSTALL = "apt-get update && apt-get install -y chromium; pip install playwright"


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through Playwright, or a visible skip naming the install commands."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed; to run the browser tests: {INSTALL}")
    found = [b for b in ([os.environ.get("VITREG_CHROMIUM")] + BROWSERS) if b and shutil.which(b)]
    if not found:
        pytest.skip(f"no chromium at {', '.join(BROWSERS)}; to run the browser tests: {INSTALL}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=found[0], args=ARGS)
        yield b
        b.close()


class Page:
    """A page opened from disk with every request that is not a file blocked, and its
    console errors, uncaught exceptions and blocked requests recorded."""

    def __init__(self, browser, url: str, width: int = 1000):
        self.errors, self.blocked = [], []
        self.page = browser.new_page(viewport={"width": width, "height": 1200})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(url)

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    #: console errors of the book's theme itself (Jupyter Book 1's thebe snippet declares a
    #: constant twice; pydata-sphinx-theme finds no saved theme mode on a file:// page), on
    #: every page with or without an explorer: not the explorer's, so the tests skip them
    THEME_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode")

    def own_errors(self) -> list[str]:
        """The console errors and uncaught exceptions, less the theme's (:attr:`THEME_ERRORS`)."""
        return [e for e in self.errors if not e.startswith(self.THEME_ERRORS)]

    def ready(self, selector: str = ".js-plotly-plot[data-ready='1']") -> None:
        self.page.wait_for_selector(selector, timeout=30_000)

    def traces(self, meta: str) -> list[dict]:
        """The drawn traces tagged ``meta`` (norm, cls, register, histogram) of the first explorer."""
        return self.page.evaluate("""meta => Array.from(document.querySelector('.js-plotly-plot').data)
            .filter(t => t.meta === meta).map(t => ({name: t.name, z: t.z, y: t.y}))""", meta)

    def payload(self) -> dict:
        """The first explorer's JSON data block, as the page holds it."""
        return self.page.evaluate("""() => JSON.parse(document.querySelector(
            '.vitreg-explorer script[type="application/json"]').textContent)""")

    def trace_index(self, meta: str) -> int:
        """The index of the first drawn trace tagged ``meta`` (for :meth:`hover_patch`)."""
        return self.page.evaluate("""meta => Array.from(document.querySelector('.js-plotly-plot').data)
            .findIndex(t => t.meta === meta)""", meta)

    def titles(self) -> str:
        return " | ".join(self.page.locator(".js-plotly-plot .annotation-text").all_text_contents())

    def flagged(self) -> list[list]:
        return self.page.evaluate("""() => Array.from(document.querySelector('.js-plotly-plot').data)
            .filter(t => t.name === 'flagged').map(t => t.x.map((x, i) => [t.y[i], x]))""")

    def move_slider_to(self, step: int, steps: int) -> None:
        """Click the layer slider's rail at ``step`` (a real mouse click)."""
        rail = self.page.locator(".js-plotly-plot .slider-rail-rect").first
        rail.scroll_into_view_if_needed()  # a click lands only inside the viewport (a book page is long)
        box = rail.bounding_box()
        pad = 8  # the rail's rounded ends; the steps sit between them
        x = box["x"] + pad + (box["width"] - 2 * pad) * step / max(steps - 1, 1)
        self.page.mouse.click(x, box["y"] + box["height"] / 2)

    def hover_patch(self, trace: int, row: int, col: int) -> str:
        """Move the mouse over one patch of heatmap ``trace``; the hover label's text."""
        self.page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        xy = self.page.evaluate("""([t, r, c]) => {
            const gd = document.querySelector('.js-plotly-plot'), tr = gd._fullData[t];
            const xa = gd._fullLayout[tr.xaxis.replace('x', 'xaxis')];
            const ya = gd._fullLayout[tr.yaxis.replace('y', 'yaxis')];
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.d2p(c), box.top + ya._offset + ya.d2p(r)];
        }""", [trace, row, col])
        self.page.mouse.move(*xy)
        self.page.wait_for_selector(".js-plotly-plot .hoverlayer .hovertext", timeout=5_000)
        return " ".join(self.page.locator(".js-plotly-plot .hoverlayer .hovertext").all_text_contents())

    def pick(self, menu: int, item: int) -> None:
        """Open dropdown ``menu`` (0: model, 1: image, 2: register) and click its ``item``."""
        self.page.locator(".js-plotly-plot .updatemenu-header-group").nth(menu).click()
        self.page.locator(".js-plotly-plot .updatemenu-dropdown-button").nth(item).click()
