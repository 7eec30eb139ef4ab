"""Hard regularization in its simplest form: fit y = 3x + 2 + noise with weight and gradient clipping.

With a loose weight bound (c = 10) the model recovers w ≈ 3, b ≈ 2. With c = 2.5 the weight
cannot reach 3: it ends exactly on the bound, and the invariant check confirms |w| ≤ c after
every step. Gradient clipping (|g| ≤ L) bounds each step; training still converges.

    python examples/linear_regression_clipping.py
"""

from __future__ import annotations

import hwreg_rs as hw


def run(c: float, L: float) -> tuple[float, float, float]:
    X, y = hw.data.make_regression(256, coef=3.0, bias=2.0, noise=0.1, seed=0)
    model = hw.nn.Linear(1, 1, rng=0)
    history = hw.fit(
        model, X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=40, batch_size=16, verbose=False,
        constraints=[hw.constraints.WeightClip(c), hw.constraints.GradClipValue(L)],
    )
    return float(model.weight.data[0, 0]), float(model.bias.data[0]), history["loss"][-1]


def main() -> None:
    print("| weight bound c | grad bound L | w | b | final MSE |")
    print("|---|---|---|---|---|")
    for c, L in [(10.0, 1.0), (10.0, 0.05), (2.5, 1.0), (1.0, 1.0)]:
        w, b, loss = run(c, L)
        print(f"| {c} | {L} | {w:.4f} | {b:.4f} | {loss:.4f} |")


if __name__ == "__main__":
    main()
