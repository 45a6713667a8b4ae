"""Benchmark the classical explainers: seconds and passes per explanation.

CNN methods run on a ResNet-18 with random weights (``torchvision.models.resnet18(weights=None)``) at
224 x 224 px on the CPU; LRP, which refuses ResNet's residual blocks, is measured on a VGG-11 instead. Besides
wall and CPU seconds, each method's cost is given in forward passes: its CPU seconds divided by the CPU
seconds of one no-grad forward pass of the same model, a figure that holds on a busy shared machine.
Partial dependence runs on 10,000 rows of scikit-learn's generated Friedman #1 regression data (no
download). Seconds are the median over ``--repeats`` runs after one warm-up run; passes are examples
through the model (forward / backward) as counted by the explainers themselves.

Usage::

    python scripts/bench_explainers.py                 # table
    python scripts/bench_explainers.py --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic import (
    TabularData,
    explain_cnn,
    explain_partial_dependence,
    fit_model,
    pixel_counterfactual,
)


def measure(run: Callable[[], list[Explanation]], repeats: int) -> dict:
    """Median wall and CPU seconds per explanation, and passes per explanation, of ``run`` (after a warm-up).

    CPU seconds (this process only) move less than wall seconds when other jobs share the machine.
    """
    explanations = run()
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        explanations = run()
        wall.append((time.perf_counter() - started) / len(explanations))
        cpu.append((time.process_time() - started_cpu) / len(explanations))
    first = explanations[0]
    return {
        "seconds": statistics.median(wall),
        "cpu_seconds": statistics.median(cpu),
        "forward_passes": first.forward_passes,
        "backward_passes": first.backward_passes,
    }


def forward_cpu_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median CPU seconds of one no-grad forward pass (eval mode), the unit for the cost ratios."""
    model.eval()
    cpu = []
    with torch.no_grad():
        model(x)
        for _ in range(max(3, repeats)):
            started = time.process_time()
            model(x)
            cpu.append(time.process_time() - started)
    model.train()
    return statistics.median(cpu)


def bench_cnn(repeats: int, size: int, ig_steps: int, cf_steps: int) -> list[dict]:
    """Every CNN method on a random ResNet-18 (LRP on a random VGG-11)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    vgg = torchvision.models.vgg11(weights=None)
    x = torch.randn(1, 3, size, size)
    pixels = torch.rand(1, 3, size, size)
    rows: list[dict] = []

    def add(
        method: str, model_name: str, model: torch.nn.Module, run: Callable[[], list[Explanation]]
    ) -> None:
        # The forward-pass unit is measured right before each method, so both see the same machine load.
        unit = forward_cpu_seconds(model, x, repeats)
        result = measure(run, repeats)
        cost = result["cpu_seconds"] / unit
        rows.append(
            {"method": method, "model": model_name, **result, "forward_cpu_seconds": unit, "cost": cost}
        )

    for method in ("gradcam", "guided-backprop", "guided-gradcam", "saliency", "ig"):
        add(
            method,
            "resnet18",
            resnet,
            lambda m=method: explain_cnn(resnet, x, m, targets=[1], n_steps=ig_steps),
        )
    add(
        "gradcam, 2 classes in one batch (per class)",
        "resnet18",
        resnet,
        lambda: explain_cnn(resnet, x, "gradcam", targets=[235, 208]),
    )
    try:
        explain_cnn(resnet, x, "lrp", targets=[1])
    except InputError as exc:
        rows.append({"method": "lrp", "model": "resnet18", "refused": str(exc).split(":")[0]})
    add("lrp", "vgg11", vgg, lambda: explain_cnn(vgg, x, "lrp", targets=[1]))
    add(
        f"pixel-cf ({cf_steps} steps)",
        "resnet18",
        resnet,
        lambda: [
            pixel_counterfactual(resnet, pixels, target_class=1, steps=cf_steps, stop_when_verified=False)
        ],
    )
    return rows


def bench_pdp(repeats: int, rows_count: int, grid: int) -> list[dict]:
    """PDP / ICE on ``rows_count`` rows of Friedman #1 (10 features), for three model kinds."""
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=rows_count, n_features=10, noise=0.5, random_state=0)
    data = TabularData(
        X=X, y=y, feature_names=[f"x{i}" for i in range(10)], target_name="y", task="regression"
    )
    rows = []
    for kind in ("random-forest", "gradient-boosting", "linear"):
        started = time.perf_counter()
        model = fit_model(data, kind)
        fit_seconds = time.perf_counter() - started
        cases = [("pdp", ["x0"], "average")]
        if kind == "gradient-boosting":
            cases += [("ice", ["x0"], "both"), ("pdp-2d", ["x0", "x1"], "average")]
        for name, features, pd_kind in cases:
            result = measure(
                lambda m=model, f=features, k=pd_kind: [
                    explain_partial_dependence(m, data, f, kind=k, grid_resolution=grid)
                ],
                repeats,
            )
            explanation = explain_partial_dependence(
                model, data, features, kind=pd_kind, grid_resolution=grid
            )
            rows.append(
                {
                    "method": name,
                    "model": kind,
                    "pd_method": explanation.extras["pd_method"],
                    "fit_seconds": fit_seconds,
                    **result,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (after one warm-up)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--ig-steps", type=int, default=50, help="integrated-gradients steps")
    parser.add_argument("--cf-steps", type=int, default=20, help="pixel-counterfactual steps")
    parser.add_argument("--rows", type=int, default=10_000, help="rows for partial dependence")
    parser.add_argument("--grid", type=int, default=100, help="PDP grid points per feature")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time is work, not spinning)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    # Idle OpenMP threads spin on a busy machine and inflate CPU time; one thread keeps CPU time honest.
    torch.set_num_threads(args.threads)

    report = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1m": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        },
        "settings": vars(args),
        "cnn": bench_cnn(args.repeats, args.size, args.ig_steps, args.cf_steps),
        "pdp": bench_pdp(args.repeats, args.rows, args.grid),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}")
    print(f"\nCNN explainers at {args.size}x{args.size} px, random weights, median of {args.repeats}")
    print("cost = CPU seconds per explanation / CPU seconds of one no-grad forward pass of the same model")
    print(f"{'method':<46} {'model':<9} {'wall s':>7} {'cpu s':>7} {'cost':>6} {'fwd':>4} {'bwd':>4}")
    for row in report["cnn"]:
        if "refused" in row:
            print(f"{row['method']:<46} {row['model']:<9} refused: {row['refused']}")
            continue
        print(
            f"{row['method']:<46} {row['model']:<9} {row['seconds']:>7.3f} {row['cpu_seconds']:>7.3f} "
            f"{row['cost']:>6.1f} {row['forward_passes']:>4} {row['backward_passes']:>4}"
        )
    print(f"\nPartial dependence on {args.rows} rows, grid {args.grid}, median of {args.repeats}")
    print(f"{'method':<8} {'model':<18} {'sklearn':<10} {'wall s':>7} {'cpu s':>7} {'rows predicted':>15}")
    for row in report["pdp"]:
        print(
            f"{row['method']:<8} {row['model']:<18} {row['pd_method']:<10} {row['seconds']:>7.3f} "
            f"{row['cpu_seconds']:>7.3f} {row['forward_passes']:>15}"
        )


if __name__ == "__main__":
    main()
