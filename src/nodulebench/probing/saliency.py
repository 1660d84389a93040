r"""Grad-CAM saliency, and how much of it falls inside the generator's ground-truth masks.

Because :class:`~nodulebench.SyntheticNodules` knows where the nodule core, the spicules
and the calcification are, a saliency map can be scored exactly: :func:`mask_energy`
says which share of the attribution lies in each region.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from nodulebench._validation import check_floating, check_int, check_ndim
from nodulebench.probing.features import capture_outputs, evaluation_mode, resolve_layers

__all__ = ["grad_cam", "input_gradients", "mask_energy"]


def _target_scores(
    output: torch.Tensor, target: int | torch.Tensor | None, expected_rows: int
) -> torch.Tensor:
    """The ``(N,)`` score whose gradient Grad-CAM follows."""
    n = expected_rows
    if output.ndim == 0 or output.shape[0] != n:
        raise ValueError(
            f"the model must return logits (N, C) or (N,) with N = {n}; "
            f"got shape {tuple(output.shape)}"
        )
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim == 1:
        if target is not None:
            raise ValueError(
                f"target must be None for a model with a single logit per sample; got {target!r}"
            )
        return output
    if output.ndim != 2:
        raise ValueError(
            f"the model must return logits (N, C) or (N,); got shape {tuple(output.shape)}"
        )
    if target is None:
        classes = output.detach().argmax(dim=1)
    elif isinstance(target, torch.Tensor):
        check_ndim("target", target, (1,), "(N,)")
        if target.shape[0] != n or target.is_floating_point():
            raise ValueError(
                f"target must be an integer tensor of shape ({n},); "
                f"got {target.dtype} of shape {tuple(target.shape)}"
            )
        classes = target.to(output.device, torch.int64)
    else:
        check_int("target", target, 0)
        classes = torch.full((n,), target, dtype=torch.int64, device=output.device)
    if bool(((classes < 0) | (classes >= output.shape[1])).any()):
        raise ValueError(
            f"target must index one of the {output.shape[1]} classes; "
            f"got values in [{int(classes.min())}, {int(classes.max())}]"
        )
    return output.gather(1, classes[:, None])[:, 0]


def grad_cam(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Grad-CAM maps (Selvaraju et al., ICCV 2017) at the images' resolution.

    With :math:`A^c` the ``c``-th channel of ``layer``'s output and :math:`y` the target
    score, the map is

    .. math::

        M = \operatorname{ReLU}\Big(\sum_c \alpha_c A^c\Big), \qquad
        \alpha_c = \frac{1}{hw}\sum_{u,v}\frac{\partial y}{\partial A^c_{uv}},

    upsampled bilinearly to the images' ``(H, W)`` (trilinearly to ``(D, H, W)`` for
    volumes, where :math:`\alpha_c` averages over ``d h w``). Maps are not normalized (they are
    non-negative; an image whose map is all zero got no positive evidence). The model
    runs in eval mode, and gradients are taken with :func:`torch.autograd.grad`, so the
    parameters' ``.grad`` fields are left untouched.

    Args:
        model: Maps ``(N, C_in, H, W)`` images (or ``(N, C_in, D, H, W)`` volumes) to
            logits ``(N, K)``, ``(N, 1)`` or ``(N,)``.
        layer: Name (from ``model.named_modules()``) of a module with a spatial output
            ``(N, C, h, w)`` (``(N, C, d, h, w)`` for volumes, e.g. a ``Conv3d``).
        images: ``(N, C_in, H, W)`` or ``(N, C_in, D, H, W)`` floating-point inputs.
        target: For ``(N, K)`` logits: ``None`` follows each image's predicted class, an
            int one class for all, an integer ``(N,)`` tensor one class per image. Must
            be ``None`` for single-logit models (the logit itself is followed).

    Returns:
        ``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``) non-negative maps, on the images' device.

    Raises:
        ValueError: If the layer is unknown or not spatial, or ``target`` does not fit.
        TypeError: If ``images`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from nodulebench.probing import grad_cam
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> grad_cam(model, "1", torch.rand(3, 1, 16, 16), target=1).shape
        torch.Size([3, 1, 16, 16])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str); got {type(layer).__name__}")
    check_ndim("images", images, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
    check_floating("images", images)
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image; got N = 0")
    [name] = resolve_layers(model, layer)
    # Inputs that require grad make every activation part of the graph, so Grad-CAM
    # also works for frozen or parameter-free models.
    inputs = images.detach().clone().requires_grad_(True)
    with evaluation_mode(model), torch.enable_grad(), capture_outputs(model, [name]) as captured:
        output = model(inputs)
        if name not in captured:
            raise ValueError(f"layer: module {name!r} was not called in the forward pass")
        activation = captured[name]
        if activation.ndim != images.ndim:
            expected = "(N, C, h, w)" if images.ndim == 4 else "(N, C, d, h, w)"
            raise ValueError(
                f"layer {name!r} must have a spatial output {expected}; "
                f"got shape {tuple(activation.shape)}"
            )
        scores = _target_scores(output, target, images.shape[0])
        (gradient,) = torch.autograd.grad(scores.sum(), activation)
    spatial = tuple(range(2, images.ndim))
    weights = gradient.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    if cam.shape[2:] != images.shape[2:]:
        mode = "bilinear" if images.ndim == 4 else "trilinear"
        cam = F.interpolate(cam, size=images.shape[2:], mode=mode, align_corners=False)
        cam = cam.clamp_min(0.0)  # bilinear weights are convex; this only removes -0.0
    return cam.to(images.dtype)


def input_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Input-gradient saliency: :math:`\sum_c |\partial y / \partial x_c|` at every pixel.

    The gradient of the target score :math:`y` (e.g. the malignant logit) with respect to
    the input, its absolute value summed over input channels (Simonyan et al., 2014). Unlike
    :func:`grad_cam` it has the input's full resolution and needs no layer, so it can see
    thin structures (spicules) that a coarse layer blurs. The model runs in eval mode and
    the parameters' ``.grad`` fields are left untouched.

    Args:
        model: Maps ``(N, C_in, H, W)`` images (or ``(N, C_in, D, H, W)`` volumes) to
            logits ``(N, K)``, ``(N, 1)`` or ``(N,)``.
        images: ``(N, C_in, H, W)`` or ``(N, C_in, D, H, W)`` floating-point inputs.
        target: as for :func:`grad_cam`.

    Returns:
        ``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``) non-negative maps, on the images' device.

    Raises:
        ValueError: If ``target`` does not fit the model's output, or ``N = 0``.
        TypeError: If ``images`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from nodulebench.probing import input_gradients
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> input_gradients(model, torch.rand(3, 1, 4, 4), target=1).shape
        torch.Size([3, 1, 4, 4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    check_ndim("images", images, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
    check_floating("images", images)
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image; got N = 0")
    inputs = images.detach().clone().requires_grad_(True)
    with evaluation_mode(model), torch.enable_grad():
        scores = _target_scores(model(inputs), target, images.shape[0])
        (gradient,) = torch.autograd.grad(scores.sum(), inputs)
    return gradient.abs().sum(dim=1, keepdim=True).to(images.dtype)


def mask_energy(maps: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The share of each map's attribution inside each ground-truth region.

    The masks are turned into a partition of the image (or volume): regions are taken in the given
    order and a pixel that lies in several masks counts for the *last* of them, so a
    general-to-specific order such as the dataset's ``("nodule", "spicules",
    "calcification")`` makes ``"nodule"`` the core without spicules and calcification.
    Pixels in no mask form ``"background"``. The shares of one image sum to 1.

    Args:
        maps: ``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``) non-negative attributions, e.g.
            from :func:`grad_cam`.
        masks: ``{region: bool tensor shaped like maps}``, e.g. the masks of
            ``dataset.render(indices, return_masks=True)``. ``"background"`` is reserved.

    Returns:
        ``{region: (N,)}`` float64 shares, the masks' regions in order, then
        ``"background"``.

    Raises:
        ValueError: If shapes differ, a map has negative or non-finite values, a map is
            all zero (its shares are undefined; the message lists the images), or a
            region is called ``"background"``.
        TypeError: If a mask is not boolean.

    Example:
        >>> import torch
        >>> from nodulebench.probing import mask_energy
        >>> maps = torch.zeros(1, 1, 4, 4); maps[..., :2, :] = 1.0
        >>> core = torch.zeros(1, 1, 4, 4, dtype=torch.bool); core[..., 0, :] = True
        >>> {k: v.tolist() for k, v in mask_energy(maps, {"nodule": core}).items()}
        {'nodule': [0.5], 'background': [0.5]}
    """
    check_ndim("maps", maps, (4, 5), "(N, 1, H, W) or (N, 1, D, H, W)")
    check_floating("maps", maps)
    if maps.shape[1] != 1:
        raise ValueError(
            f"maps must have shape (N, 1, H, W) or (N, 1, D, H, W); got shape {tuple(maps.shape)}"
        )
    values = maps.detach().to(torch.float64)
    if not torch.isfinite(values).all() or bool((values < 0).any()):
        raise ValueError("maps must be finite and non-negative; got NaN, inf or negative values")
    totals = values.flatten(1).sum(dim=1)
    empty = torch.nonzero(totals == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"maps must have some positive attribution; images {empty[:10]} are all zero, "
            "so their shares are undefined"
        )
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping region -> mask; got {type(masks).__name__}")
    claimed = torch.zeros(maps.shape, dtype=torch.bool, device=maps.device)
    shares: dict[str, torch.Tensor] = {}
    for region in reversed(list(masks)):
        mask = masks[region]
        check_ndim(f"masks[{region!r}]", mask, (maps.ndim,), "like maps")
        if region == "background":
            raise ValueError("masks must not contain the reserved region 'background'")
        if mask.dtype != torch.bool:
            raise TypeError(f"masks[{region!r}] must be a bool tensor; got {mask.dtype}")
        if mask.shape != maps.shape:
            raise ValueError(
                f"masks[{region!r}] must have the maps' shape {tuple(maps.shape)}; "
                f"got {tuple(mask.shape)}"
            )
        own = mask.to(maps.device) & ~claimed
        claimed |= own
        shares[region] = (values * own).flatten(1).sum(dim=1) / totals
    ordered = {region: shares[region] for region in masks}
    ordered["background"] = (values * ~claimed).flatten(1).sum(dim=1) / totals
    return ordered
