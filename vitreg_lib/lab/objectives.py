"""The mini-lab's training objectives beyond the course's image label.

* ``dense_label`` — *every patch* predicts the image label (the model's head applied to
  each normed patch token; the image prediction is the mean of the patch logits, which
  is what ``model(x)`` returns, since the model pools before a linear head);
* ``dense_recon`` — every patch reconstructs its own pixels (a linear head, saved in
  ``heads.safetensors``), mean squared error in normalised pixel units;
* ``dense_both`` — the two dense losses added, the reconstruction weighted by
  ``recon_weight``;
* ``dense_objects`` — as ``dense_both``, but only the patches that hold object pixels
  predict the image label; background patches only reconstruct themselves, so the
  heads that gather the label must do nothing for nine patches in ten (the no-op
  setting of Kempner's toy, Fesser et al. 2026). Its ``patch_acc`` counts object patches;
* ``masked`` — DINOv2's split of the work: the image label through [CLS], and, in a share
  ``mask_images`` of the images, a random ``mask_min..mask_max`` of the patches replaced by
  a learned mask token, each of those reconstructing its own pixels (iBOT scores only the
  masked patches, so the visible ones carry no loss of their own and are free to be
  recycled). At validation and in the saved model nothing is masked.

``label`` (the course's objective) is the image label through the model's own head.
"""

from __future__ import annotations

import torch

OBJECTIVES = ("label", "dense_label", "dense_recon", "dense_both", "dense_objects", "masked")
#: the objectives with a pixel-reconstruction head
RECON_OBJECTIVES = ("dense_recon", "dense_both", "dense_objects", "masked")
#: the objectives whose every patch is read by a head (the model pools its patches)
DENSE_OBJECTIVES = ("dense_label", "dense_recon", "dense_both", "dense_objects")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, N, patch*patch*3]``, patches in row-major grid order
    (the order of the ViT's patch tokens), each patch's pixels row-major, channels last."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"Image {h}x{w} is not a multiple of the patch {patch}.")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ReconHead(torch.nn.Linear):
    """The pixel-reconstruction head (a linear map from a token to its patch's pixels);
    for the ``masked`` objective it also holds the learned ``mask_token``."""

    def __init__(self, dim: int, pixels: int, mask_token: bool = False):
        super().__init__(dim, pixels)
        if mask_token:
            self.mask_token = torch.nn.Parameter(torch.zeros(dim))


def random_masks(cfg, images: int, patches: int, gen: torch.Generator) -> torch.Tensor:
    """``[images, patches]`` bool: which patches the ``masked`` objective hides. A share
    ``mask_images`` of the images is masked (iBOT masks about half of DINOv2's), each with
    its own share of patches drawn uniformly in ``[mask_min, mask_max]``."""
    chosen = torch.rand(images, generator=gen) < cfg.mask_images
    share = cfg.mask_min + (cfg.mask_max - cfg.mask_min) * torch.rand(images, generator=gen)
    return (torch.rand(images, patches, generator=gen) < share[:, None]) & chosen[:, None]


def masked_features(model: torch.nn.Module, x: torch.Tensor, masked: torch.Tensor,
                    mask_token: torch.Tensor) -> torch.Tensor:
    """timm's ``forward_features`` with the embeddings of the ``masked`` patches
    (``[B, N]`` bool) replaced by ``mask_token`` before the position embedding is added."""
    tokens = model.patch_embed(x)  # [B, N, D], or [B, rows, cols, D] with dynamic_img_size
    hide = masked.reshape(tokens.shape[:-1])[..., None]
    tokens = torch.where(hide, mask_token.to(tokens.dtype).expand_as(tokens), tokens)
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(tokens)))
    return model.norm(model.blocks(tokens))


def _masked_loss(model: torch.nn.Module, recon: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                 cfg, masked: torch.Tensor | None) -> torch.Tensor:
    """The ``masked`` objective: the label through [CLS], and the hidden patches' pixels."""
    if masked is None:
        raise ValueError("The masked objective needs the mask of hidden patches.")
    feats = masked_features(model, xb, masked, recon.mask_token)
    loss = torch.nn.functional.cross_entropy(model.forward_head(feats), yb)
    if masked.any():  # only the hidden patches are scored; the visible ones are free
        hidden = feats[:, model.num_prefix_tokens:][masked]
        loss = loss + cfg.recon_weight * torch.nn.functional.mse_loss(
            recon(hidden), patchify(xb, cfg.patch)[masked])
    return loss


def _dense_loss(model: torch.nn.Module, recon: torch.nn.Module | None, xb: torch.Tensor,
                yb: torch.Tensor, cfg, fg: torch.Tensor | None) -> torch.Tensor:
    """The dense objectives: the patches' label loss and their pixel reconstruction."""
    tokens = model.forward_features(xb)[:, model.num_prefix_tokens:]  # normed patch tokens
    loss = 0.0
    if cfg.objective in ("dense_label", "dense_both", "dense_objects"):
        logits = model.head(tokens)  # [B, N, classes]
        target = yb[:, None].expand(-1, tokens.shape[1])
        if cfg.objective == "dense_objects":
            if fg is None:
                raise ValueError("dense_objects needs the object-patch mask fg.")
            loss = torch.nn.functional.cross_entropy(logits[fg], target[fg])
        else:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    if recon is not None:
        mse = torch.nn.functional.mse_loss(recon(tokens), patchify(xb, cfg.patch))
        loss = loss + (cfg.recon_weight * mse if cfg.objective != "dense_recon" else mse)
    return loss


def objective_loss(model: torch.nn.Module, recon: torch.nn.Module | None, xb: torch.Tensor,
                   yb: torch.Tensor, cfg, fg: torch.Tensor | None = None,
                   masked: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of ``cfg.objective`` on one batch (``fg``: ``[B, N]`` bool, the
    patches holding object pixels; ``dense_objects`` needs it; ``masked``: ``[B, N]``
    bool, the hidden patches; the ``masked`` objective needs it)."""
    if cfg.objective == "masked":
        return _masked_loss(model, recon, xb, yb, cfg, masked)
    if cfg.objective not in DENSE_OBJECTIVES:
        return torch.nn.functional.cross_entropy(model(xb), yb)
    return _dense_loss(model, recon, xb, yb, cfg, fg)


@torch.no_grad()
def dense_metrics(model: torch.nn.Module, recon: torch.nn.Module | None, x: torch.Tensor,
                  y: torch.Tensor, patch: int, labelled: torch.Tensor | None = None) -> dict:
    """Validation metrics of a dense objective: the share of patches that predict the
    image label (of the ``labelled`` ``[B, N]`` patches only, when given), and the pixel
    reconstruction error (normalised units, every patch)."""
    model.eval()
    device = next(model.parameters()).device
    correct = err = 0.0
    n_patches = (x.shape[-1] // patch) ** 2
    labelled = torch.ones(x.shape[0], n_patches, dtype=torch.bool) if labelled is None else labelled
    for xb, yb, lb in zip(torch.split(x, 128), torch.split(y, 128), torch.split(labelled, 128)):
        tokens = model.forward_features(xb.to(device))[:, model.num_prefix_tokens:]
        right = model.head(tokens).argmax(-1).cpu() == yb[:, None]
        correct += float(right[lb].float().sum())
        if recon is not None:
            err += float(((recon(tokens) - patchify(xb.to(device), patch)) ** 2).mean(-1).sum())
    n = x.shape[0] * n_patches
    out = {"patch_acc": correct / max(1, int(labelled.sum()))}
    if recon is not None:
        out["recon_mse"] = err / n
    return out
