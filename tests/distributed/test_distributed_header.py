"""The header exchanged before a gather: mismatched ranks all fail alike, never hang."""

from __future__ import annotations

import math
import re
import string

import pytest
import torch
from _dist_cases import WORLD_SIZES
from _dist_header_cases import GATHER_TIMEOUT_S, SHORT_TIMEOUT_S
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nodulebench import create_loss, list_losses
from nodulebench import distributed as nd
from nodulebench._gather_header import agreed_fields, check_headers, encode_header
from nodulebench.losses import functional as LF
from nodulebench.losses._declaration import PairwiseOptions
from nodulebench.losses._inputs import prepare_embeddings

SHAPES = "embeddings must have the same shape on every rank except for the first dimension"
# What the error names when rank 1 deviates, and each rank's value (rank 2 only in the
# 3-rank run). The batch size B differs between ranks on purpose: it may.
EXPECTED = {
    "labels": ("every rank must pass the same kind of labels", ("'tensor'", "None")),
    "temperature": ("every rank must pass the same temperature", ("0.1", "0.2")),
    "loss": ("every rank must pass the same loss", ("'supcon'", "'contrastive'")),
    "reduction": ("every rank must pass the same reduction", ("'mean'", "'sum'")),
    "normalize": ("every rank must pass the same normalize", ("True", "False")),
    "dtype": (
        "embeddings must have the same dtype on every rank",
        ("torch.float32", "torch.float16"),
    ),
    "width": (SHAPES, ("(3, 5)", "(3, 6)", "(3, 5)")),
    "views": (SHAPES, ("(3, 1, 5)", "(4, 2, 5)", "(5, 1, 5)")),
    "form": ("every rank must pass the same form", ("'hadsell'", "'pml'")),
    "ref_temperature": ("every rank must pass the same temperature", ("0.1", "0.2")),
    "ref_width": (SHAPES.replace("embeddings", "ref_emb"), ("(2, 5)", "(2, 6)", "(2, 5)")),
    "memory_temperature": ("every rank must pass the same temperature", ("0.1", "0.2")),
    "fields": ("every rank must pass the same fields in the same order", ("a=1.0", "b=1.0")),
    "clip_temperature": ("every rank must pass the same temperature", ("0.1", "0.2")),
    "two_tower_loss": ("every rank must pass the same loss", ("'clip'", "'siglip'")),
    "dro_step_size": ("every rank must pass the same step_size", ("0.01", "0.02")),
    "tensor_temperature": ("every rank must pass the same temperature", ("0.25", "0.5")),
    # ClipLoss holds log(1 / temperature) as a float32 parameter.
    "clip_module_temperature": (
        "every rank must pass the same logit_scale",
        tuple(repr(float(torch.tensor(math.log(v)))) for v in (4.0, 2.0)),
    ),
    "siglip_bias_value": ("every rank must pass the same bias", ("-10.0", "-5.0")),
    "ref_presence": ("every rank must pass the same reference set", ("None", "'ref_emb'")),
    "memory_presence": ("every rank must pass the same memory rows", ("None", "0.0")),
}


# The error rank 1 raises about its own input in each case; the others name rank 1.
REJECTED_ON_RANK_1 = {
    "cnc_short_predictions": "ValueError: predictions must have shape (B,) = (4,)",
    "cnc_float_labels": "TypeError: labels must have an integer dtype; got torch.float64",
    "clip_towers": "ValueError: text_emb must have image_emb's shape (B, D) = (4, 5)",
    "clip_temperature_value": "ValueError: temperature must be a finite number > 0",
    "clip_module_dtype": "TypeError: text_emb must have image_emb's dtype torch.float32",
    "siglip_towers": "ValueError: text_emb must have image_emb's shape (B, D) = (4, 5)",
    "siglip_bias_shape": "ValueError: bias must be a float or a 0-dim tensor",
    "siglip_module_device": "ValueError: text_emb must be on image_emb's device cpu",
    "dro_groups_out_of_range": "ValueError: groups must lie in [0, 4) for num_groups = 4",
    # Options rejected on rank 1 alone (functional calls validate them per call).
    "supcon_option_value": "ValueError: temperature must be > 0; got -1.0",
    "ntxent_option_typo": "TypeError: NTXentOptions got an unknown option 'temprature'",
    "clip_option_value": "ValueError: temperature must be a finite number > 0",
    "cnc_option_value": "ValueError: temperature must be a finite number > 0; got -1.0",
    "dro_option_value": "ValueError: step_size must be a finite number >= 0; got -1.0",
}


