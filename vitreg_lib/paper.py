"""The paper's findings and its own numbers (Darcet et al., ICLR 2024; follow-ups where
named), keyed by finding, and the rule that judges a measured number against them.

* :data:`FINDINGS` — every finding of the course, in the order of the book's "paper in
  brief" page, with the title of its heading there (the scorecard groups its rows by it);
* :data:`PAPER` — the paper's numbers per finding. Notebooks cite them from here and put
  them beside what they measure; nothing here is measured;
* :func:`verdict` — the scorecard's rule: *reproduced*, *not reproduced* or *not
  comparable*, and the test that decided it; a counted quantity (a FLOP count,
  :data:`ARITHMETIC_QUANTITIES`) is an *arithmetic check* instead, never a reproduction;
* :func:`finding_verdict` — one finding's verdict in one tier, from its numbers' verdicts.
"""

from __future__ import annotations

import math
import re

#: the findings in the order of the book's "paper in brief" page (book/paper.md), with
#: the titles of its headings
FINDINGS = {
    "F1": "high-norm outlier tokens exist", "F2": "where and when the outliers appear",
    "F3": "outliers sit on redundant patches", "F4": "outliers hold little local information",
    "F5": "outliers hold global information", "F6": "the fix is registers", "F7": "the downstream effect",
    "F8": "how many registers", "F9": "object discovery with LOST", "F10": "registers specialise",
    "F11": "cleaner attention and feature maps", "T1": "test-time registers",
    "T2": "do small models grow outliers?", "T3": "registers as fixed biases",
    "T4": 'outliers as "do-nothing" attention',
}

