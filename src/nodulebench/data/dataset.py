"""``SyntheticNodules``: a map-style dataset of synthetic CT lung-nodule patches.

The factor table and labels are drawn at construction (cheap: a few vectors); images are
rendered on demand, one at a time through ``ds[i]`` or vectorised through
:meth:`SyntheticNodules.render`. A sample is a pure function of ``(spec, n, seed, index)``.
"""

from __future__ import annotations

import operator
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from .._validation import check_choice, check_int, did_you_mean
from .cache import VERIFY_MODES, load_images, materialize
from .factors import FACTORS, LUNG_WINDOW_HU, REFERENCE_PATCH_PIXELS, Factor, get_factor
from .render import MASK_NAMES, render_hu
from .sampling import derive_children, sample_factors
from .spec import NoduleSpec

__all__ = ["CLASSES", "SyntheticNodules"]

#: Name of each label, indexed by the label: 0 benign, 1 malignant.
CLASSES: tuple[str, ...] = ("benign", "malignant")

_MAX_N = 2**31 - 1  # indices are hashed as 32-bit words

Override = float | int | str | torch.Tensor


def _category_code(info: Factor, value: str, argument: str) -> int:
    """The code of category ``value`` of ``info``; a named error for anything else."""
    if not info.is_categorical:
        raise ValueError(f"{argument} must be a number in [{info.low}, {info.high}] "
                         f"{info.unit} for the continuous factor {info.name}; got {value!r}")
    if value not in info.categories:
        raise ValueError(f"{argument} must be one of {info.categories}; got {value!r}"
                         f"{did_you_mean(value, info.categories)}")
    return info.categories.index(value)


def _target_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)  # torch raises AssertionError for CUDA without a GPU
    except (AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a device available on this machine; got "
                         f"{device!r} ({err})") from None
    return dev