def _listing(world_size: int, values: tuple[str, ...]) -> str:
    values = (*values, values[0])[:3]  # rank 2 passes what rank 0 passes unless given
    return ", ".join(f"rank {rank}: {values[rank]}" for rank in range(world_size))


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_every_rank_raises_the_same_named_error(
    distributed_results, world_size: int, case: str
) -> None:
    per_rank = distributed_results(world_size, "header_errors")
    messages = {res[case] for res in per_rank}
    assert len(messages) == 1, f"ranks raised different errors: {messages}"
    what, values = EXPECTED[case]
    assert messages.pop() == f"ValueError: {what}; got {_listing(world_size, values)}"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_group_weights_that_differ_are_named(distributed_results, world_size: int) -> None:
    # A (G,) tensor travels as a digest of its shape, dtype and bytes: the message names
    # the field and shows the start of each rank's text.
    messages = {
        res["dro_group_weights"] for res in distributed_results(world_size, "header_errors")
    }
    assert len(messages) == 1, f"ranks raised different errors: {messages}"
    message = messages.pop()
    assert message.startswith(
        "ValueError: every rank must pass the same group_weights; got rank 0: tensor(4,)"
    ), message


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_a_rank_that_rejects_its_input_makes_every_rank_fail(
    distributed_results, world_size: int
) -> None:
    per_rank = distributed_results(world_size, "header_errors")
    empty = "ValueError: embeddings must hold at least one sample, view and feature"
    short = "ValueError: labels must have shape (B,) = (4,) to match embeddings of shape"
    named = (
        "ValueError: rank 1 rejected its own input before the gather (the error "
        "raised there says why), so no rank can gather"
    )
    for rank, res in enumerate(per_rank):
        assert res["empty_batch"].startswith(empty if rank == 1 else named)
        assert res["bad_labels"].startswith(short if rank == 1 else named)
        assert res["all_empty"].startswith(empty)  # each rank its own error, nobody waits
        # A reference set or a memory bank rejected on rank 1 alone.
        assert res["ref_bad_width"].startswith(
            "ValueError: ref_emb must have the embedding dimension D = 5" if rank == 1 else named
        )
        assert res["ref_no_labels"].startswith(
            "TypeError: labels were given but ref_labels is None" if rank == 1 else named
        )
        assert res["memory_width"].startswith(
            "ValueError: embeddings must have D = embedding_size = 5" if rank == 1 else named
        )
        # Correct-N-Contrast and the two-tower losses, rejected on rank 1 alone.
        for case, own in REJECTED_ON_RANK_1.items():
            assert res[case].startswith(own if rank == 1 else named), (case, res[case])


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_long_values_are_cut_in_the_message_but_compared_whole(
    distributed_results, world_size: int
) -> None:
    for res in distributed_results(world_size, "header_errors"):
        shown = "'" + "x" * 26 + "..."  # 32 bytes of "note='xxx..." travel
        assert res["long_value"] == (
            "ValueError: every rank must pass the same note; got "
            + ", ".join(f"rank {rank}: {shown}" for rank in range(world_size))
        )


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_equal_numbers_agree_and_ranks_stay_in_step(distributed_results, world_size: int) -> None:
    for res in distributed_results(world_size, "header_errors"):
        assert res["int_vs_float"] == "no error"  # temperature=1 on one rank, 1.0 elsewhere
        # After every failed call above, the ranks still meet in the next collective.
        assert res["sizes_after"] == tuple(range(1, world_size + 1))


