"""``NoduleSpec``: the distribution a dataset is drawn from.

A spec holds one marginal per factor, the label rule, the shortcuts (factors correlated
with the label on purpose, with an exact strength) and the class balance. It is immutable
and validates itself on construction; every ``with_*`` method returns a new spec, and
:meth:`NoduleSpec.test_distributions` derives the shifted test distributions of a training
spec in one call.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .._validation import check_in_range
from .distributions import (
    ByCategory,
    Categorical,
    Distribution,
    Fixed,
    LogUniform,
    Split,
    Uniform,
)
from .factors import FACTORS, SITES, get_factor
from .labels import (
    AnyLabelRule,
    LabelFunction,
    LabelRule,
    LinearLabelRule,
    LogisticLabelRule,
    callable_digest,
    rule_inputs,
)

__all__ = [
    "COVARIATE_CNR_FRACTION",
    "COVARIATE_SHIFT",
    "DEGRADED_CNR_FRACTION",
    "DEGRADED_SHIFT",
    "DEFAULT_MARGINALS",
    "TEST_DISTRIBUTIONS",
    "LabelFunction",
    "LabelRule",
    "LinearLabelRule",
    "LogisticLabelRule",
    "NoduleSpec",
    "Shortcut",
]

#: Default marginal of every factor (the training distribution of the study).
DEFAULT_MARGINALS: Mapping[str, Distribution] = MappingProxyType(
    {
        "diameter_mm": Uniform(5.0, 20.0),
        "sphericity": Uniform(0.6, 1.0),
        "orientation_deg": Uniform(0.0, 180.0),
        "lobulation": Uniform(0.0, 0.6),
        "spiculation": Uniform(0.0, 1.0, exclude=(0.35, 0.65)),
        "margin_sharpness": Uniform(0.5, 1.0),
        "texture": Categorical({"solid": 0.6, "part-solid": 0.2, "ground-glass": 0.2}),
        "attenuation_hu": ByCategory(
            "texture",
            {
                "solid": Uniform(0.0, 80.0),
                "part-solid": Uniform(-650.0, -400.0),
                "ground-glass": Uniform(-750.0, -450.0),
            },
        ),
        "calcification": Categorical(
            {
                "absent": 0.76,
                "central": 0.04,
                "laminated": 0.04,
                "popcorn": 0.04,
                "diffuse": 0.04,
                "eccentric": 0.04,
                "stippled": 0.04,
            }
        ),
        "calcification_hu": Uniform(200.0, 900.0),
        "offset_x_mm": Uniform(-3.0, 3.0),
        "offset_y_mm": Uniform(-3.0, 3.0),
        "background_hu": Uniform(-890.0, -840.0),
        "background_texture_hu": Uniform(10.0, 40.0),
        "vessels": Categorical({"none": 0.3, "few": 0.4, "many": 0.3}),
        "location": Categorical({"isolated": 0.6, "juxta-vascular": 0.2, "juxta-pleural": 0.2}),
        "fissure": Categorical({"absent": 0.85, "present": 0.15}),
        # the scanner bundles kernel, dose (noise) and spacing: a shortcut on "site" moves all
        "site": Categorical({name: 1.0 for name in SITES}),
        "kernel": ByCategory("site", {name: Fixed(s.kernel) for name, s in SITES.items()}),
        "noise_hu": ByCategory("site", {name: Uniform(*s.noise_hu) for name, s in SITES.items()}),
        "blur_mm": Uniform(0.2, 0.5),
        "pixel_spacing_mm": ByCategory(
            "site", {name: Uniform(*s.pixel_spacing_mm) for name, s in SITES.items()}
        ),
        "slice_thickness_mm": Uniform(0.6, 3.0),
        "hu_offset": ByCategory("site", {name: Uniform(*s.hu_offset) for name, s in SITES.items()}),
    }
)

#: Acquisition marginals of the default covariate shift: each site's noise 15 % higher,
#: blur 0.6 - 0.9 mm, coarser spacing. It keeps the cause visible: the spicules'
#: contrast-to-noise stays at :data:`COVARIATE_CNR_FRACTION` of the default acquisition's.
COVARIATE_SHIFT: Mapping[str, Distribution] = MappingProxyType(
    {
        "noise_hu": ByCategory(
            "site",
            {
                name: Uniform(1.15 * s.noise_hu[0], min(150.0, 1.15 * s.noise_hu[1]))
                for name, s in SITES.items()
            },
        ),
        "blur_mm": Uniform(0.6, 0.9),
        "pixel_spacing_mm": Uniform(0.8, 0.92),
    }
)

#: Acquisition marginals of :meth:`NoduleSpec.degraded`, the strong shift that was the
#: default covariate shift: noise 40 - 60 HU, blur 0.8 - 1.2 mm, spacing 0.85 - 0.98 mm.
#: It erases much of the cause (see :data:`DEGRADED_CNR_FRACTION`): a drop there measures
#: lost information as much as robustness.
DEGRADED_SHIFT: Mapping[str, Distribution] = MappingProxyType(
    {
        "noise_hu": Uniform(40.0, 60.0),
        "blur_mm": Uniform(0.8, 1.2),
        "pixel_spacing_mm": Uniform(0.85, 0.98),
    }
)

#: Spicule contrast-to-noise under :data:`COVARIATE_SHIFT` as a fraction of the default
#: acquisition's, measured by :func:`nodulebench.data.spicule_cnr` at 32 px (the tests
#: re-measure it).
COVARIATE_CNR_FRACTION: float = 0.69
#: The same fraction under :data:`DEGRADED_SHIFT`.
DEGRADED_CNR_FRACTION: float = 0.45

#: Names of the test distributions :meth:`NoduleSpec.test_distributions` returns.
TEST_DISTRIBUTIONS: tuple[str, ...] = ("iid", "decorrelated", "reversed", "heldout", "covariate")


@dataclass(frozen=True)
class Shortcut:
    """A nuisance factor correlated with the label.

    Within each class exactly ``round(n_c * (1 + strength) / 2)`` samples lie on the side of
    ``split`` that agrees with their label (malignant-looking for malignant samples).

    Attributes:
        split: the factor and its malignant / benign-looking sides.
        strength: in ``[-1, 1]``; ``0`` is independent, ``1`` perfectly aligned, ``-1``
            perfectly reversed.
    """

    split: Split
    strength: float


def _median_threshold(dist: Distribution, factor_name: str) -> float:
    """Point that splits a Uniform (or LogUniform) marginal's mass in half."""
    if isinstance(dist, LogUniform):
        return float((dist.low * dist.high) ** 0.5)
    if not isinstance(dist, Uniform):
        raise ValueError(
            f"a shortcut on {factor_name} needs a Uniform marginal or an explicit "
            f"threshold; got {dist!r}"
        )
    parts = dist.intervals()
    half = sum(hi - lo for lo, hi in parts) / 2
    for lo, hi in parts:
        if hi - lo >= half:
            return lo + half
        half -= hi - lo
    return parts[-1][1]  # pragma: no cover - unreachable for positive mass


