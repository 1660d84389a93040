"""Principal-component projection of embeddings, for plotting."""

from __future__ import annotations

import dataclasses

import torch

from nodulebench._validation import check_floating, check_int, check_ndim

__all__ = ["EmbeddingProjection", "project_embeddings"]


@dataclasses.dataclass(frozen=True)
class EmbeddingProjection:
    """The result of :func:`project_embeddings`.

    Attributes:
        coordinates: ``(N, dim)`` projected samples (float64).
        components: ``(dim, D)`` orthonormal principal directions, largest variance first.
        mean: ``(D,)`` mean that was subtracted before projecting.
        explained_variance_ratio: ``(dim,)`` share of the total variance per component.
    """

    coordinates: torch.Tensor
    components: torch.Tensor
    mean: torch.Tensor
    explained_variance_ratio: torch.Tensor

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Project new ``(M, D)`` features onto the same components: ``(M, dim)``."""
        check_ndim("features", features, (2,), "(M, D)")
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features must have {self.mean.shape[0]} columns; got {features.shape[1]}"
            )
        return (features.detach().to(torch.float64).cpu() - self.mean) @ self.components.T


def project_embeddings(features: torch.Tensor, dim: int = 2) -> EmbeddingProjection:
    r"""Principal component analysis of ``features`` by an SVD in float64.

    With centered :math:`X = U S V^\top`, the coordinates are :math:`U_{:, :d} S_{:d}`
    and the components :math:`V_{:, :d}^\top`. Each component's sign is fixed so that its
    largest-magnitude loading is positive, which makes the result deterministic.

    Args:
        features: ``(N, D)`` embeddings (any floating dtype and device).
        dim: Number of components, ``1 <= dim <= min(N, D)``.

    Returns:
        An :class:`EmbeddingProjection` on the CPU.

    Raises:
        ValueError: If ``dim`` is out of range, the features are not finite, or they have
            zero variance.
        TypeError: If ``features`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from nodulebench.probing import project_embeddings
        >>> x = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
        >>> p = project_embeddings(x, dim=2)
        >>> p.coordinates.shape, bool(p.explained_variance_ratio.sum() <= 1)
        (torch.Size([100, 2]), True)
    """
    check_ndim("features", features, (2,), "(N, D)")
    check_floating("features", features)
    check_int("dim", dim, 1)
    n, d = features.shape
    if dim > min(n, d):
        raise ValueError(f"dim must be <= min(N, D) = {min(n, d)}; got {dim}")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features must be finite; got NaN or inf values")
    mean = x.mean(dim=0)
    centered = x - mean
    u, s, vh = torch.linalg.svd(centered, full_matrices=False)
    total = float((s**2).sum())
    if total <= 1e-24 * max(float((x**2).sum()), 1e-300):
        raise ValueError("features have zero variance (every row is the same); nothing to project")
    components = vh[:dim]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    coordinates = u[:, :dim] * s[:dim] * signs.T
    return EmbeddingProjection(
        coordinates=coordinates,
        components=components,
        mean=mean,
        explained_variance_ratio=s[:dim] ** 2 / total,
    )
