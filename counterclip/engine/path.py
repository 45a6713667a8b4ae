"""Target embeddings by gradient ascent on the unit sphere (the first step of a counterfactual query).

Plain functions over tensors, unit-tested on their own (STYLE.md #9): the objective is a small
callable on an embedding (built by a criterion, `counterclip.engine.criteria`), the walk is projected
gradient ascent with a proximity penalty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # imported where the walk runs: a plain search needs no torch
    import torch

LOG = logging.getLogger(__name__)

Objective = Callable[["torch.Tensor"], "torch.Tensor"]  # (n, d) unit vectors -> (n,) values to maximise


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``(n, d)`` (or ``(d,)``) float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def apply_edit(query: np.ndarray, delta: np.ndarray, weight: float) -> np.ndarray:
    """Embedding arithmetic: ``normalize(query + weight * delta)`` (clip-retrieval's query mixing)."""
    return normalize(np.asarray(query, np.float32) + weight * np.asarray(delta, np.float32))


@dataclass(frozen=True)
class PathSettings:
    """How the target embedding walks."""

    steps: int = 24  # maximum number of ascent steps
    step_angle: float = 0.06  # radians moved per step (normalised gradient steps keep the schedule even)
    proximity: float = 0.0  # lambda of the ||e - e0||^2 penalty, in objective units
    extra_steps: int = 8  # steps kept after the path point itself first passes the stop test


def gradient_path(
    start: np.ndarray,
    objective: Objective,
    settings: PathSettings = PathSettings(),
    stop: Callable[[float], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Projected gradient ascent of ``objective(e) - proximity * ||e - e0||^2`` on the unit sphere.

    Each step moves ``step_angle`` radians along the tangent component of the gradient, so the path
    advances evenly whatever the scale of the objective. The walk ends after ``settings.steps`` steps,
    when the gradient vanishes (a fixed point of the penalised objective), or ``extra_steps`` after
    ``stop(objective value)`` first holds.

    Args:
        start: ``(d,)`` the original embedding e0 (normalised inside).
        objective: callable ``(n, d) -> (n,)`` to maximise.
        settings: step count, step size, penalty.
        stop: optional test on the objective value of the current point.

    Returns:
        ``(path, values)``: path ``(K+1, d)`` float32 with ``path[0] == e0``, and objective values ``(K+1,)``.
    """
    import torch

    e0 = torch.as_tensor(normalize(start), dtype=torch.float32)
    e = e0.clone()
    points, values = [e0.numpy().copy()], []
    remaining: int | None = None
    for _ in range(settings.steps + 1):
        e = e.detach().requires_grad_(True)
        with torch.enable_grad():  # callers may run under no_grad / inference_mode
            value = objective(e[None])[0]
            penalised = value - settings.proximity * ((e - e0) ** 2).sum()
            (grad,) = torch.autograd.grad(penalised, e)
        values.append(float(value.detach()))
        if len(values) == settings.steps + 1:
            break
        if stop is not None and remaining is None and stop(values[-1]):
            remaining = settings.extra_steps
        if remaining is not None:
            if remaining == 0:
                break
            remaining -= 1
        with torch.no_grad():
            tangent = grad - (grad @ e) * e  # stay on the sphere: drop the radial component
            norm = float(tangent.norm())
            if norm < 1e-8:
                break
            direction = tangent / norm
            # exact geodesic step of step_angle radians along the tangent direction
            e = (
                torch.cos(torch.tensor(settings.step_angle)) * e
                + torch.sin(torch.tensor(settings.step_angle)) * direction
            )
            e = e / e.norm()
        points.append(e.detach().numpy().copy())
    return np.stack(points[: len(values)]).astype(np.float32), np.asarray(values, dtype=np.float32)


class Goal(Protocol):
    """What the path needs from a criterion (`counterclip.engine.criteria.Criterion`)."""

    def objective(self) -> Objective: ...
    def stop(self, value: float) -> bool: ...


@dataclass(frozen=True)
class TargetPath:
    """Stage 3 of a query: the walk of the moving embedding toward what the criterion asks."""

    points: np.ndarray  # (K+1, d) float32, points[0] the original
    values: np.ndarray  # (K+1,) the objective at each point


def target_path(start: np.ndarray, goal: Goal, settings: PathSettings) -> TargetPath:
    """The gradient path from ``start`` up the goal's objective, ending where the goal says."""
    points, values = gradient_path(start, goal.objective(), settings, stop=goal.stop)
    return TargetPath(points, values)