PAPER: dict[str, dict] = {
    "F1": {
        "model": "DINOv2 ViT-g/14",
        "outlier_threshold": 150.0,  # absolute norm cut-off, hand-picked for ViT-g
        "outlier_pct": 2.37,  # % of patch tokens above the cut-off
        "norm_ratio": 10.0,  # outlier norm / typical norm, "about 10x"
        "bulk_range": (0, 100),
        "high_mode_range": (200, 600),
        "source": "Fig. 2, Fig. 3",
    },
    "F2": {
        "model": "DINOv2 ViT-g/14 (40 blocks)",
        "split_layer": 15,
        "split_layer_fraction": 15 / 40,
        "training_fraction": 1 / 3,
        # model size: DINOv2 ViT-S and -B show no high-norm mode, only L, H and g do (Fig. 4c)
        "small_outlier_pct": "≈ 0",
        "source": "Fig. 4",
    },
    "F4": {
        "model": "DINOv2 ViT-g/14",
        "position_top1": {"normal": 41.7, "outlier": 22.8},
        "position_distance": {"normal": 0.79, "outlier": 5.09},
        "pixel_l2": {"normal": 18.38, "outlier": 25.23},
        "source": "Fig. 5b",
    },
    "F5": {
        "model": "DINOv2 ViT-g/14",
        "IN1k": {"cls": 86.0, "normal": 65.8, "outlier": 69.0},
        "source": "Table 1",
    },
    "F6": {
        "model": "DINOv2 ViT-L/14, DeiT-III, OpenCLIP",
        "outlier_pct_with_registers": "≈ 0 (the high-norm mode disappears)",
        "source": "Fig. 6, Fig. 7",
    },
    "F8": {
        "model": "DINOv2 ViT-L/14",
        "extra_flops_pct": {4: "< 2", 16: "~ 6"},
        "artifacts_removed_from": 1,  # registers: one already removes the visible artifacts
        "source": "Fig. 8",
    },
    "T1": {
        "model": "DINOv2 ViT-L/14 (Jiang et al., 2025)",
        "IN1k_single_token": {"cls": 85.6, "outlier patch": 84.5, "test-time register": 84.5},
        "lost_voc07": {"none": 32.2, "test-time register": 53.8, "trained registers": 56.2},
        "search": {"DINOv2 ViT-L/14": "layers <= 17, k ~ 45", "OpenCLIP ViT-B/16": "layers <= 5, k = 10"},
        "source": "arXiv 2506.08010",
    },
    "T1_code": {  # what the authors' code does (read, not measured); see JIANG_* below
        "model": "DINOv2 ViT-L/14 and OpenCLIP ViT-B/16 (Jiang et al., 2025, their code)",
        "search": "norm > a fixed cut at detect_layer over ALL tokens ([CLS] included), per image; "
                  "score = mean |activation| at the flagged tokens, sparsity filter on, averaged over "
                  "the images with a flagged token; top_k of layers <= highest_layer",
        "value": "one number per layer: the signed maximum (max or min, whichever is larger in "
                 "magnitude) over all tokens and all listed units of that layer, written to every "
                 "listed unit of the extra token(s); the listed units are zeroed on the patches",
        "images": 100,  # register_neurons.ipynb: processed_image_cnt=100
        "batch": "edits batch element 0 only (output[0, ...])",
        "text_vs_code": [
            "the hook's own comment (shared/hook_fn.py) and the abstract ('shifting the high-norm "
            "activations from our discovered register neurons into an additional untrained token') "
            "describe moving each neuron's activation; the code writes one signed maximum per "
            "layer, over all tokens ([CLS] and the extra token included) and all listed units",
            "configs/dinov2_large.yaml says top_k 50; the list shipped for DINOv2-L has 45 units",
            "find_register_neurons defaults to 500 images and no sparsity filter; the notebook "
            "that produced the lists passes 100 images and the filter on",
            "not checked: the paper's method section itself (only abstracts and first pages of "
            "arXiv 2506.08010 were readable here)",
        ],
        "source": "github.com/nickjiang2378/test-time-registers @ 860df43 (see JIANG_SOURCE)",
    },
    "register_content": {  # Parodi, Matelsky & Segado, CVPR 2026 HOW workshop
        "model": "DINOv2+registers and DINOv3, ViT-S/B (and DINOv2 without registers for [CLS])",
        "zero_registers_drop_pp": {"classification": 36.6, "segmentation": 30.9},  # "up to"
        "replacement_within_pp": 1.0,  # mean, matched noise, cross-image shuffle: "within ~1 pp"
        "zero_cls_segmentation_drop_pp": {"without registers": 37.0, "with registers": "< 1"},
        "effective_rank": {"without registers": 13.5, "with registers": 4.0},
        "calibration_images": 5000,  # ImageNet images for the layer-wise means
        "protocol": "hook at EVERY block output: zeros, layer-wise dataset mean, Gaussian noise "
                    "matched in mean and variance, registers of another image of the batch",
        "source": "arXiv 2604.14433 (abstract and the authors' post)",
    },
    "F9": {  # CorLoc (%), without -> with registers
        "DINOv2": {"VOC07": (35.3, 55.4), "VOC12": (40.2, 60.0), "COCO20k": (26.9, 42.0)},
        "DeiT-III": {"VOC07": (11.7, 27.1), "VOC12": (13.1, 32.7), "COCO20k": (10.7, 25.1)},
        "OpenCLIP": {"VOC07": (38.8, 37.1), "VOC12": (44.3, 42.0), "COCO20k": (31.0, 27.9)},
        "source": "Table 3",
    },
}

#: where the authors' code was read (Jiang et al., 2025): repository and commit
JIANG_SOURCE = {"repository": "nickjiang2378/test-time-registers",
                "commit": "860df43515c8d8e9e90952af25a46c26e4469570"}

