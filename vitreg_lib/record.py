"""Record the numbers a notebook measures, beside the paper's.

``rec = Recorder("01_high_norm_tokens")`` then ``rec("outlier_pct_mini_reg0", 1.3,
paper=2.37, model="mini_reg0", note="...")``:

* the value is glued into the notebook in myst-nb's glue format (so the prose can
  cite it with ``{glue:text}`name``` in the built book) and shown as a line of text;
* it is written to ``<results_dir>/<notebook>.json`` (name -> value, paper value,
  model, note), so tests and a scorecard page can read every measured number.

``results_dir`` defaults to ``$VITREG_RESULTS_DIR``, else ``_build/results`` under the
repository root (the nearest folder above the working directory holding
``_config.yml``), else under the working directory.

The paper's numbers live in :data:`vitreg_lib.paper.PAPER`, never typed in a notebook.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

GLUE_PREFIX = "application/papermill.record/"  # myst-nb's prefix for glued, hidden values


def default_results_dir() -> Path:
    env = os.environ.get("VITREG_RESULTS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file():
            return folder / "_build" / "results"
    return here / "_build" / "results"


def glue(name: str, value: Any) -> None:
    """Emit ``value`` under ``name`` in myst-nb's glue format (hidden display)."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    bundle, metadata = format_display_data(value)
    metadata["scrapbook"] = dict(name=name, mime_prefix=GLUE_PREFIX)
    display({GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Recorder:
    """Records a notebook's measured numbers (see the module docstring)."""

    def __init__(self, notebook: str, results_dir: str | Path | None = None, show: bool = True):
        self.notebook = notebook
        self.path = Path(results_dir or default_results_dir()) / f"{notebook}.json"
        self.show = show
        self.entries: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("{}")

    def __call__(self, name: str, value: Any, *, paper: Any = None, model: str | None = None,
                 note: str = "", comparable: str = "") -> Any:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"Record names use letters, digits and '_': {name!r}.")
        value = _plain(value)
        self.entries[name] = dict(value=value, paper=_plain(paper), model=model, note=note,
                                  comparable=comparable)
        self.path.write_text(json.dumps(self.entries, indent=1))
        try:
            glue(name, value)
        except ImportError:  # no IPython: plain script
            pass
        if self.show:
            shown = f"{value:.4g}" if isinstance(value, float) else value
            extra = f" (paper: {paper})" if paper is not None else ""
            print(f"{name} = {shown}{extra}" + (f" — {model}" if model else ""))
        return value

    def figure(self, fig: Any, name: str, caption: str) -> Path:
        """Save ``fig`` as ``_<name>.png`` beside the recorded numbers, with its caption in
        ``_<name>.json`` (the book build publishes the headline figure from there)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"Figure names use letters, digits and '_': {name!r}.")
        png = self.path.parent / f"_{name}.png"  # "_": not a notebook's numbers
        fig.savefig(png, dpi=100)
        (self.path.parent / f"_{name}.json").write_text(json.dumps(dict(caption=caption,
                                                                       notebook=self.notebook)))
        return png

    def table(self, names: list[str] | None = None) -> pd.DataFrame:
        """The "paper vs here" table of the recorded numbers that carry a paper value."""
        rows = [dict(quantity=k, paper=v["paper"], here=v["value"], model=v["model"],
                     comparable=v["comparable"], note=v["note"])
                for k, v in self.entries.items()
                if (names is None and v["paper"] is not None) or (names and k in names)]
        return pd.DataFrame(rows)


def load_results(path: str | Path) -> dict[str, dict]:
    """Read a results JSON written by :class:`Recorder`."""
    return json.loads(Path(path).read_text())
