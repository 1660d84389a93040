"""A training step with our losses compiles in one graph and never waits for the device.

Compiling on a small CPU is slow, so the default suite compiles two representative
losses per backend (``aot_eager``, which also traces the backward pass); the host-sync
check runs every pairwise loss eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from nodulebench import create_loss, get_loss_info, list_losses

# Dynamo probes ``.grad`` of non-leaf tensors and the inductor import chain warns; neither
# concerns the loss.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CASES = [
    ("supcon", "reference", {}),
    ("triplet", "reference", {"mining": "all"}),
    ("supcon", "tiled", {"temperature": 0.5}),
    ("triplet", "tiled", {"mining": "hard"}),
]
PAIRWISE = [name for name in list_losses() if get_loss_info(name).consumes == "embeddings"]


def make_step(
    name: str, backend: str, options: dict[str, object]
) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = torch.nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(4, 6))
        model.bias.zero_()
    return model, create_loss(name, backend=backend, **options)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(12, 2, 6, generator=gen, dtype=torch.float64), torch.arange(12) % 3


def compiles_like_eager(
    forward: Callable[..., torch.Tensor],
    compiled: tuple[torch.nn.Module, torch.nn.Module],
    eager: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    """``forward(model, loss)`` traces as one graph and matches eager, value and gradient."""
    explanation = torch._dynamo.explain(forward)(*compiled)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    got = torch.compile(forward, fullgraph=True, backend="aot_eager")(*compiled)
    got.backward()
    want = forward(*eager)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(compiled[0].weight.grad, eager[0].weight.grad)


@pytest.mark.parametrize(("name", "backend", "options"), CASES, ids=lambda x: str(x))
def test_step_compiles_in_one_graph_and_matches_eager(
    name: str, backend: str, options: dict[str, object]
) -> None:
    x, labels = inputs()
    torch._dynamo.reset()
    eager_model, eager_loss = make_step(name, backend, options)
    compiled_model, compiled_loss = make_step(name, backend, options)

    def forward(model: torch.nn.Module, loss_fn: torch.nn.Module) -> torch.Tensor:
        return loss_fn(model(x), labels)

    compiles_like_eager(forward, (compiled_model, compiled_loss), (eager_model, eager_loss))
    assert compiled_loss.num_excluded_anchors == eager_loss.num_excluded_anchors == 0


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_step_with_a_reference_set_compiles_in_one_graph(backend: str) -> None:
    # Anchors and reference rows both come from the model: the gradient reaches it twice.
    x, labels = inputs()
    ref_x = x[:7, 0].flip(0) + 0.5
    ref_labels = torch.arange(7) % 4  # class 3 is absent from the anchors
    torch._dynamo.reset()
    eager_model, eager_loss = make_step("supcon", backend, {"temperature": 0.5})
    compiled_model, compiled_loss = make_step("supcon", backend, {"temperature": 0.5})

    def forward(model: torch.nn.Module, loss_fn: torch.nn.Module) -> torch.Tensor:
        return loss_fn(model(x), labels, ref_emb=model(ref_x), ref_labels=ref_labels)

    compiles_like_eager(forward, (compiled_model, compiled_loss), (eager_model, eager_loss))


@pytest.fixture
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every way of reading a tensor's value on the host raise."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loss read a tensor's value on the host")

    for method in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    yield
    monkeypatch.undo()


@pytest.mark.parametrize("backend", ["reference", "tiled"])
@pytest.mark.parametrize("name", PAIRWISE)
def test_the_loss_path_never_reads_the_device(name: str, backend: str, no_host_sync: None) -> None:
    options = {"mining": "all"} if name == "triplet" and backend == "tiled" else {}
    loss_fn = create_loss(name, backend=backend, **options)
    embeddings = torch.randn(
        8, 2, 4, generator=torch.Generator().manual_seed(1), requires_grad=True
    )
    labels = torch.arange(8) % 3
    if get_loss_info(name).consumes == "paired_embeddings":
        loss = loss_fn(embeddings[:, 0], embeddings[:, 1])
    else:
        loss = loss_fn(embeddings) if name == "ntxent" else loss_fn(embeddings, labels)
    loss.backward()


def test_excluded_anchors_are_counted_when_asked() -> None:
    loss_fn = create_loss("supcon")
    loss_fn(torch.randn(4, 3), torch.tensor([0, 0, 1, 2]))
    assert loss_fn.num_excluded_anchors == 2


def test_the_check_catches_a_host_read(no_host_sync: None) -> None:
    with pytest.raises(AssertionError, match="on the host"):
        bool(torch.tensor(1.0) > 0)
    with pytest.raises(AssertionError, match="on the host"):
        torch.tensor([1.0]).sum().item()