#: the authors' search settings per model family, from their configs (``configs/*.yaml``,
#: read by ``register_neurons.ipynb``, which calls ``shared/algorithms.py:find_register_neurons``
#: with ``processed_image_cnt=100, apply_sparsity_filter=True``). ``norm_cut``: a token is an
#: outlier when its norm at ``detect_layer`` is strictly above it. ``top_k``: the number of
#: units kept (DINOv2: the config says 50, the list the authors ship and their torch-hub model
#: runs has 45; we keep 45). Each cut was hand-picked for the model named in ``set_for``
#: (``depth`` blocks).
JIANG_SEARCH: dict[str, dict] = {
    "DINOv2": {"set_for": "DINOv2 ViT-L/14", "depth": 24, "norm_cut": 150.0, "detect_layer": -2,
               "highest_layer": 17, "top_k": 45, "top_k_config": 50, "images": 100,
               "sparsity": {"below": 0.5, "min_fraction": 0.5},
               "source": "configs/dinov2_large.yaml; dinov2/dinov2/hub/register_neurons.py"},
    "OpenCLIP": {"set_for": "OpenCLIP ViT-B/16 (laion2b_s34b_b88k)", "depth": 12, "norm_cut": 30.0,
                 "detect_layer": -1, "highest_layer": 5, "top_k": 10, "top_k_config": 10,
                 "images": 100, "sparsity": {"below": 0.5, "min_fraction": 0.5},
                 "source": "configs/openclip_base.yaml (configs/openai_clip_base.yaml: the same)"},
}

#: the authors' DINOv2 ViT-L/14 register neurons (the paper's data), ``{layer: [units]}``,
#: in their order; from ``dinov2/dinov2/hub/register_neurons.py`` (LARGE_REGISTER_NEURONS)
#: at :data:`JIANG_SOURCE`. 45 units: 17 in layer 17, 9 in 16, 9 in 15, 8 in 14, 1 in 13, 1 in 12.
JIANG_DINOV2_L_NEURONS: dict[int, list[int]] = {
    17: [884, 133, 1427, 3464, 2373, 2436, 841, 3574, 2129, 3355, 4047, 3341, 1330, 4031, 844, 944, 464],
    16: [2301, 3576, 1940, 3463, 1244, 407, 3152, 2517, 3465],
    15: [1714, 3507, 2492, 2680, 131, 720, 3499, 3062, 2625],
    14: [2110, 1510, 1082, 2711, 2464, 147, 543, 581],
    13: [2400],
    12: [3168],
}


def jiang_neurons() -> list[tuple[int, int]]:
    """:data:`JIANG_DINOV2_L_NEURONS` as ``(layer, unit)`` pairs."""
    return [(layer, unit) for layer, units in JIANG_DINOV2_L_NEURONS.items() for unit in units]


def jiang_search(family: str) -> dict | None:
    """The authors' search settings for a model family (:data:`JIANG_SEARCH`), or ``None``
    for a family they published none for (DeiT-III, DINO v1, MAE, the minis)."""
    return JIANG_SEARCH.get(family)


def cite(finding: str, key: str):
    """One number of the paper, with an error naming what exists if the key is wrong."""
    try:
        return PAPER[finding][key]
    except KeyError:
        raise KeyError(f"No paper value {finding}/{key}; known: "
                       f"{ {f: list(v) for f, v in PAPER.items()} }") from None


def probe_reference() -> dict[tuple[str, str, str], float]:
    """F4 and F5 (ImageNet-1k) keyed like :mod:`vitreg_lib.probes` results:
    ``(probe, metric, group) -> value``."""
    f4, f5 = PAPER["F4"], PAPER["F5"]["IN1k"]
    out = {}
    for g in ("normal", "outlier"):
        out[("position", "top-1 accuracy (%)", g)] = f4["position_top1"][g]
        out[("position", "mean distance (patches)", g)] = f4["position_distance"][g]
        out[("pixels", "L2 error (squared, per patch)", g)] = f4["pixel_l2"][g]
        out[("global", "accuracy (%)", f"{g} patch")] = f5[g]
    out[("global", "accuracy (%)", "cls")] = f5["cls"]
    return out


def t1_reference() -> dict[tuple[str, str, str], float]:
    """T1's single-token ImageNet-1k probe (DINOv2-L/14) keyed like
    :mod:`vitreg_lib.probes` results: ``(probe, metric, group) -> value``."""
    ref = PAPER["T1"]["IN1k_single_token"]
    return {("global", "accuracy (%)", "cls"): ref["cls"],
            ("global", "accuracy (%)", "outlier patch"): ref["outlier patch"],
            ("global", "accuracy (%)", "test-time register 0"): ref["test-time register"]}