class SyntheticNodules(Dataset[Any]):
    """Synthetic CT lung-nodule patches whose every generative factor is known.

    Args:
        spec: the distribution (default: ``NoduleSpec()``, malignant iff spiculation > 0.5,
            balanced classes, no shortcut).
        n: number of samples, ``>= 1``.
        seed: dataset seed; use different seeds for training and test sets.
        image_size: output height and width in pixels, ``>= 16``. The patch always spans
            64 acquisition pixels (``64 * pixel_spacing_mm`` millimetres), so a smaller
            ``image_size`` shows the same anatomy at a coarser pixel (see
            :attr:`pixel_size_mm`).
        return_factors: ``ds[i]`` also returns the factor dict.
        output: ``"window"`` (lung window ``[-1000, 400]`` HU mapped to ``[0, 1]``) or
            ``"hu"`` (raw Hounsfield units).
        transform: applied to each ``(1, H, W)`` image in ``ds[i]``.
        target_transform: applied to each label in ``ds[i]``.
        cache: a folder written by :meth:`materialize` for this very dataset; ``ds[i]`` and
            plain :meth:`render` calls then read images from its memory map. The manifest
            (spec SHA-256, ``n``, ``seed``, ``image_size``, ``output``) must match.
        verify_cache: how a ``cache`` is checked on opening: ``"full"`` hashes every image
            against the digest in the manifest (reads the file once); ``"size"`` checks only
            the images' shape, dtype and file length (no image is read, so modified values
            go unnoticed). Labels and factors are compared in both.

    Raises:
        ValueError: ``n <= 0``, ``image_size < 16``, an unknown ``output`` or
            ``verify_cache``.
        nodulebench.data.CacheError: a ``ValueError``: the cache was made from another
            dataset, or is damaged (a file missing, truncated, garbled or modified).
        FileNotFoundError: ``cache`` holds no complete cache.

    Example:
        >>> ds = SyntheticNodules(NoduleSpec().with_shortcut("diameter_mm", 0.8), n=8)
        >>> image, label = ds[0]
        >>> image.shape, image.dtype, label.dtype
        (torch.Size([1, 64, 64]), torch.float32, torch.int64)
        >>> ds.render([0, 1], return_masks=True)[1]["spicules"].shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        spec: NoduleSpec | None = None,
        n: int = 10_000,
        seed: int = 0,
        image_size: int = 64,
        *,
        return_factors: bool = False,
        output: Literal["window", "hu"] = "window",
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[torch.Tensor], Any] | None = None,
        cache: str | pathlib.Path | None = None,
        verify_cache: Literal["full", "size"] = "full",
    ) -> None:
        spec = NoduleSpec() if spec is None else spec
        if not isinstance(spec, NoduleSpec):
            raise TypeError(f"spec must be a NoduleSpec; got {type(spec).__name__}")
        self.spec = spec
        self.n = check_int("n", n, 1, _MAX_N)
        self.seed = check_int("seed", seed, 0, 2**64 - 1)
        self.image_size = check_int("image_size", image_size, 16, 1024)
        check_choice("output", output, ("window", "hu"))
        self.output = output
        check_choice("verify_cache", verify_cache, VERIFY_MODES)
        self.return_factors = bool(return_factors)
        self.transform = transform
        self.target_transform = target_transform
        self._factors, self._labels = sample_factors(spec, self.n, self.seed)
        self._cached: Any = None if cache is None else load_images(self, cache, verify_cache)

    # ------------------------------------------------------------------ table
    @property
    def factors(self) -> dict[str, torch.Tensor]:
        """Factor name -> ``(n,)`` tensor (float32, or int64 category codes). No rendering.

        A new dict each call; the tensors are the dataset's own: do not modify them in place.
        """
        return dict(self._factors)

    @property
    def labels(self) -> torch.Tensor:
        """``(n,)`` int64 labels, 0 benign and 1 malignant. No rendering."""
        return self._labels

    @property
    def targets(self) -> torch.Tensor:
        """The labels under torchvision's name (the same ``(n,)`` int64 tensor as :attr:`labels`).

        ``target_transform`` is not applied (as in torchvision). No rendering.

        Example:
            >>> ds = SyntheticNodules(n=6)
            >>> int(ds.targets.sum()), ds.classes[1]
            (3, 'malignant')
        """
        return self._labels

    @property
    def classes(self) -> list[str]:
        """Name of each label, ``["benign", "malignant"]``; ``classes[label]`` as in torchvision."""
        return list(CLASSES)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Label of each class name, ``{"benign": 0, "malignant": 1}`` (torchvision's name)."""
        return {name: label for label, name in enumerate(CLASSES)}

    @property
    def pixel_size_mm(self) -> torch.Tensor:
        """``(n,)`` output pixel size in mm: ``pixel_spacing_mm * 64 / image_size``."""
        return self._factors["pixel_spacing_mm"] * (REFERENCE_PATCH_PIXELS / self.image_size)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"SyntheticNodules(n={self.n}, seed={self.seed}, image_size={self.image_size}, "
                f"output={self.output!r}, spec={self.spec.describe()!r})")

    # ------------------------------------------------------------------ access
    def _index(self, i: Any) -> int:
        try:
            k = operator.index(i)
        except TypeError:
            raise TypeError(f"index must be an int; got {type(i).__name__}") from None
        if not -self.n <= k < self.n:
            raise IndexError(f"index must lie in [-{self.n}, {self.n}); got {k}")
        return k % self.n

    def __getitem__(self, i: int) -> Any:
        k = self._index(i)
        return self._sample(k, self.render([k])[0])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Samples ``[ds[i] for i in indices]``, rendered as one batch.

        :class:`torch.utils.data.DataLoader` calls this with each batch of indices, so
        ``DataLoader(ds, batch_size=256)`` runs at the speed of :meth:`render`.
        """
        ks = [self._index(i) for i in indices]
        images = self.render(ks)
        return [self._sample(k, images[j]) for j, k in enumerate(ks)]

    def _sample(self, k: int, image: torch.Tensor) -> Any:
        label = self._labels[k]
        out: Any = image if self.transform is None else self.transform(image)
        target: Any = label if self.target_transform is None else self.target_transform(label)
        if self.return_factors:
            return out, target, {name: v[k] for name, v in self._factors.items()}
        return out, target

    def _indices(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(indices, torch.Tensor):
            if indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
                raise TypeError("indices must be a 1-D integer tensor; got "
                                f"{indices.dtype} of shape {tuple(indices.shape)}")
            idx = indices.to("cpu", torch.int64)
        else:
            idx = torch.tensor([self._index(i) for i in indices], dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < -self.n or int(idx.max()) >= self.n):
            raise IndexError(f"indices must lie in [-{self.n}, {self.n}); got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return idx % self.n

    def _override_values(self, overrides: Mapping[str, Override], count: int
                         ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, value in overrides.items():
            info = get_factor(name, argument="overrides")
            if isinstance(value, str):
                value = _category_code(info, value, f"overrides[{name!r}]")
            try:
                t = torch.as_tensor(value).flatten()
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"overrides[{name!r}] must be a number, a category name or a "
                                f"tensor; got {type(value).__name__}") from None
            if t.numel() == 1:
                t = t.expand(count)
            if t.shape != (count,):
                raise ValueError(f"overrides[{name!r}] must be a number or a ({count},) "
                                 f"tensor; got shape {tuple(t.shape)}")
            if info.is_categorical:
                codes = t.to(torch.int64)
                if bool((codes.to(t.dtype) != t).any()) or bool(
                    ((codes < 0) | (codes >= len(info.categories))).any()
                ):
                    raise ValueError(f"overrides[{name!r}] must be category codes in "
                                     f"[0, {len(info.categories) - 1}] or names "
                                     f"{info.categories}; got {t.tolist()[:4]}")
                out[name] = codes
            else:
                vals = t.to(torch.float32)
                bad = ~torch.isfinite(vals) | (vals < info.low) | (vals > info.high)
                if bool(bad.any()):
                    raise ValueError(f"overrides[{name!r}] must lie in [{info.low}, "
                                     f"{info.high}] {info.unit}; got "
                                     f"{float(vals[bad][0])!r}")
                out[name] = vals
        return out

    def render(
        self,
        indices: Sequence[int] | torch.Tensor,
        device: torch.device | str | None = None,
        return_masks: bool = False,
        overrides: Mapping[str, Override] | None = None,
    ) -> Any:
        """Render a batch of samples at once (the fast path).

        Args:
            indices: ``(N,)`` sample indices (a sequence of ints or an integer tensor).
            device: where to render (default CPU); CPU and CUDA agree within ``1e-3``.
            return_masks: also return the ground-truth masks.
            overrides: factor name -> a value or an ``(N,)`` tensor replacing that factor
                for this render only (categories by name or code). The exogenous noise is
                unchanged, so this is an intervention; factors whose marginal depends on an
                overridden one (``attenuation_hu`` on ``texture``) are re-derived from their
                own exogenous noise. Labels are not re-derived: use
                ``ds.spec.rule_labels(factors)`` for counterfactual labels.

        Returns:
            ``(N, 1, H, W)`` float32 images (``[0, 1]`` or HU, see ``output``), or
            ``(images, masks)`` with ``masks`` a dict with keys ``"nodule"``,
            ``"spicules"``, ``"calcification"`` of ``(N, 1, H, W)`` bool tensors.
        """
        idx = self._indices(indices)
        dev = _target_device(device)
        if self._cached is not None and not overrides and not return_masks:
            return torch.from_numpy(self._cached[idx.numpy()]).to(dev)
        batch = {name: v[idx] for name, v in self._factors.items()}
        if overrides:
            changed = self._override_values(overrides, idx.numel())
            batch.update(changed)
            derive_children(self.spec, self.seed, idx, batch, set(changed))
        batch = {name: v.to(dev) for name, v in batch.items()}
        images, masks = render_hu(batch, self.seed, idx, self.image_size,
                                  with_masks=return_masks,
                                  window_hu=LUNG_WINDOW_HU if self.output == "window" else None)
        if return_masks:
            assert masks is not None  # with_masks=True always returns them
            return images, {k: masks[k] for k in MASK_NAMES}
        return images

    def intervene(self, i: int, **changes: Override) -> torch.Tensor:
        """Sample ``i`` re-rendered with only the named factors changed: ``(1, H, W)``.

        Example:
            >>> ds = SyntheticNodules(n=4)
            >>> ds.intervene(0, spiculation=1.0, calcification="central").shape
            torch.Size([1, 64, 64])
        """
        return self.render([self._index(i)], overrides=changes)[0]  # type: ignore[no-any-return]

    def traverse(self, i: int, factor: str,
                 values: Sequence[float] | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Sample ``i`` rendered once per value of ``factor``: ``(len(values), 1, H, W)``."""
        info = get_factor(factor)
        vals: Any = values
        if isinstance(values, str):
            raise TypeError(f"values must be a sequence of values; got the string {values!r}")
        if not isinstance(values, torch.Tensor):
            codes = [_category_code(info, v, f"values[{j}] for {factor}")
                     if isinstance(v, str) else v for j, v in enumerate(values)]
            try:
                vals = torch.tensor(codes)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError("values must hold numbers or category names; got "
                                f"{list(values)[:4]!r}") from None
        if isinstance(vals, torch.Tensor) and vals.ndim != 1:
            raise ValueError(f"values must be one-dimensional; got shape {tuple(vals.shape)}")
        k = self._index(i)
        return self.render([k] * len(vals), overrides={factor: vals})  # type: ignore[no-any-return]

    def materialize(self, path: str | pathlib.Path, batch_size: int = 1024) -> pathlib.Path:
        """Render every image once into ``path`` (``.npy`` memory maps + JSON manifest).

        Reuse it with ``SyntheticNodules(..., cache=path)`` and the same arguments. The
        files are written into a hidden folder beside ``path`` and renamed into place when
        complete, so an interrupted run leaves the previous cache (or none), never a mix.

        Args:
            path: the cache folder: new, empty, or a cache to replace.
            batch_size: images rendered per step, ``>= 1``.

        Raises:
            ValueError: ``batch_size`` is not an int ``>= 1``.
            FileExistsError: ``path`` is a file, or a folder holding other files.
        """
        return materialize(self, path, batch_size)

    def factor_names(self) -> tuple[str, ...]:
        """Names of the factors, in table order."""
        return tuple(FACTORS)
