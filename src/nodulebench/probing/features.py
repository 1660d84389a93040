"""Activations of named modules, collected with forward hooks.

:func:`extract_features` works with any :class:`torch.nn.Module`: it looks the layers up
by the names of :meth:`torch.nn.Module.named_modules`, records their outputs during an
ordinary forward pass and pools spatial outputs globally, so every layer becomes a
``(N, D)`` matrix ready for probes, CKA or a projection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from nodulebench._validation import check_int
from nodulebench.data import SyntheticNodules

__all__ = ["extract_features"]


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Check that every name in ``layers`` names a module of ``model``; return them."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers must name at least one module; got an empty sequence")
    available = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layers must be strings; got {type(name).__name__}")
        if name not in available:
            known = [n for n in available if n]
            shown = ", ".join(repr(n) for n in known[:12])
            more = f", ... ({len(known)} in all)" if len(known) > 12 else ""
            raise ValueError(
                f"layers: {name!r} is not a module of the model; "
                f"known names are {shown}{more} ('' is the whole model)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"layers must not repeat a name; got {names}")
    return names


def _first_tensor(name: str, output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"layer {name!r} must output a tensor (or a tuple whose first item is one); "
        f"got {type(output).__name__}"
    )


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``captured[name]`` holds the latest output of module ``name``."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            captured[name] = _first_tensor(name, output)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each module's own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def pool_features(activation: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial)`` -> ``(N, C)`` by a global mean; ``(N,)`` -> ``(N, 1)``."""
    if activation.ndim == 1:
        return activation[:, None]
    if activation.ndim > 2:
        return activation.flatten(2).mean(dim=2)
    return activation


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for a stateless model."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def batch_inputs(batch: Any) -> torch.Tensor:
    """The model input of a batch: the tensor itself, or the first item of a tuple."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        "data must yield tensors or (inputs, ...) tuples whose first item is a tensor; "
        f"got a batch of type {type(batch).__name__}"
    )


def _batches(
    data: Dataset[Any] | DataLoader[Any],
    loader: DataLoader[Any],
    batch_size: int,
    device: torch.device,
) -> Iterator[Any]:
    """Batches of ``loader``; a plain SyntheticNodules is rendered a batch at a time."""
    if isinstance(data, SyntheticNodules) and data.transform is None:
        # Its __getitem__ renders one image per call; render() vectorises the batch.
        for start in range(0, len(data), batch_size):
            stop = min(len(data), start + batch_size)
            yield data.render(torch.arange(start, stop), device=device)
        return
    yield from loader


def extract_features(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    layers: str | Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Collect the activations of named modules over a dataset, one row per sample.

    A forward hook on each named module records its output during an ordinary forward
    pass (in eval mode, without gradients; the modules' train/eval modes are restored
    afterwards). Spatial outputs ``(N, C, H, W)`` (or any ``(N, C, *)``) are reduced by a
    global mean over the trailing dimensions to ``(N, C)``; a ``(N,)`` output becomes
    ``(N, 1)``.

    Args:
        model: Any module; it receives the first item of each batch.
        data: A :class:`torch.utils.data.Dataset` (iterated in index order with
            ``batch_size``) or a :class:`torch.utils.data.DataLoader` that does not
            shuffle. Items are tensors or tuples whose first item is the input, e.g. the
            ``(image, label)`` pairs of :class:`~nodulebench.SyntheticNodules`.
        layers: One name or several from ``model.named_modules()``; ``""`` is the whole
            model (its output).
        batch_size: Batch size when ``data`` is a dataset (ignored for a loader). A
            :class:`~nodulebench.SyntheticNodules` without ``transform`` is rendered a
            whole batch at a time with its vectorised ``render``, on ``device``.
        device: Where the model runs; default: the device of its parameters. Inputs are
            moved there.

    Returns:
        ``{layer: features}`` with ``features`` of shape ``(N, D_layer)`` on the CPU, rows
        in dataset order.

    Raises:
        ValueError: If a layer name is unknown (the message lists the known names), the
            data is empty, or a loader shuffles.
        TypeError: If a batch or a layer output is not a tensor (or tuple of them).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from nodulebench.probing import extract_features
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        >>> images = torch.rand(10, 1, 8, 8)
        >>> feats = extract_features(model, torch.utils.data.TensorDataset(images), ["0", "3"])
        >>> feats["0"].shape, feats["3"].shape
        (torch.Size([10, 4]), torch.Size([10, 2]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    names = resolve_layers(model, layers)
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError(
                "data must iterate in dataset order; got a DataLoader with a RandomSampler "
                "(shuffle=True): rows would not match the dataset's factors"
            )
        loader: DataLoader[Any] = data
    elif isinstance(data, Dataset):
        check_int("batch_size", batch_size, 1)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise TypeError(f"data must be a torch Dataset or DataLoader; got {type(data).__name__}")
    target = model_device(model) if device is None else torch.device(device)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with evaluation_mode(model), torch.no_grad(), capture_outputs(model, names) as captured:
        for batch in _batches(data, loader, batch_size, target):
            inputs = batch_inputs(batch).to(target)
            captured.clear()
            model(inputs)
            for name in names:
                if name not in captured:
                    raise ValueError(f"layers: module {name!r} was not called in the forward pass")
                chunks[name].append(pool_features(captured[name]).detach().cpu())
    if not chunks[names[0]]:
        raise ValueError("data must contain at least one sample; got an empty dataset")
    return {name: torch.cat(parts) for name, parts in chunks.items()}