def corloc_reference(family: str, registers: bool) -> float | None:
    """F9: the paper's LOST CorLoc on VOC07 (%) for a model family (``"DINOv2"``,
    ``"DeiT-III"``, ``"OpenCLIP"``) without or with registers; ``None`` for a family the
    paper did not run."""
    pair = PAPER["F9"].get(family, {}).get("VOC07")
    return None if pair is None else pair[int(bool(registers))]


def lost_reference(family: str, registers: int, name: str = "", test_time: bool = False,
                   stand_in: bool = False) -> float | None:
    """The published LOST CorLoc on VOC07 (%) to set beside a model: F9 for a family
    without or with trained registers; T1 (Jiang et al., DINOv2-L only) for a model with a
    test-time register. ``None`` where nobody published one, unless ``stand_in``: then a
    family the paper did not run gets DINOv2's pair, and any model with a test-time
    register T1's number (to be marked not comparable, as the offline tier does). The paper's
    models have 0 or 4 registers: a stand-in is given at those counts only (no line is
    drawn at a count nobody measured)."""
    if test_time:
        return PAPER["T1"]["lost_voc07"]["test-time register"] if name == "dinov2_l" or stand_in else None
    value = corloc_reference(family, registers > 0)
    if value is None and stand_in and registers in (0, 4):
        return corloc_reference("DINOv2", registers > 0)
    return value


# -- the scorecard's rule: a measured number against the paper's ---------------------------

REL_TOL = 0.10  # exact paper value: |measured - paper| <= 10 % of |paper|
APPROX_REL_TOL = 0.20  # "~ x" / "≈ x": within 20 % of x
APPROX_ZERO_ABS = 0.5  # "≈ 0": |measured| <= 0.5 (the paper writes it for a percentage of tokens)

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
ARITHMETIC = "arithmetic check"  # a counted quantity: its agreement checks arithmetic, not a finding
AGREES, DIFFERS = "agrees", "differs"  # an arithmetic check's outcome, first word of its criterion
PARTLY = "partly reproduced"  # a finding some of whose numbers reproduce
NOT_COMPARED = "not compared"  # a finding with no number beside a paper value in a tier

#: record names (prefixes) of quantities that follow from the architecture by arithmetic,
#: not from what a model learned: the extra FLOPs of registers (F8), counted with
#: torch.utils.flop_counter. Agreeing with the paper checks the count; it reproduces nothing.
ARITHMETIC_QUANTITIES = ("extra_flops_pct",)


def is_arithmetic(name: str) -> bool:
    """Whether the record ``name`` is a counted quantity (:data:`ARITHMETIC_QUANTITIES`)."""
    return name.startswith(ARITHMETIC_QUANTITIES)