@dataclass(frozen=True)
class NoduleSpec:
    """The distribution a ``SyntheticNodules`` dataset is drawn from.

    Args:
        marginals: factor name -> distribution; factors not named keep
            :data:`~nodulebench.data.DEFAULT_MARGINALS`.
        label_rule: a :class:`~nodulebench.data.Split` (default:
            malignant iff ``spiculation > 0.5``), a :class:`~nodulebench.data.LinearLabelRule`
            or a :class:`~nodulebench.data.LabelFunction`.
        shortcuts: factors correlated with the label (see :meth:`with_shortcut`).
        malignant_fraction: exact fraction of malignant samples (the label factor is drawn
            from its marginal restricted to the label's side), or ``None`` to let the rule
            decide on freely drawn factors (required for non-``Split`` rules).
        label_noise: exact fraction of labels flipped after the rule, in ``[0, 0.5]``.
        name: a display name (``"train"``, ``"reversed"`` ...); it does not change samples.

    Raises:
        ValueError: unknown factors, values outside physical ranges, strengths outside
            ``[-1, 1]``, shortcuts on label inputs, empty conditional sides.

    Example:
        >>> spec = NoduleSpec().with_shortcut("diameter_mm", 0.9)
        >>> sorted(spec.test_distributions())
        ['covariate', 'decorrelated', 'heldout', 'iid', 'reversed']
    """

    marginals: Mapping[str, Distribution] = field(default_factory=dict)
    label_rule: AnyLabelRule = field(default_factory=lambda: Split("spiculation", 0.5))
    shortcuts: tuple[Shortcut, ...] = ()
    malignant_fraction: float | None = 0.5
    label_noise: float = 0.0
    name: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.marginals, Mapping):
            raise TypeError(f"marginals must be a mapping; got {type(self.marginals).__name__}")
        for key in self.marginals:
            get_factor(key, argument="marginals")
        full = {name: self.marginals.get(name, DEFAULT_MARGINALS[name]) for name in FACTORS}
        for name, dist in full.items():
            if not isinstance(dist, (Uniform, LogUniform, Categorical, Fixed, ByCategory)):
                raise TypeError(
                    f"marginals[{name!r}] must be Uniform, LogUniform, Categorical, "
                    f"Fixed or ByCategory; got {type(dist).__name__}"
                )
            dist.validate(FACTORS[name], f"marginals[{name!r}]")
            if isinstance(dist, ByCategory) and list(FACTORS).index(dist.parent) > list(
                FACTORS
            ).index(name):
                raise ValueError(
                    f"marginals[{name!r}].parent must come before {name} in "
                    f"FACTORS; got {dist.parent!r}"
                )
        object.__setattr__(self, "marginals", MappingProxyType(full))
        object.__setattr__(self, "shortcuts", tuple(self.shortcuts))
        self._validate_label()
        self._validate_shortcuts()

    def _validate_label(self) -> None:
        rule = self.label_rule
        if not isinstance(rule, (Split, LinearLabelRule, LogisticLabelRule, LabelFunction)):
            raise TypeError(
                f"label_rule must be a Split, LinearLabelRule, LogisticLabelRule "
                f"or LabelFunction; got {type(rule).__name__}"
            )
        rule.validate("label_rule")
        check_in_range("label_noise", self.label_noise, 0.0, 0.5)
        if self.malignant_fraction is not None:
            check_in_range("malignant_fraction", self.malignant_fraction, 0.0, 1.0)
            if not isinstance(rule, Split):
                raise ValueError(
                    "malignant_fraction must be None when label_rule is not a "
                    f"Split (exact class counts need one causal factor); got "
                    f"{self.malignant_fraction!r}"
                )
            dist = self.marginals[rule.factor]
            if isinstance(dist, ByCategory):
                raise ValueError(
                    f"marginals[{rule.factor!r}] of the label factor must be "
                    f"Uniform, Categorical or Fixed; got {dist!r}"
                )
            sides = [
                side
                for side, needed in (
                    (True, self.malignant_fraction > 0),
                    (False, self.malignant_fraction < 1),
                )
                if needed
            ]
            for side in sides:
                try:
                    dist.restrict(rule, side)
                except ValueError as err:
                    raise ValueError(
                        f"marginals[{rule.factor!r}] must give both classes of "
                        f"malignant_fraction={self.malignant_fraction}: {err}"
                    ) from None

    def _validate_shortcuts(self) -> None:
        seen: set[str] = set()
        inputs = set(rule_inputs(self.label_rule))
        for i, sc in enumerate(self.shortcuts):
            arg = f"shortcuts[{i}]"
            if not isinstance(sc, Shortcut):
                raise TypeError(f"{arg} must be a Shortcut; got {type(sc).__name__}")
            sc.split.validate(f"{arg}.split")
            check_in_range(f"{arg}.strength", sc.strength, -1.0, 1.0)
            f = sc.split.factor
            if f in seen:
                raise ValueError(
                    f"{arg}.split.factor must be distinct per shortcut; got {f!r} twice"
                )
            seen.add(f)
            if f in inputs or any(
                isinstance(self.marginals[g], ByCategory) and self.marginals[g].parent == f  # type: ignore[union-attr]
                for g in inputs
            ):
                raise ValueError(
                    f"{arg}.split.factor must not feed the label rule "
                    f"({self.label_rule.describe()}); got {f!r}"
                )
            dist = self.marginals[f]
            if isinstance(dist, ByCategory):
                raise ValueError(
                    f"marginals[{f!r}] of a shortcut factor must be Uniform, "
                    f"Categorical or Fixed; got {dist!r}"
                )
            for side in self._sides_needed(sc.strength):
                try:
                    dist.restrict(sc.split, side)
                except ValueError as err:
                    raise ValueError(f"{arg}: {err}") from None

    def _sides_needed(self, strength: float) -> set[bool]:
        """Sides of a shortcut split that some class must be able to draw from."""
        frac = self.malignant_fraction
        classes = [c for c in (0, 1) if frac is None or (frac < 1 if c == 0 else frac > 0)]
        sides: set[bool] = set()
        for c in classes:
            agree = c == 1  # the malignant-looking side agrees with the malignant class
            if strength < 1:
                sides.add(not agree)
            if strength > -1:
                sides.add(agree)
        return sides

    # ------------------------------------------------------------------ derived views
    @property
    def causal_factors(self) -> tuple[str, ...]:
        """Factors the label rule reads, ``("spiculation",)`` by default."""
        return rule_inputs(self.label_rule)

    @property
    def shortcut_factors(self) -> tuple[str, ...]:
        """Factors correlated with the label on purpose."""
        return tuple(sc.split.factor for sc in self.shortcuts)

    def rule_labels(
        self, factors: Mapping[str, torch.Tensor], coin: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Labels the rule gives to ``factors`` (no label noise): ``(N,)`` int64.

        Use it for counterfactual labels after an intervention, e.g. on ``spiculation``.
        A :class:`~nodulebench.data.LogisticLabelRule` also needs the samples' label coins,
        ``nodulebench.data.sampling.label_coins(seed, indices)`` (the same coins as at
        sampling: a counterfactual keeps the exogenous noise).
        """
        rule = self.label_rule
        if isinstance(rule, Split):
            return rule.malignant_side(factors[rule.factor]).long()
        if isinstance(rule, LogisticLabelRule):
            return rule(factors, coin)
        return rule(factors)

    def describe(self) -> str:
        """One line: label rule, class balance, shortcuts, non-default marginals."""
        parts = [f"label: malignant iff {self.label_rule.describe()}"]
        if self.malignant_fraction is not None:
            parts.append(f"malignant fraction {self.malignant_fraction:g}")
        if self.label_noise:
            parts.append(f"label noise {self.label_noise:g}")
        parts += [
            f"shortcut {sc.split.describe()} strength {sc.strength:+g}" for sc in self.shortcuts
        ]
        changed = [name for name, dist in self.marginals.items() if dist != DEFAULT_MARGINALS[name]]
        if changed:
            parts.append(f"non-default marginals: {', '.join(changed)}")
        for preset, fraction, label in (
            (COVARIATE_SHIFT, COVARIATE_CNR_FRACTION, "covariate shift"),
            (DEGRADED_SHIFT, DEGRADED_CNR_FRACTION, "degraded acquisition"),
        ):
            if all(self.marginals[k] == v for k, v in preset.items()):
                parts.append(
                    f"{label}: spicule contrast-to-noise about {fraction:.2f} of the default "
                    "acquisition (32 px)"
                )
        return f"{self.name}: " + "; ".join(parts)

    def fingerprint(self) -> str:
        """SHA-256 of everything that decides the samples (not the display ``name``)."""
        rule = self.label_rule
        rule_text = (
            f"LabelFunction({rule.name}, {rule.inputs}, {callable_digest(rule.fn)})"
            if isinstance(rule, LabelFunction)
            else repr(rule)
        )
        text = repr(
            (
                tuple(self.marginals.items()),
                rule_text,
                self.shortcuts,
                self.malignant_fraction,
                self.label_noise,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __reduce__(self) -> tuple[type[NoduleSpec], tuple[object, ...]]:
        # The read-only marginals view cannot be pickled; rebuild from a plain dict, so a
        # spec (and a dataset holding one) crosses spawn / forkserver DataLoader workers.
        return (
            NoduleSpec,
            (
                dict(self.marginals),
                self.label_rule,
                self.shortcuts,
                self.malignant_fraction,
                self.label_noise,
                self.name,
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoduleSpec):
            return NotImplemented
        return self.fingerprint() == other.fingerprint() and self.name == other.name

    # ------------------------------------------------------------------ presets
    @classmethod
    def screening(cls) -> NoduleSpec:
        """A screening-like spec: small nodules common, size and shape going with malignancy.

        Differences from the default (independent) spec, with their basis:

        - ``diameter_mm`` log-uniform on 4 - 30 mm (LIDC outlines 3 - 30 mm; that small
          nodules dominate screening is the premise of the Fleischner size bands < 6, 6 - 8,
          > 8 mm; the exact shape is an assumption); with the size correlation below, about
          30 % of nodules are under 6 mm and half under 8 mm;
        - size and lobulation go with malignancy (larger diameter and lobulated margins are
          malignancy cues): malignant nodules lie above 8 mm (the Fleischner band) and above
          the median lobulation with strength 0.5 and 0.4, so both correlate with
          ``spiculation`` through the label (the strengths are assumptions);
        - textures solid / part-solid / ground glass 0.75 / 0.1 / 0.15, calcified 15 %
          (assumptions).

        The label rule and class balance are the default's. Its "shortcuts" are the
        cohort's real correlations: ``decorrelated()`` removes them.

        Example:
            >>> spec = NoduleSpec.screening()
            >>> spec.name, spec.shortcut_factors
            ('screening', ('diameter_mm', 'lobulation'))
        """
        spec = cls(
            marginals={
                "diameter_mm": LogUniform(4.0, 30.0),
                "lobulation": Uniform(0.0, 0.8),
                "texture": Categorical({"solid": 0.75, "part-solid": 0.1, "ground-glass": 0.15}),
                "calcification": Categorical(
                    {
                        "absent": 0.85,
                        "central": 0.03,
                        "laminated": 0.03,
                        "popcorn": 0.03,
                        "diffuse": 0.03,
                        "eccentric": 0.015,
                        "stippled": 0.015,
                    }
                ),
            },
            name="screening",
        )
        return spec.with_shortcut("diameter_mm", 0.5, threshold=8.0).with_shortcut(
            "lobulation", 0.4
        )

    # ------------------------------------------------------------------ builders
    def replace(self, **changes: object) -> NoduleSpec:
        """A copy with the given fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_marginals(self, **marginals: Distribution) -> NoduleSpec:
        """A copy with some factor marginals replaced, e.g. ``diameter_mm=Uniform(8, 12)``."""
        merged = dict(self.marginals)
        for key, dist in marginals.items():
            get_factor(key, argument="marginals")
            merged[key] = dist
        return self.replace(marginals=merged)

    def with_label_rule(
        self, rule: AnyLabelRule, *, malignant_fraction: float | None = None
    ) -> NoduleSpec:
        """A copy with another label rule (exact class balance only for a Split rule)."""
        return self.replace(label_rule=rule, malignant_fraction=malignant_fraction)

    def with_shortcut(
        self,
        factor: str,
        strength: float,
        *,
        threshold: float | None = None,
        malignant_above: bool | None = None,
        malignant_categories: tuple[str, ...] | None = None,
    ) -> NoduleSpec:
        """A copy where ``factor`` is correlated with the label with ``strength``.

        The factor's values are split into a malignant-looking and a benign-looking side:
        continuous factors at ``threshold`` (default: the median of the marginal) with the
        direction ``malignant_above`` (default from the factor table, e.g. larger diameters
        look malignant); categorical factors into ``malignant_categories`` (default from the
        factor table, e.g. ``("absent",)`` for calcification) and the rest. In each class,
        exactly ``round(n_c * (1 + strength) / 2)`` samples lie on the side that agrees with
        their label. A shortcut already on ``factor`` is replaced.

        Args:
            factor: a factor name that the label rule does not read.
            strength: in ``[-1, 1]``.
            threshold: split point of a continuous factor.
            malignant_above: whether larger values look malignant.
            malignant_categories: malignant-looking categories of a categorical factor.

        Returns:
            The new spec.
        """
        info = get_factor(factor)
        check_in_range("strength", strength, -1.0, 1.0)
        if info.is_categorical:
            split = Split(
                factor,
                None,
                True,
                tuple(malignant_categories)
                if malignant_categories is not None
                else info.malignant_categories,
            )
        else:
            t = (
                threshold
                if threshold is not None
                else _median_threshold(self.marginals[factor], factor)
            )
            above = info.malignant_above if malignant_above is None else malignant_above
            split = Split(factor, t, above)
        kept = tuple(sc for sc in self.shortcuts if sc.split.factor != factor)
        return self.replace(shortcuts=(*kept, Shortcut(split, float(strength))))

    # ------------------------------------------------------------------ test distributions
    def iid(self) -> NoduleSpec:
        """The same distribution (draw it with another seed for a test set)."""
        return self.replace(name="iid")

    def decorrelated(self) -> NoduleSpec:
        """Every shortcut at strength 0: nuisance factors independent of the label."""
        return self.replace(
            name="decorrelated", shortcuts=tuple(Shortcut(sc.split, 0.0) for sc in self.shortcuts)
        )

    def reversed(self) -> NoduleSpec:
        """Every shortcut strength negated: the shortcut now points the wrong way."""
        return self.replace(
            name="reversed",
            shortcuts=tuple(Shortcut(sc.split, -sc.strength) for sc in self.shortcuts),
        )

    def heldout(self, factor: str | None = None, label: int = 1) -> NoduleSpec:
        """Only the (label, shortcut side) group that training makes rarest.

        The group is ``label`` with the side of ``factor``'s split that *disagrees* with it
        under a positive strength (the side that agrees under a negative one): absent from
        training when ``|strength| = 1``, the only group at test. A rule that cannot fix the
        label (anything but a :class:`~nodulebench.data.Split`) keeps both classes, each
        entirely in its rarest group (``label`` is then not used).

        Args:
            factor: a shortcut factor of this spec (default: the first shortcut).
            label: ``1`` (malignant) or ``0`` (benign).

        Raises:
            ValueError: no shortcut, ``factor`` not a shortcut, ``label`` not 0/1, or an
                empty group.
        """
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"label must be 0 or 1; got {label!r}")
        if not self.shortcuts:
            raise ValueError(
                f"heldout needs a spec with at least one shortcut; got none ({self.describe()})"
            )
        names = self.shortcut_factors
        factor = names[0] if factor is None else factor
        if factor not in names:
            raise ValueError(f"factor must be one of the shortcut factors {names}; got {factor!r}")
        shortcuts = []
        for sc in self.shortcuts:
            if sc.split.factor == factor:
                sc = Shortcut(sc.split, -1.0 if sc.strength >= 0 else 1.0)
            shortcuts.append(sc)
        fraction = float(label) if isinstance(self.label_rule, Split) else None
        return self.replace(
            name="heldout", shortcuts=tuple(shortcuts), malignant_fraction=fraction, label_noise=0.0
        )

    def covariate_shift(self, **marginals: Distribution) -> NoduleSpec:
        """Acquisition changed: noise, blur and pixel spacing (defaults: ``COVARIATE_SHIFT``).

        The default keeps the cause visible: the spicules' contrast-to-noise stays at about
        ``COVARIATE_CNR_FRACTION`` (0.69) of the default acquisition's (``describe()``
        says so); :meth:`degraded` is the strong shift.
        """
        merged = {**COVARIATE_SHIFT, **marginals}
        return self.with_marginals(**merged).replace(name="covariate")

    def degraded(self, **marginals: Distribution) -> NoduleSpec:
        """The strong acquisition shift, named ``"degraded"`` (defaults: ``DEGRADED_SHIFT``).

        Noise, blur and spacing that cut the spicules' contrast-to-noise to about
        ``DEGRADED_CNR_FRACTION`` (0.45) of the default acquisition's: a drop in accuracy there
        mixes lost information with lost robustness. Not among :meth:`test_distributions`.

        Example:
            >>> NoduleSpec().degraded().describe().split("; ")[-1][:54]
            'degraded acquisition: spicule contrast-to-noise about '
        """
        merged = {**DEGRADED_SHIFT, **marginals}
        return self.with_marginals(**merged).replace(name="degraded")

    def test_distributions(self) -> dict[str, NoduleSpec]:
        """``{"iid", "decorrelated", "reversed", "heldout", "covariate"}`` -> spec.

        ``"heldout"`` is present only when the spec has a shortcut.
        """
        out = {"iid": self.iid(), "decorrelated": self.decorrelated(), "reversed": self.reversed()}
        if self.shortcuts:
            out["heldout"] = self.heldout()
        out["covariate"] = self.covariate_shift()
        return out
