"""The paper's own numbers (Darcet et al., ICLR 2024; follow-ups where named), keyed
by finding, exactly as listed in the course's FINDINGS. Notebooks cite them from here
and put them beside what they measure; nothing here is measured.
"""

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
    "F9": {  # CorLoc (%), without -> with registers
        "DINOv2": {"VOC07": (35.3, 55.4), "VOC12": (40.2, 60.0), "COCO20k": (26.9, 42.0)},
        "DeiT-III": {"VOC07": (11.7, 27.1), "VOC12": (13.1, 32.7), "COCO20k": (10.7, 25.1)},
        "OpenCLIP": {"VOC07": (38.8, 37.1), "VOC12": (44.3, 42.0), "COCO20k": (31.0, 27.9)},
        "source": "Table 3",
    },
}


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
    register T1's number (to be marked not comparable, as the mini tier does)."""
    if test_time:
        return PAPER["T1"]["lost_voc07"]["test-time register"] if name == "dinov2_l" or stand_in else None
    value = corloc_reference(family, registers > 0)
    return corloc_reference("DINOv2", registers > 0) if value is None and stand_in else value
