"""``SyntheticNodules``: a map-style dataset of synthetic CT lung-nodule patches or volumes.

The factor table and labels are computed per index when needed (construction is O(1) for
the default spec, so ``n`` may be ten million), and images are rendered on demand, one at a
time through ``ds[i]`` or vectorised through :meth:`SyntheticNodules.render`. A sample is a
pure function of ``(spec, n, seed, index)``.
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
from .render3d import render_volume_hu
from .sampling import (
    RuleTruth,
    derive_children,
    factor_rows,
    is_lazy,
    sample_factors,
    sample_labels,
)
from .spec import NoduleSpec

__all__ = ["CLASSES", "SyntheticNodules"]

#: Name of each label, indexed by the label: 0 benign, 1 malignant.
CLASSES: tuple[str, ...] = ("benign", "malignant")

_MAX_N = 2**31 - 1  # indices are hashed as 32-bit words

Override = float | int | str | torch.Tensor


def _category_code(info: Factor, value: str, argument: str) -> int:
    """The code of category ``value`` of ``info``; a named error for anything else."""
    if not info.is_categorical:
        raise ValueError(
            f"{argument} must be a number in [{info.low}, {info.high}] "
            f"{info.unit} for the continuous factor {info.name}; got {value!r}"
        )
    if value not in info.categories:
        raise ValueError(
            f"{argument} must be one of {info.categories}; got {value!r}"
            f"{did_you_mean(value, info.categories)}"
        )
    return info.categories.index(value)


def _target_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)  # torch raises AssertionError for CUDA without a GPU
    except (AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be a device available on this machine; got {device!r} ({err})"
        ) from None
    return dev


class SyntheticNodules(Dataset[Any]):
    """Synthetic CT lung-nodule patches (or volumes) whose every generative factor is known.

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
            (spec SHA-256, ``n``, ``seed``, ``image_size``, ``volume_size``, ``output``) must
            match.
        verify_cache: how a ``cache`` is checked on opening: ``"full"`` hashes every image
            against the digest in the manifest (reads the file once); ``"size"`` checks only
            the images' shape, dtype and file length (no image is read, so modified values
            go unnoticed). Labels and factors are compared in both.
        volume_size: when given (``16 .. 256``), samples are CT volumes ``(1, D, H, W)``
            with ``D = H = W = volume_size`` cubic voxels of the in-plane pixel size
            (:attr:`voxel_size_mm`), rendered from the same description: the central
            axial slice (index ``volume_size // 2``) of a sample's volume is its 2-D image
            at ``image_size = volume_size`` when ``slice_thickness_mm`` is under 0.78
            voxel (the profile's standard deviation under a third of a voxel), and the
            2-D image seen through that profile otherwise. ``image_size`` must then be
            left at 64 or equal ``volume_size``.

    Raises:
        ValueError: ``n <= 0``, ``image_size < 16``, a ``volume_size`` outside
            ``16 .. 256`` or disagreeing with ``image_size``, an unknown ``output`` or
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
        >>> volumes = SyntheticNodules(n=8, volume_size=32)
        >>> volumes[0][0].shape, volumes.voxel_size_mm.shape
        (torch.Size([1, 32, 32, 32]), torch.Size([8, 3]))
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
        volume_size: int | None = None,
    ) -> None:
        spec = NoduleSpec() if spec is None else spec
        if not isinstance(spec, NoduleSpec):
            raise TypeError(f"spec must be a NoduleSpec; got {type(spec).__name__}")
        self.spec = spec
        self.n = check_int("n", n, 1, _MAX_N)
        self.seed = check_int("seed", seed, 0, 2**64 - 1)
        self.image_size = check_int("image_size", image_size, 16, 1024)
        self.volume_size = (
            None if volume_size is None else check_int("volume_size", volume_size, 16, 256)
        )
        if self.volume_size is not None:
            if self.image_size not in (REFERENCE_PATCH_PIXELS, self.volume_size):
                raise ValueError(
                    "image_size must be left at 64 or equal volume_size (the "
                    f"slices' size); got image_size={self.image_size}, "
                    f"volume_size={self.volume_size}"
                )
            self.image_size = self.volume_size
        check_choice("output", output, ("window", "hu"))
        self.output = output
        check_choice("verify_cache", verify_cache, VERIFY_MODES)
        self.return_factors = bool(return_factors)
        self.transform = transform
        self.target_transform = target_transform
        # the whole table only on request; labels (and, for a spec that is not lazy, the
        # rule's labels that exact counts within classes need) in chunks, on first use
        self._full: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self._label_table: torch.Tensor | None = None
        self._rule_truth: RuleTruth | None = None
        self._cached: Any = None if cache is None else load_images(self, cache, verify_cache)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without derived tables (workers recompute rows per index)."""
        state = dict(self.__dict__)
        state["_full"] = state["_label_table"] = state["_rule_truth"] = None
        return state

    def _truth(self) -> RuleTruth | None:
        """The rule's labels of every sample when the spec is not lazy (built once)."""
        if self._rule_truth is None and not is_lazy(self.spec):
            self._rule_truth = RuleTruth(self.spec, self.n, self.seed)
        return self._rule_truth

    def _table(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._full is None:
            self._full = sample_factors(self.spec, self.n, self.seed)
        return self._full

    @property
    def _factors(self) -> dict[str, torch.Tensor]:
        return self._table()[0]

    @property
    def _labels(self) -> torch.Tensor:
        if self._full is not None:
            return self._full[1]
        if self._label_table is None:
            self._label_table = sample_labels(self.spec, self.n, self.seed, self._truth())
        return self._label_table

    def _rows(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Factors and labels of the (non-negative) indices ``idx``, without the full table."""
        if self._full is not None:
            factors, labels = self._full
            return {name: v[idx] for name, v in factors.items()}, labels[idx]
        return factor_rows(self.spec, self.n, self.seed, idx, self._truth())

    # ------------------------------------------------------------------ table
    @property
    def factors(self) -> dict[str, torch.Tensor]:
        """Factor name -> ``(n,)`` tensor (float32, or int64 category codes). No rendering.

        Built on first access (about 90 bytes per sample) and kept; rendering and ``ds[i]``
        never need it. A new dict each call; the tensors are the dataset's own: do not
        modify them in place.
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

    @property
    def voxel_size_mm(self) -> torch.Tensor:
        """``(n, 3)`` voxel spacing ``(z, y, x)`` in mm of a volume dataset (cubic voxels).

        Raises:
            ValueError: the dataset renders 2-D images (no ``volume_size``).
        """
        if self.volume_size is None:
            raise ValueError(
                "voxel_size_mm needs a volume dataset; got volume_size=None "
                "(use pixel_size_mm for images)"
            )
        return self.pixel_size_mm[:, None].expand(-1, 3).contiguous()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one rendered sample, ``(1, H, W)`` or ``(1, D, H, W)``."""
        s = self.image_size
        return (1, s, s) if self.volume_size is None else (1, s, s, s)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        size = (
            f"image_size={self.image_size}"
            if self.volume_size is None
            else f"volume_size={self.volume_size}"
        )
        return (
            f"SyntheticNodules(n={self.n}, seed={self.seed}, {size}, "
            f"output={self.output!r}, spec={self.spec.describe()!r})"
        )

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
        factors, labels = self._rows(torch.tensor([k]))
        return self._sample(0, self.render([k])[0], factors, labels)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Samples ``[ds[i] for i in indices]``, rendered as one batch.

        :class:`torch.utils.data.DataLoader` calls this with each batch of indices, so
        ``DataLoader(ds, batch_size=256)`` runs at the speed of :meth:`render`.
        """
        ks = [self._index(i) for i in indices]
        images = self.render(ks)
        factors, labels = self._rows(torch.tensor(ks, dtype=torch.int64))
        return [self._sample(j, images[j], factors, labels) for j in range(len(ks))]

    def _sample(
        self, j: int, image: torch.Tensor, factors: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> Any:
        """Sample ``j`` of a batch whose factor rows and labels are given."""
        label = labels[j]
        out: Any = image if self.transform is None else self.transform(image)
        target: Any = label if self.target_transform is None else self.target_transform(label)
        if self.return_factors:
            return out, target, {name: v[j] for name, v in factors.items()}
        return out, target

    def _indices(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(indices, torch.Tensor):
            if indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
                raise TypeError(
                    "indices must be a 1-D integer tensor; got "
                    f"{indices.dtype} of shape {tuple(indices.shape)}"
                )
            idx = indices.to("cpu", torch.int64)
        else:
            idx = torch.tensor([self._index(i) for i in indices], dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < -self.n or int(idx.max()) >= self.n):
            raise IndexError(
                f"indices must lie in [-{self.n}, {self.n}); got "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        return idx % self.n

    def _override_values(
        self, overrides: Mapping[str, Override], count: int
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, value in overrides.items():
            info = get_factor(name, argument="overrides")
            if isinstance(value, str):
                value = _category_code(info, value, f"overrides[{name!r}]")
            try:
                t = torch.as_tensor(value).flatten()
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"overrides[{name!r}] must be a number, a category name or a "
                    f"tensor; got {type(value).__name__}"
                ) from None
            if t.numel() == 1:
                t = t.expand(count)
            if t.shape != (count,):
                raise ValueError(
                    f"overrides[{name!r}] must be a number or a ({count},) "
                    f"tensor; got shape {tuple(t.shape)}"
                )
            if info.is_categorical:
                codes = t.to(torch.int64)
                if bool((codes.to(t.dtype) != t).any()) or bool(
                    ((codes < 0) | (codes >= len(info.categories))).any()
                ):
                    raise ValueError(
                        f"overrides[{name!r}] must be category codes in "
                        f"[0, {len(info.categories) - 1}] or names "
                        f"{info.categories}; got {t.tolist()[:4]}"
                    )
                out[name] = codes
            else:
                vals = t.to(torch.float32)
                bad = ~torch.isfinite(vals) | (vals < info.low) | (vals > info.high)
                if bool(bad.any()):
                    raise ValueError(
                        f"overrides[{name!r}] must lie in [{info.low}, "
                        f"{info.high}] {info.unit}; got "
                        f"{float(vals[bad][0])!r}"
                    )
                out[name] = vals
        return out

    def render(
        self,
        indices: Sequence[int] | torch.Tensor,
        device: torch.device | str | None = None,
        return_masks: bool = False,
        overrides: Mapping[str, Override] | None = None,
        return_factors: bool = False,
        *,
        rescan: int = 0,
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
            return_factors: also return the factor values actually rendered (after the
                overrides and what they re-derived), on CPU.
            rescan: which acquisition of each sample, ``>= 0``. ``0`` is the sample itself
                (what ``ds[i]`` returns); ``k >= 1`` scans the same object again: the same
                factors, anatomy, shape noise and masks, with acquisition noise drawn
                independently (from the counter-based RNG with ``k`` mixed into the key), so
                a rescan is a pure function of ``(spec, seed, index, rescan)``. The
                difference of two rescans has twice the noise variance. A cache holds
                rescan 0 only; other rescans are rendered.

        Returns:
            ``(N, 1, H, W)`` float32 images (``(N, 1, D, H, W)`` volumes with
            ``volume_size``; ``[0, 1]`` or HU, see ``output``); with ``return_masks`` also
            a dict of bool tensors shaped like the images, keyed by ``MASK_NAMES``:
            ``"vessels"``, ``"pleura"``, ``"body"``, ``"nodule"`` (body and spicules),
            ``"spicules"``, ``"calcification"``; with ``return_factors`` also the factor
            dict of ``(N,)`` tensors; in that order, as a tuple.
        """
        idx = self._indices(indices)
        rescan = check_int("rescan", rescan, 0, 2**31 - 1)
        dev = _target_device(device)
        batch, _ = self._rows(idx)
        if overrides:
            changed = self._override_values(overrides, idx.numel())
            batch.update(changed)
            derive_children(self.spec, self.seed, idx, batch, set(changed))
        if self._cached is not None and not overrides and not return_masks and rescan == 0:
            images = torch.from_numpy(self._cached[idx.numpy()]).to(dev)
            return (images, batch) if return_factors else images
        on_device = {name: v.to(dev) for name, v in batch.items()}
        renderer = render_hu if self.volume_size is None else render_volume_hu
        # A caller's autocast (a model read in bfloat16) must not change the samples' bytes.
        with torch.autocast(dev.type, enabled=False):
            images, masks = renderer(
                on_device,
                self.seed,
                idx,
                self.image_size,
                with_masks=return_masks,
                window_hu=LUNG_WINDOW_HU if self.output == "window" else None,
                rescan=rescan,
            )
        out: tuple[Any, ...] = (images,)
        if return_masks and masks is not None:
            out += ({k: masks[k] for k in MASK_NAMES},)
        if return_factors:
            out += (batch,)
        return out if len(out) > 1 else images

    def intervene(self, i: int, *, return_factors: bool = False, **changes: Override) -> Any:
        """Sample ``i`` re-rendered with only the named factors changed: ``(1, H, W)``.

        A volume dataset returns ``(1, D, H, W)``.

        With ``return_factors=True``, ``(image, factors)``: the factor values rendered, as
        0-d tensors, including those the change re-derived (``attenuation_hu`` follows
        ``texture``; ``kernel``, ``noise_hu`` and ``pixel_spacing_mm`` follow ``site``).

        Example:
            >>> ds = SyntheticNodules(n=4)
            >>> image, used = ds.intervene(0, texture="ground-glass", return_factors=True)
            >>> image.shape, -750 <= float(used["attenuation_hu"]) <= -450
            (torch.Size([1, 64, 64]), True)
        """
        images, factors = self.render([self._index(i)], overrides=changes, return_factors=True)
        if return_factors:
            return images[0], {name: v[0] for name, v in factors.items()}
        return images[0]

    def traverse(
        self, i: int, factor: str, values: Sequence[float] | Sequence[str] | torch.Tensor
    ) -> torch.Tensor:
        """Sample ``i`` rendered once per value of ``factor``: ``(len(values), 1, H, W)``.

        A volume dataset returns ``(len(values), 1, D, H, W)``.
        """
        info = get_factor(factor)
        vals: Any = values
        if isinstance(values, str):
            raise TypeError(f"values must be a sequence of values; got the string {values!r}")
        if not isinstance(values, torch.Tensor):
            codes = [
                _category_code(info, v, f"values[{j}] for {factor}") if isinstance(v, str) else v
                for j, v in enumerate(values)
            ]
            try:
                vals = torch.tensor(codes)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"values must hold numbers or category names; got {list(values)[:4]!r}"
                ) from None
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

    #: Names of the (label x shortcut side) groups of :meth:`group_ids`, by group id
    #: ``2 * label + conflicting``.
    group_names: tuple[str, ...] = (
        "benign-aligned",
        "benign-conflicting",
        "malignant-aligned",
        "malignant-conflicting",
    )

    def group_ids(self, factor: str | None = None) -> torch.Tensor:
        """``(n,)`` int64 group of each sample: its label and its side of a shortcut.

        The groups of Sagawa et al. (2020), which worst-group accuracy, GroupDRO and DFR
        read: group ``2 * label + conflicting``, named by :attr:`group_names`. A sample is
        *aligned* when it lies on the side of the shortcut's split that the training spec
        ties to its label (e.g. large and malignant for ``with_shortcut("diameter_mm")``),
        *conflicting* otherwise. The split is the spec's, so the test distributions derived
        from a training spec (decorrelated, reversed, ...) share its groups. No rendering.

        Args:
            factor: the shortcut factor whose side counts (default: the spec's first
                shortcut); one of ``spec.shortcut_factors``.

        Raises:
            ValueError: the spec has no shortcut, or ``factor`` is not one of its shortcuts.

        Example:
            >>> ds = SyntheticNodules(NoduleSpec().with_shortcut("diameter_mm", 0.8), n=100)
            >>> groups = ds.group_ids()
            >>> groups.bincount(minlength=4).tolist()
            [45, 5, 45, 5]
            >>> ds.group_names[int(groups[0])]
            'malignant-aligned'
        """
        splits = {shortcut.split.factor: shortcut.split for shortcut in self.spec.shortcuts}
        if not splits:
            raise ValueError(
                "group_ids needs a spec with a shortcut (groups are label x shortcut side); "
                f"got none ({self.spec.describe()})"
            )
        factor = next(iter(splits)) if factor is None else factor
        if factor not in splits:
            raise ValueError(
                f"factor must be one of the spec's shortcut factors {tuple(splits)}; got {factor!r}"
            )
        labels = self.labels
        malignant_looking = splits[factor].malignant_side(self.factors[factor])
        conflicting = malignant_looking != labels.bool()
        return 2 * labels + conflicting.long()
