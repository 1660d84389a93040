"""A SupCon training loop against cross-entropy, tested on shifted distributions.

The same small CNN (``nodulebench.models.small_cnn``, batch-normalised) is trained
twice on a training set where nodule size is a shortcut for the label: once end to end
with cross-entropy, once with SupCon on two augmented views (then a linear head on the
frozen features, the usual two-stage protocol). Both are tested on every test
distribution of the training spec; the figure shows the loss curves and the accuracy
per distribution.

    python examples/supcon_training.py --out supcon-training
    python examples/supcon_training.py --tiny --out /tmp/supcon
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a headless backend, chosen by the script (the library never does)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules, create_loss  # noqa: E402
from nodulebench.models import recompute_batch_norm, small_cnn  # noqa: E402
from nodulebench.threads import set_threads  # noqa: E402


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random horizontal and vertical flip per image."""
    for dim in (-1, -2):
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(dim), images)
    return images


def train(
    loss_name: str, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int
) -> tuple[nn.Module, list[float]]:
    """Train with ``"cross_entropy"`` or ``"supcon"``; returns the classifier and the losses."""
    torch.manual_seed(seed)  # the script's weights; the library never touches this RNG
    generator = torch.Generator().manual_seed(seed)
    encoder, head = small_cnn(), nn.Linear(64, 2)
    # The registry builds any loss by name; unknown options raise and list the valid ones.
    criterion = create_loss(loss_name, **({"temperature": 0.1} if loss_name == "supcon" else {}))
    projection = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    trained = [encoder, head] if loss_name == "cross_entropy" else [encoder, projection]
    optimizer = torch.optim.Adam([p for m in trained for p in m.parameters()], lr=3e-3)
    history = []
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(128):
            if loss_name == "cross_entropy":
                loss = criterion(head(encoder(augment(images[batch], generator))), labels[batch])
            else:
                views = torch.cat([augment(images[batch], generator) for _ in range(2)])
                embeddings = projection(encoder(views)).unflatten(0, (2, len(batch)))
                loss = criterion(embeddings.transpose(0, 1), labels[batch])  # (b, 2, 32)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    recompute_batch_norm(encoder, images)  # then eval mode, as the tests will use it
    if loss_name == "supcon":  # stage 2: a linear head on the frozen features
        with torch.no_grad():
            features = encoder(images)
        head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(300):
            head_loss = F.cross_entropy(head(features), labels)
            head_optimizer.zero_grad()
            head_loss.backward()
            head_optimizer.step()
    return nn.Sequential(encoder, head).eval(), history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("supcon-training"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    n_train, n_test, epochs = (512, 128, 3) if args.tiny else (4096, 1000, 10)

    spec = NoduleSpec().with_shortcut("diameter_mm", 0.9)
    train_set = SyntheticNodules(spec, n=n_train, seed=0, image_size=32)
    images = train_set.render(range(n_train))
    tests = {
        name: SyntheticNodules(s, n=n_test, seed=1, image_size=32)
        for name, s in spec.test_distributions().items()
    }

    results: dict[str, dict[str, float]] = {}
    histories = {}
    for loss_name in ("cross_entropy", "supcon"):
        model, histories[loss_name] = train(loss_name, images, train_set.labels, epochs, seed=0)
        results[loss_name] = {}
        for name, test in tests.items():
            with torch.no_grad():
                predicted = model(test.render(range(n_test))).argmax(dim=1)
            results[loss_name][name] = round(float((predicted == test.labels).double().mean()), 3)
        print(f"{loss_name:<14}", "  ".join(f"{k} {v:.3f}" for k, v in results[loss_name].items()))

    (args.out / "accuracy.json").write_text(json.dumps(results, indent=1))
    figure, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    for loss_name, history in histories.items():
        ax_loss.plot(history, label=loss_name)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_loss.legend(frameon=False)
    names = list(tests)
    for k, loss_name in enumerate(results):
        ax_acc.bar(
            [i - 0.2 + 0.4 * k for i in range(len(names))],
            [results[loss_name][name] for name in names],
            width=0.4,
            label=loss_name,
        )
    ax_acc.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax_acc.set(ylabel="test accuracy", ylim=(0, 1))
    ax_acc.legend(frameon=False, loc="lower left", fontsize=8)
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls="--")
    figure.savefig(args.out / "supcon_vs_ce.png", dpi=90)


if __name__ == "__main__":
    main()
