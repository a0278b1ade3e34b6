"""The mini-lab's success criterion: when does a small ViT show the paper's outliers?

A logged point meets it when, in some block, at either site (after the attention,
``attn``; after the MLP, ``block``), the patch norms have a histogram gap with 0.2-10 %
of the patches above it, most of those on background and more often than background's
share of all patches. :func:`criterion_held_from` says from which fraction of training
it held to the end (the course's :func:`vitreg_lib.train.held_from`, with this test).
"""

from __future__ import annotations

from ..train import held_from

#: the criterion's share of the patches above an empty histogram gap: a high mode, not
#: the whole distribution
CRITERION_SHARE = (0.002, 0.10)


def _site(r: dict, site: str, pre: str) -> dict:
    """One (block, site) candidate of a log row, with whether it meets the criterion
    (``None`` for a log without background shares)."""
    lo, hi = CRITERION_SHARE
    gap, bg = r[pre + "gap_fraction"], r.get(pre + "gap_background")
    share = r.get("background_share")
    met = None if share is None else bool(lo <= gap <= hi and bg is not None and bg > 0.5 and bg > share)
    return dict(layer=r["layer"], site=site, gap_fraction=gap, gap_background=bg,
                background_share=share, top1_background=r.get(pre + "top1_background"),
                max_over_median=r[pre + "max"] / r[pre + "median"],
                kurtosis=r.get(pre + "kurtosis"), met=met)


def criterion(entry: dict) -> dict:
    """Does one logged point meet the mini-lab's criterion (see the module docstring)?

    Returns the best (block, site) — the one that meets the criterion, else the one with
    the largest gap share, else the largest max/median — with its numbers and ``met``.
    Needs a v2 log (background shares); an older log has ``met=None``."""
    lo, hi = CRITERION_SHARE
    cands = [_site(r, site, pre) for r in entry["layers"]
             for site, pre in (("block", ""), ("attn", "attn_")) if pre + "median" in r]
    if not cands:
        raise ValueError("This log entry has no per-layer norm statistics.")
    return max(cands, key=lambda c: (bool(c["met"]), lo <= c["gap_fraction"] <= hi, c["gap_fraction"],
                                     c["max_over_median"]))


def criterion_held_from(log: list[dict]) -> float | None:
    """The first logged fraction of training from which every later point meets
    :func:`criterion`; ``None`` if the last one does not."""
    return held_from(log, lambda entry: bool(criterion(entry)["met"]))