_CLAIM = re.compile(r"^\s*(<=|>=|≤|≥|<|>|~|≈)?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def format_number(x: float) -> str:
    """A paper or measured number as the scorecard shows it (4 significant digits)."""
    return f"{x:.4g}"


def _within(m: float, x: float, rel: float) -> bool:
    return abs(m - x) <= rel * abs(x) * (1 + 1e-9)  # the slack: 2.2 is within 10 % of 2.0


def verdict(paper, value, comparable: str = "", arithmetic: bool = False) -> tuple[str, str]:
    """``(verdict, criterion)`` for one recorded number: :data:`NOT_COMPARABLE` when the
    chapter marks it so (``comparable`` starts with "no"), nothing was measured or the
    paper's value is not a number, a two-number range or a comparison (``"< 2"``,
    ``"~ 6"``); else :data:`REPRODUCED` when ``value`` is within :data:`REL_TOL` of an
    exact paper value, within :data:`APPROX_REL_TOL` of an approximate one (``"≈ 0"``: at
    most :data:`APPROX_ZERO_ABS` from zero), inside a range or on the right side of a
    bound; else :data:`NOT_REPRODUCED`. ``criterion`` names the test, in a few words.

    ``arithmetic`` (a counted quantity, :func:`is_arithmetic`): the verdict is
    :data:`ARITHMETIC` whatever the numbers, and the criterion starts with :data:`AGREES`,
    :data:`DIFFERS` or :data:`NOT_COMPARABLE`, then the test (``"agrees, < 2"``)."""
    v, criterion = _verdict(paper, value, comparable)
    if not arithmetic:
        return v, criterion
    outcome = {REPRODUCED: AGREES, NOT_REPRODUCED: DIFFERS}.get(v, NOT_COMPARABLE)
    return ARITHMETIC, f"{outcome}, {criterion}"


def finding_verdict(verdicts) -> str:
    """One finding's verdict in one tier from its numbers' ``(verdict, criterion)`` pairs
    (:func:`verdict`), with counts: ``"reproduced (2 of 2)"``, ``"partly reproduced (1 of
    3)"`` or ``"not reproduced (0 of 2)"`` over the numbers judged reproduced or not
    (arithmetic checks and numbers not comparable left out); where none was judged,
    ``"arithmetic check (k of n agree)"`` over the arithmetic checks that agree or differ,
    else :data:`NOT_COMPARABLE` if there is any number, else :data:`NOT_COMPARED`."""
    verdicts = list(verdicts)
    judged = [v for v, _ in verdicts if v in (REPRODUCED, NOT_REPRODUCED)]
    if judged:
        k, n = judged.count(REPRODUCED), len(judged)
        word = REPRODUCED if k == n else NOT_REPRODUCED if k == 0 else PARTLY
        return f"{word} ({k} of {n})"
    checks = [c for v, c in verdicts if v == ARITHMETIC and c.startswith((AGREES, DIFFERS))]
    if checks:
        return f"{ARITHMETIC} ({sum(c.startswith(AGREES) for c in checks)} of {len(checks)} agree)"
    return NOT_COMPARABLE if verdicts else NOT_COMPARED


def _verdict(paper, value, comparable: str) -> tuple[str, str]:
    if comparable.strip().lower().startswith("no"):
        return NOT_COMPARABLE, "marked no"
    m = _number(value)
    if m is None:
        return NOT_COMPARABLE, "not measured"
    p = _number(paper)
    if p is not None:
        ok = _within(m, p, REL_TOL)
        return (REPRODUCED if ok else NOT_REPRODUCED), f"within {REL_TOL * 100:g} % of {format_number(p)}"
    if isinstance(paper, (list, tuple)) and len(paper) == 2 and None not in map(_number, paper):
        lo, hi = sorted(map(float, paper))
        return ((REPRODUCED if lo <= m <= hi else NOT_REPRODUCED),
                f"between {format_number(lo)} and {format_number(hi)}")
    match = _CLAIM.match(paper) if isinstance(paper, str) else None
    if match is None:
        return NOT_COMPARABLE, "paper value not a number"
    op, x = match.group(1) or "", float(match.group(2))
    if op in ("~", "≈"):
        if x == 0:
            return (REPRODUCED if abs(m) <= APPROX_ZERO_ABS else NOT_REPRODUCED,
                    f"at most {APPROX_ZERO_ABS:g} from 0")
        ok = _within(m, x, APPROX_REL_TOL)
        return ((REPRODUCED if ok else NOT_REPRODUCED),
                f"within {APPROX_REL_TOL * 100:g} % of {format_number(x)}")
    tests = {"<": m < x, ">": m > x, "<=": m <= x, "≤": m <= x, ">=": m >= x, "≥": m >= x,
             "": _within(m, x, REL_TOL)}
    criterion = f"{op} {format_number(x)}" if op else f"within {REL_TOL * 100:g} % of {format_number(x)}"
    return (REPRODUCED if tests[op] else NOT_REPRODUCED), criterion
