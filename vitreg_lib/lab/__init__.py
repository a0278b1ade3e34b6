"""The mini-lab: the search for a recipe under which a small ViT trained on the scenes
grows the paper's outlier tokens (``experiments/``, its results page in the book).

It extends the course's library and is never imported by it:

* :mod:`vitreg_lib.lab.train` — the lab's trainer (``python -m vitreg_lib.lab.train``):
  the course's :class:`vitreg_lib.train.Trainer` with fresh scenes every step, scene
  workers, the lab's objectives and attention variants, and its presets;
* :mod:`vitreg_lib.lab.objectives` — dense and masked objectives, their heads and metrics;
* :mod:`vitreg_lib.lab.models` — attention variants (gated attention, an attention bias);
* :mod:`vitreg_lib.lab.criterion` — the search's success criterion on a training log;
* :mod:`vitreg_lib.lab.plotting` — the lab's figures (training curves, the demand test).
"""