def test_a_rank_that_skips_the_gather_times_out_its_peers(distributed_results) -> None:
    per_rank = distributed_results(3, "skipped_gather")
    assert per_rank[1] == {"skipped": True}
    for res in (per_rank[0], per_rank[2]):
        assert res["raised"].startswith("RuntimeError: ")
        assert "timed out" in res["raised"].lower()
        # The peers waited for the timeout of the group passed to the loss (gloo cannot
        # time out early), not for the 60 s of the default group.
        assert res["waited_s"] >= SHORT_TIMEOUT_S
        # With gather_timeout the loss stops waiting itself and names the loss and rank.
        rank = per_rank.index(res)
        assert res["timeout_raised"].startswith(f"TimeoutError: loss 'clip': rank {rank} of 3 ")
        assert "never arrived" in res["timeout_raised"]
        assert GATHER_TIMEOUT_S <= res["timeout_waited_s"] < 10 * GATHER_TIMEOUT_S


@pytest.mark.parametrize(
    ("agree", "exc", "fragment"),
    [
        ([("a", 1)], TypeError, "agree must be a mapping of names to values or None; got list"),
        ({f"k{i}": i for i in range(17)}, ValueError, "at most 16 fields; got 17"),
        ({"": 1}, ValueError, "agree's keys must be non-empty and without '='; got ''"),
        ({"a=b": 1}, ValueError, "got 'a=b'"),
        ({3: 1}, TypeError, "agree's keys must be strings; got int"),
        (
            {"weights": [1.0]},
            TypeError,
            "agree['weights'] must be None, a bool, an int, a float, a str or a tensor; got list",
        ),
    ],
)
def test_bad_agree_is_named_without_a_process_group(agree, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        nd.gather_sizes(torch.zeros(2, 3), agree=agree)
    assert fragment in str(info.value)


def test_abandon_gather_without_a_process_group() -> None:
    assert nd.abandon_gather() is None  # nobody to tell
    with pytest.raises(TypeError, match="group must be a torch.distributed.ProcessGroup"):
        nd.abandon_gather("world")


def test_loss_options_are_checked_in_a_single_process_run() -> None:
    z, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match=r"agree\['margin'\] must be None, a bool"):
        prepare_embeddings(
            z,
            labels,
            normalize=True,
            labels_required=True,
            gather_distributed=True,
            options={"margin": [0.5]},
        )
    # Without gather_distributed the options are not used, hence not checked.
    prepare_embeddings(z, labels, normalize=True, labels_required=True, options={"margin": [0.5]})
    # Every loss hands valid options over (a bad one would raise here).
    for loss in (
        LF.supcon_loss,
        LF.contrastive_loss,
        LF.triplet_margin_loss,
        LF.multi_similarity_loss,
    ):
        assert torch.isfinite(loss(z, labels, gather_distributed=True))
    assert torch.isfinite(LF.ntxent_loss(z, z.flip(0), gather_distributed=True))
    # Two-tower losses: a learnable (tensor) scale is agreed by value, not refused.
    scale = torch.tensor(1.0, requires_grad=True)
    assert torch.isfinite(LF.clip_loss(z, z.flip(0), logit_scale=scale, gather_distributed=True))
    assert torch.isfinite(
        LF.siglip_loss(
            z, z.flip(0), logit_scale=scale, bias=torch.tensor(-1.0), gather_distributed=True
        )
    )


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in list_losses()
        if isinstance(getattr(create_loss(name), "options", None), PairwiseOptions)
    ],
)
def test_every_pairwise_declaration_gives_a_header_the_exchange_accepts(name: str) -> None:
    loss = create_loss(name, gather_distributed=True)
    header = loss.options.header()
    assert header["loss"] == name and "gather_distributed" not in header
    agreed_fields(header)  # raises on a value the header cannot carry
    z, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    args = {"ntxent": (z, z.flip(0)), "cnc": (z, labels, torch.tensor([0, 1, 0, 1]))}
    assert torch.isfinite(loss(*args.get(name, (z, labels))))


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
NAMES = st.text(string.ascii_letters + "_ ", min_size=1, max_size=12)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@settings(max_examples=200, deadline=None)
@given(options=st.dictionaries(NAMES, VALUES, min_size=1, max_size=16), data=st.data())
def test_headers_differ_exactly_where_a_value_differs(options, data) -> None:
    """Planted truth: rank 1 changes one value; the error names that field, or none."""
    name = data.draw(st.sampled_from(sorted(options)))
    old, new = options[name], data.draw(VALUES)
    assume(not (_number(old) and _number(new) and old == new))  # the example test below
    z = torch.zeros(2, 3)
    rows = [
        encode_header(z, agreed_fields(options)),
        encode_header(z, agreed_fields({**options, name: new})),
    ]
    if type(old) is type(new) and old == new:
        check_headers("z", rows)
        return
    with pytest.raises(ValueError) as info:
        check_headers("z", rows)
    assert str(info.value).startswith(f"every rank must pass the same {name}; got rank 0: ")


