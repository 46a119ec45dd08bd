"""PGD — projected gradient descent with random start and restarts (Madry et al. 2018),
and the risk-targeted variant of Ghamizi et al. 2023."""

from __future__ import annotations

import numpy as np
import torch

from .base import Attack, AttackStep, Param, _Context, _check_finite_number, check_positive_int, loss_param


class PGD(Attack):
    r"""L∞ PGD: ``X_0 = X + U(−ε, ε)``; ``X_{k+1} = Π_ε(X_k ± α · sign(∇ loss))``.

    Untargeted (ascend the loss to the labels, or to the clean prediction when no labels are
    given) or targeted (descend the loss to ``target``: a class index, a label map or a float
    target vector). With ``restarts > 1`` each restart draws a new random start and, per sample,
    the strongest result is kept (highest final loss untargeted, lowest targeted).

    With ``restarts=1``, a ``[0, 1]`` input, ``data_range=(0, 1)``, cross-entropy and the same
    seed (``torch.manual_seed(seed)`` before torchattacks), this equals ``torchattacks.PGD``.

    Arguments: ``eps=0.05``; ``steps=10``; ``alpha=None`` → ``2.5 · ε / steps`` (Madry et
    al.'s rule, so the walk can cross the ball); ``random_start=True``; ``restarts=1``; plus
    those of :class:`~.base.Attack`.

    Example::

        >>> x_adv = PGD(model, eps=8/255, alpha=2/255, steps=10, data_range=(0, 1), seed=0)(x, y)
        >>> x_tgt = PGD(model, eps=0.03, steps=20)(x, target=2)
    """

    name = "pgd"
    label = "PGD"
    description = "Projected gradient descent with random start and restarts (untargeted or targeted)."
    targeted = "optional"
    warm_start = True
    params = (
        Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),
        Param("steps", int, 10, "iterations per restart", 1, 10000),
        Param("alpha", float, None, "step size α (fraction of range); default 2.5·ε/steps", 0.0, 1.0),
        Param("restarts", int, 1, "random restarts; the strongest per sample is kept", 1, 100),
        Param("random_start", bool, True, "start from a uniform random point in the ε-ball"),
        loss_param(),
    )

    def __init__(self, model, eps: float = 0.05, steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, restarts: int = 1, **kwargs):
        super().__init__(model, eps, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.restarts = check_positive_int("restarts", restarts)
        if alpha is not None:
            alpha = _check_finite_number("alpha", alpha, minimum=0.0, strict=True)
        self.alpha = alpha
        self.random_start = bool(random_start)

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    def _is_targeted(self, ctx: _Context) -> bool:
        return ctx._target is not None

    def _start(self, ctx: _Context, restart: int) -> torch.Tensor:
        if restart == 0 and ctx.init is not None:
            return ctx.init  # a warm start (live ε) replaces the first random start
        if not (self.random_start or restart > 0):
            return ctx.x
        noise = torch.empty_like(ctx.x).uniform_(-1.0, 1.0, generator=ctx.rng)
        return ctx.project(ctx.x + noise * ctx.eps)

    def _loss_and_grad(self, ctx: _Context, adv: torch.Tensor, k: int, targeted: bool):
        """Per-sample loss, input gradient and output at step ``k`` (SegPGD/CosPGD re-weight it)."""
        return ctx.loss_and_grad(adv)

    def _steps(self, ctx: _Context):
        sign = -1.0 if self._is_targeted(ctx) else 1.0
        alpha = ctx.range.eps_native(self.step_size)
        total = self.steps * self.restarts
        best, best_loss = None, None
        for r in range(self.restarts):
            adv = self._start(ctx, r)
            for k in range(self.steps):
                per_sample, grad, out = self._loss_and_grad(ctx, adv, k, sign < 0)
                metrics = self._step_metrics(ctx, adv, out) if self.track_metrics else {}
                before, adv = adv, ctx.project(adv + sign * alpha * grad.sign())
                yield AttackStep(r * self.steps + k + 1, total, float(per_sample.mean()), adv, metrics, restart=r,
                                 evaluated=before, output=out)
            if self.restarts == 1:
                return adv
            with torch.no_grad():
                final = ctx.loss(ctx.forward(adv))
            score = final * sign  # higher is stronger in both modes
            if best is None:
                best, best_loss = adv, score
            else:
                better = (score > best_loss).reshape(-1, *([1] * (adv.ndim - 1)))
                best = torch.where(better, adv, best)
                best_loss = torch.maximum(score, best_loss)
        return best


class RiskPGD(PGD):
    r"""Risk-targeted PGD of Ghamizi et al. 2023 (section 5) for multi-label classifiers.

    For each input, the target is ``C(ŷ*)``: the row of the normalised *inverse label
    co-occurrence matrix* C (see :func:`napari_medadv.core.metrics.inverse_cooccurrence`) for
    the clean prediction's most probable label ŷ*, a real-valued vector of labels that rarely
    occur with ŷ*. Targeted PGD then descends ``loss(M(x), C(ŷ*))`` from the clean image, as the
    paper writes it: ``x^0 = x``; ``x^{t+1} = Π(x^t − α sgn(∇ L(θ, x, C(ŷ*))))`` (no random
    start by default; ``random_start=True`` gives Madry's start instead). The loss is BCE by
    default; the paper also uses MSE and the ordinal loss OL (``loss="ol"``). RISK is
    ``M(x*) · C(ŷ*)`` with ``M(x*)`` the *logits* as the paper states; metrics.json and
    studies give it from the probabilities too, labelled
    (:func:`napari_medadv.core.metrics.risk`).

    Where C comes from (one of, ``cooccurrence`` winning when both are given):

    * ``cooccurrence`` — the matrix ``M × M`` (array, or a ``.npy``/``.csv`` file);
    * ``cooccurrence_from`` — a labels CSV (``file,<class>,...``, 0/1 rows), e.g. the
      *training* labels as in the paper; its class columns in order (the pipeline and the CLI
      pick them by the model's class names).

    ``result.extra`` holds ``risk_target`` (each sample's ``C(ŷ*)``) and ``cooccurrence_source``.
    The rest as :class:`PGD` (the paper: ε ∈ {0.5 … 8}/255, 25 steps). One extra forward pass
    finds ŷ* on the clean image.
    """

    name = "pgd-risk"
    label = "PGD (risk-targeted)"
    description = "Ghamizi's risk-targeted PGD: targets labels that rarely co-occur with the prediction."
    targeted = "no"  # the target is derived from the model, not given
    params = tuple(loss_param("bce") if p.name == "loss" else p if p.name != "random_start" else
                   Param("random_start", bool, False, "start from a uniform random point in the ε-ball "
                                                      "(the paper starts from x)") for p in PGD.params) + (
        Param("cooccurrence", str, None, "inverse co-occurrence matrix (.npy/.csv, M×M)"),
        Param("cooccurrence_from", str, None, "labels CSV (file,<class>,...) the matrix is built from, "
                                              "e.g. the training labels"),
    )

    def __init__(self, model, eps: float = 0.05, steps: int = 25, alpha: float | None = None,
                 random_start: bool = False, restarts: int = 1, cooccurrence=None,
                 cooccurrence_from=None, **kwargs):
        kwargs.setdefault("loss", "bce")
        super().__init__(model, eps, steps, alpha, random_start, restarts, **kwargs)
        if cooccurrence is None and cooccurrence_from is None:
            raise ValueError("pgd-risk needs the inverse co-occurrence matrix (cooccurrence=...) "
                             "or a labels CSV to build it from (cooccurrence_from=...)")
        self.cooccurrence = cooccurrence
        self.cooccurrence_from = cooccurrence_from
        if cooccurrence is not None:
            self._matrix = _load_matrix(cooccurrence)
            given = isinstance(cooccurrence, (str, bytes)) or hasattr(cooccurrence, "__fspath__")
            self.cooccurrence_source = (f"labels CSV {cooccurrence_from}" if cooccurrence_from is not None
                                        else f"matrix file {cooccurrence}" if given else "matrix given")
        else:
            from ..cooccurrence import inverse_cooccurrence_from_csv  # deferred: file reading

            self._matrix = inverse_cooccurrence_from_csv(cooccurrence_from)
            self.cooccurrence_source = f"labels CSV {cooccurrence_from}"

    def _is_targeted(self, ctx: _Context) -> bool:
        return True

    def _steps(self, ctx: _Context):
        with torch.no_grad():
            clean = ctx.forward(ctx.x)
        ctx.clean_output = clean
        if clean.ndim != 2:
            raise ValueError("pgd-risk applies to (multi-label) classifiers with outputs B × M")
        ctx._ref = risk_targets(self._matrix, clean)
        return (yield from super()._steps(ctx))

    def _finish(self, ctx: _Context, adv, history):
        extra = super()._finish(ctx, adv, history)
        extra["risk_target"] = ctx._ref.detach().cpu().tolist()
        extra["cooccurrence_source"] = self.cooccurrence_source
        return extra


def risk_targets(matrix, clean_output: torch.Tensor) -> torch.Tensor:
    """``C(ŷ*)`` per sample: the row of the inverse co-occurrence matrix for each clean output's
    arg-max label (``B × M``, on the output's device and dtype)."""
    m = clean_output.shape[1]
    mat = torch.as_tensor(np.asarray(matrix), dtype=clean_output.dtype, device=clean_output.device)
    if tuple(mat.shape) != (m, m):
        raise ValueError(f"cooccurrence matrix is {tuple(mat.shape)} but the model has {m} labels")
    return mat[clean_output.argmax(1)]


def _load_matrix(spec) -> np.ndarray:
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        from pathlib import Path

        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"{path}: co-occurrence matrix file not found")
        try:
            mat = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")
        except Exception as exc:  # any parse failure is reported with the file name
            raise ValueError(f"{path}: cannot read a numeric matrix ({exc})") from None
    else:
        mat = np.asarray(spec.detach().cpu() if isinstance(spec, torch.Tensor) else spec, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or not np.isfinite(mat).all():
        raise ValueError(f"cooccurrence must be a finite square matrix, got shape {mat.shape}")
    return mat.astype(np.float64)