def test_equal_numbers_agree_and_other_types_do_not() -> None:
    z = torch.zeros(2, 3)

    def agree(a: object, b: object) -> bool:
        rows = [encode_header(z, agreed_fields({"x": value})) for value in (a, b)]
        try:
            check_headers("z", rows)
        except ValueError:
            return False
        return True

    assert agree(1, 1.0) and agree(2**53, float(2**53)) and agree(None, None)
    assert not agree(True, 1) and not agree("1", 1) and not agree(None, "None")
    assert not agree(0.1, 0.1 + 1e-16) and not agree(2**60 + 1, 2**60)


def test_tensors_agree_by_value() -> None:
    z = torch.zeros(2, 3)

    def agree(a: object, b: object) -> bool:
        rows = [encode_header(z, agreed_fields({"x": value})) for value in (a, b)]
        try:
            check_headers("z", rows)
        except ValueError:
            return False
        return True

    learnable = torch.nn.Parameter(torch.tensor(0.25))
    assert agree(learnable, torch.tensor(0.25)) and agree(torch.tensor(0.25), 0.25)
    assert not agree(learnable, torch.tensor(0.5))
    assert agree(torch.arange(4.0), torch.arange(4.0))
    assert not agree(torch.arange(4.0), torch.arange(4.0).flip(0))
    assert not agree(torch.arange(4.0), torch.arange(4.0).double())
    assert not agree(torch.arange(4.0), torch.arange(4.0).reshape(2, 2))
    assert not agree(torch.tensor(True), torch.tensor(1.0))
    assert agree(torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16))
    assert not agree(torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float16))


def test_reference_set_and_memory_rows_join_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rank with a reference set (or a memory bank) and one without must never meet
    # as if they agreed: what each call puts in the header.
    import nodulebench.losses._inputs as inputs
    from nodulebench import SupConLoss
    from nodulebench.losses import CrossBatchMemory

    captured: list[dict[str, object]] = []
    original = inputs.gather_sizes

    def spy(tensor, group=None, *, agree=None, name="tensor", timeout=None):  # type: ignore[no-untyped-def]
        captured.append(dict(agree or {}))
        return original(tensor, group, agree=agree, name=name, timeout=timeout)

    monkeypatch.setattr(inputs, "gather_sizes", spy)
    z, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    LF.supcon_loss(z, labels, gather_distributed=True)
    LF.supcon_loss(z, labels, gather_distributed=True, ref_emb=z, ref_labels=labels)
    memory = CrossBatchMemory(SupConLoss(gather_distributed=True), embedding_size=3, memory_size=8)
    memory(z, labels)
    memory(z, labels)
    assert [c["reference set"] for c in captured] == [None, "ref_emb", None, None]
    assert [c["memory rows"] for c in captured] == [None, None, 0, 4]


@pytest.mark.parametrize(
    ("value", "exc", "fragment"),
    [
        (0.0, ValueError, "gather_timeout must be a finite number of seconds > 0 or None; got 0.0"),
        (float("inf"), ValueError, "got inf"),
        ("1", TypeError, "gather_timeout must be a number of seconds or None; got str"),
        (True, TypeError, "got bool"),
    ],
)
def test_gather_timeout_is_checked(value: object, exc: type, fragment: str) -> None:
    for build in (
        lambda: create_loss("supcon", gather_timeout=value),
        lambda: create_loss("clip", gather_timeout=value),
        lambda: create_loss("group_dro", num_groups=2, gather_timeout=value),
    ):
        with pytest.raises(exc, match=re.escape(fragment)):
            build()
    with pytest.raises(exc, match=re.escape(fragment.replace("gather_timeout", "timeout"))):
        nd.gather_sizes(torch.zeros(2, 3), timeout=value)  # type: ignore[arg-type]
