"""The training loop: mini-batches, seeded shuffling, validation, history, callbacks and hard constraints.

:class:`Trainer` holds the state of a run (optimizer, step count, history);
:func:`fit` is the one-shot form. Every step runs the constraints of
:mod:`hwreg_rs.constraints` at their fixed points and, unless
``check_constraints=False``, calls every constraint's invariant check after the
optimizer step, so a run that finishes has kept every promise at every step.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import constraints as C
from ._validate import check_array, check_float, check_int
from .losses import DistillationLoss, Loss, get_loss
from .nn.layers import Dropout
from .nn.module import Module
from .optim import CosineAnnealingLR, LRScheduler, Optimizer, StepLR, get_optimizer

__all__ = ["Callback", "EarlyStopping", "GradualShrinking", "History", "Trainer", "blas_limit", "evaluate", "fit",
           "predict"]


class History:
    """Per-epoch metrics of a run: ``history["loss"]``, ``"val_loss"``, ``"accuracy"``, ``"val_accuracy"``, ``"lr"``, ``"time"``.

    Examples
    --------
    >>> h = History(); h.append({"loss": 1.0}); h.append({"loss": 0.5})
    >>> h["loss"], len(h)
    ([1.0, 0.5], 2)
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs = 0

    def append(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.history.setdefault(k, [math.nan] * self.epochs).append(float(v))
        self.epochs += 1
        for v in self.history.values():
            if len(v) < self.epochs:
                v.append(math.nan)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return self.epochs

    def last(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.history.items()}

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs}, keys={list(self.history)})"


class Callback:
    """Hooks called by :class:`Trainer`; set ``trainer.stop_training = True`` to stop after this epoch."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.fn(trainer, epoch, logs)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default "val_loss"
    patience : int, default 5
    min_delta : float, default 0.0
    mode : {"auto", "min", "max"}, default "auto"
        "auto" maximises metrics whose name contains "acc", minimises others.
    restore_best_weights : bool, default True
        Load the best epoch's state at the end (the constraints' projections
        are applied again after restoring).

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> es = hw.train.EarlyStopping(monitor="val_loss", patience=2)
    """

    def __init__(self, *, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = True) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, trainer: Trainer) -> None:
        self.maximize_ = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.best_ = -math.inf if self.maximize_ else math.inf
        self.best_epoch_ = -1
        self.wait_ = 0
        self.best_state_: dict[str, np.ndarray] | None = None
        self.stopped_epoch_: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r} but the logs have {sorted(logs)}")
        v = logs[self.monitor]
        better = v > self.best_ + self.min_delta if self.maximize_ else v < self.best_ - self.min_delta
        if better:
            self.best_, self.best_epoch_, self.wait_ = v, epoch, 0
            if self.restore_best_weights:
                self.best_state_ = trainer.model.state_dict()
        else:
            self.wait_ += 1
            if self.wait_ >= self.patience:
                trainer.stop_training = True
                self.stopped_epoch_ = epoch

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self.best_state_ is not None and self.best_epoch_ != trainer.epoch_:
            trainer.model.load_state_dict(self.best_state_)
            for c in C.sort_for_projection(trainer.constraints_):
                c.after_step()


class GradualShrinking(Callback):
    """Shrink the model on a schedule while it trains: structured pruning with fine-tuning between.

    The shape of :class:`hwreg_rs.constraints.GradualPruning`, with channels
    instead of weights: at every update step of ``schedule`` (before that
    training step runs) the trainer's model is replaced by a smaller dense copy
    (:class:`hwreg_rs.prune.ShrinkPlan`) in which every prunable channel group
    has lost ``round(s_t * n)`` of its ``n`` original prunable channels (every
    layer keeps at least one), ``s_t`` the schedule's target; the steps in
    between fine-tune it. Shrinking replaces modules, so the optimizer,
    its state and the constraints are rebuilt for the new model by
    :meth:`Trainer.replace_model` (the optimizer state is cut to the kept
    channels). The result is ``trainer.model``; the model the trainer was
    given is not changed.

    Parameters
    ----------
    final_amount : float in [0, 1], optional
        Fraction of every group's channels removed at ``end_step``; or give ``schedule``.
    end_step : int, optional
    initial_amount : float, default 0.0
    begin_step : int, default 0
    frequency : int, default 100
        Steps between shrinking steps.
    schedule : callable ``schedule(step) -> amount`` with ``should_update(step)``, optional
        Default :class:`hwreg_rs.prune.PolynomialDecay` over the four arguments
        above; with ``end_step`` and ``final_sparsity`` the final amount is
        reached exactly at ``end_step``.
    importance : {"l1", "l2", "taylor", "bn"}, default "l1"
        ``"taylor"`` takes the gradients of the last training batch.
    input_shape : tuple of int, optional
        Shape of one input sample, when the model does not say (a Sequential of convolutions).

    Attributes
    ----------
    updates_ : list of (int, float, int)
        ``(step, amount, parameter count)`` after every shrinking step.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> X, y = hw.data.make_classification(256, n_features=8, n_classes=3, seed=0)
    >>> cb = hw.train.GradualShrinking(0.5, end_step=16, frequency=8)
    >>> tr = hw.Trainer(hw.nn.mlp([8, 32, 3], rng=0), epochs=4, batch_size=32, callbacks=[cb],
    ...                 verbose=False).fit(X, y)
    >>> tr.model[0].out_features, [u[0] for u in cb.updates_]
    (16, [8, 16])
    """

    def __init__(self, final_amount: float | None = None, *, end_step: int | None = None,
                 initial_amount: float = 0.0, begin_step: int = 0, frequency: int = 100, schedule: Any = None,
                 importance: str = "l1", input_shape: Any = None) -> None:
        from .prune import PolynomialDecay

        if schedule is None:
            if final_amount is None or end_step is None:
                raise ValueError("give final_amount and end_step, or a schedule")
            for v, n in ((initial_amount, "initial_amount"), (final_amount, "final_amount")):
                check_float(v, n, 0.0, 1.0)
            for v, n in ((end_step, "end_step"), (begin_step, "begin_step"), (frequency, "frequency")):
                check_int(v, n)
            if int(end_step) <= int(begin_step) or int(begin_step) < 0 or int(frequency) < 1:
                raise ValueError(f"need 0 <= begin_step < end_step and frequency >= 1; "
                                 f"got {begin_step}, {end_step}, {frequency}")
            schedule = PolynomialDecay(float(initial_amount), float(final_amount), int(begin_step), int(end_step),
                                       frequency=int(frequency))
        if not (callable(schedule) and callable(getattr(schedule, "should_update", None))):
            raise TypeError("schedule must be callable as schedule(step) and have should_update(step)")
        from .shrink import IMPORTANCE

        if importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {IMPORTANCE}; got {importance!r}")
        self.schedule = schedule
        self.importance = importance
        self.input_shape = input_shape

    def on_train_begin(self, trainer: Trainer) -> None:
        from .shrink import ShrinkPlan

        if not hasattr(self, "original_"):  # a continued fit keeps counting from the first model
            plan = ShrinkPlan(trainer.model, 0.0, input_shape=self.input_shape)
            self.original_ = {g.layers: g for g in plan.groups}
            self.updates_: list[tuple[int, float, int]] = []

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        end = getattr(self.schedule, "end_step", None)
        final = getattr(self.schedule, "final_sparsity", None)
        if end is not None and final is not None and step == end:
            self.shrink(trainer, float(final), step=step)
        elif self.schedule.should_update(step):
            self.shrink(trainer, float(self.schedule(step)), step=step)

    def shrink(self, trainer: Trainer, amount: float, *, step: int | None = None) -> None:
        """Shrink ``trainer.model`` now until ``amount`` of every group's original channels are gone."""
        from .shrink import ShrinkPlan

        if not hasattr(self, "original_"):
            self.on_train_begin(trainer)
        amount = check_float(amount, "amount", 0.0, 1.0)
        model = trainer.model
        remove = {}
        for g in ShrinkPlan(model, 0.0, input_shape=self.input_shape).groups:
            g0 = self.original_.get(g.layers)
            if g0 is None or g0.prunable == 0:
                continue
            more = round(amount * g0.prunable) - (g0.channels - g.channels)
            if more > 0:
                remove[g.layers] = more
        if not remove:
            return
        grads = {n: p.grad for n, p in model.named_parameters()} if self.importance == "taylor" else None
        plan = ShrinkPlan(model, remove=remove, importance=self.importance, grads=grads,
                          input_shape=self.input_shape)
        trainer.replace_model(plan.apply(), kept=plan.kept)
        n_params = sum(p.data.size for p in trainer.model.parameters())
        self.updates_.append((trainer.step_ if step is None else step, amount, n_params))


_CONTROLLER: Any = None


def _threadpool_controller() -> Any:
    """One ``threadpoolctl.ThreadpoolController`` per process (finding the libraries costs milliseconds)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - depends on the environment
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER or None


class blas_limit:
    """Context manager limiting NumPy's BLAS threads (a no-op without ``threadpoolctl`` or with ``None``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> with hw.train.blas_limit(1):
    ...     _ = np.ones((4, 4)) @ np.ones((4, 4))
    """

    def __init__(self, threads: int | None) -> None:
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ValueError(f"blas_threads must be None or an int >= 1; got {threads!r}")
        self.threads = threads
        self._ctx: Any = None

    def __enter__(self) -> blas_limit:
        if self.threads is not None:
            ctl = _threadpool_controller()
            if ctl is not None:
                self._ctx = ctl.limit(limits=int(self.threads), user_api="blas")
                self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None


def _as_array(x: Any, name: str) -> np.ndarray:
    return check_array(x, name, min_ndim=1)


def _batches(n: int, batch_size: int, order: np.ndarray | None) -> Iterable[np.ndarray | slice]:
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n)) if order is None else order[s: s + batch_size]


def predict(model: Module, X: Any, *, batch_size: int = 1024) -> np.ndarray:
    """Outputs of ``model`` in evaluation mode (restores the previous mode).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.train.predict(hw.nn.Linear(3, 2, rng=0), np.ones((5, 3))).shape
    (5, 2)
    """
    X = _as_array(X, "X").astype(np.float32, copy=False)
    batch_size = check_int(batch_size, "batch_size", 1)
    if not isinstance(model, Module):
        raise TypeError(f"model must be an hwreg_rs.nn.Module; got {type(model).__name__}")
    was = model.training
    model.eval()
    try:
        outs = [model.forward(X[s]) for s in _batches(len(X), batch_size, None)]
    finally:
        model.train(was)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def evaluate(model: Module, X: Any, y: Any, *, loss: Any = "cross_entropy", batch_size: int = 1024) -> dict[str, float]:
    """``{"loss": ..., "accuracy": ...}`` (accuracy for classification losses) of ``model`` on ``(X, y)``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> r = hw.train.evaluate(hw.nn.Linear(3, 2, rng=0), np.ones((4, 3)), np.array([0, 1, 0, 1]))
    >>> sorted(r)
    ['accuracy', 'loss']
    """
    lf = get_loss(loss)
    out = predict(model, X, batch_size=batch_size)
    res = {"loss": lf.forward(out, np.asarray(y))}
    if lf.classification:
        res["accuracy"] = float(np.mean(out.argmax(axis=1) == np.asarray(y)))
    return res


class Trainer:
    """Trains a :class:`hwreg_rs.nn.Module` under hard constraints.

    Parameters
    ----------
    model : Module
    loss : Loss or {"cross_entropy", "mse"}, default "cross_entropy"
    optimizer : Optimizer or {"sgd", "adam", "adamw"}, default "adam"
        A name builds the optimizer at :meth:`fit` with ``lr``, ``momentum``,
        ``weight_decay`` (and ``nesterov`` for SGD).
    lr, momentum, weight_decay, nesterov : optimizer settings used with a name
    scheduler : None, "cosine", "step", LRScheduler or callable(optimizer) -> LRScheduler
        Stepped once per epoch; "cosine" anneals to 0 over ``epochs``, "step"
        halves the rate every ``max(1, epochs // 3)`` epochs.
    constraints : sequence of Constraint
        Hard constraints (:mod:`hwreg_rs.constraints`), any combination.
    teacher : Module or callable(X) -> logits, optional
        Distil from this teacher: the loss becomes
        :class:`hwreg_rs.losses.DistillationLoss` (``temperature``, ``alpha``) mixed with ``loss``.
    temperature, alpha : distillation settings
    batch_size : int, default 32
    epochs : int, default 10
    seed : int, default 0
        Seeds the shuffling and every Dropout layer: same seed, same run.
    shuffle : bool, default True
    callbacks : sequence of Callback or callable(trainer, epoch, logs)
    early_stopping : EarlyStopping, optional
    check_constraints : bool, default True
        Check every constraint's invariant after every step.
    verbose : bool, default True
        Progress bar (tqdm when installed, else one line per epoch); False is quiet.
    blas_threads : int or None, default 1
        Threads NumPy's BLAS may use during :meth:`fit` (through
        ``threadpoolctl`` when it is installed; restored afterwards). Mini-batch
        products are too small to gain from BLAS threads, and on a busy machine
        spinning BLAS threads slow them down by orders of magnitude. ``None``
        leaves BLAS alone.

    Attributes
    ----------
    history_ : History
    optimizer_ : Optimizer
    step_ : int
        Optimizer steps taken (over all calls to :meth:`fit`).

    See Also
    --------
    fit : the one-shot form.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> X, y = hw.data.make_classification(200, n_features=4, n_classes=3, seed=0)
    >>> net = hw.nn.mlp([4, 16, 3], rng=0)
    >>> tr = hw.Trainer(net, epochs=5, lr=0.01, verbose=False,
    ...                 constraints=[hw.constraints.WeightClip(0.5), hw.constraints.GradClipNorm(1.0)]).fit(X, y)
    >>> tr.history_["accuracy"][-1] > 0.8
    True
    """

    def __init__(self, model: Module, *, loss: Any = "cross_entropy", optimizer: Any = "adam", lr: float = 1e-3,
                 momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, scheduler: Any = None,
                 constraints: Sequence[C.Constraint] = (), teacher: Any = None, temperature: float = 4.0,
                 alpha: float = 0.5, batch_size: int = 32, epochs: int = 10, seed: int = 0, shuffle: bool = True,
                 callbacks: Sequence[Any] = (), early_stopping: EarlyStopping | None = None,
                 check_constraints: bool = True, verbose: bool = True, blas_threads: int | None = 1) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.scheduler = scheduler
        self.constraints = constraints
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.shuffle = shuffle
        self.callbacks = callbacks
        self.early_stopping = early_stopping
        self.check_constraints = check_constraints
        self.verbose = verbose
        self.blas_threads = blas_threads
        self.stop_training = False

    # -- set-up ---------------------------------------------------------------
    def _build_optimizer(self) -> Optimizer:
        if isinstance(self.optimizer, Optimizer):
            return self.optimizer
        kw: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if isinstance(self.optimizer, str) and self.optimizer.lower() == "sgd":
            kw.update(momentum=self.momentum, nesterov=self.nesterov)
        elif self.weight_decay == 0.0 and isinstance(self.optimizer, str) and self.optimizer.lower() == "adamw":
            kw.pop("weight_decay")  # AdamW's own default (0.01)
        return get_optimizer(self.optimizer, self.model, **kw)

    def _build_scheduler(self, opt: Optimizer) -> LRScheduler | None:
        s = self.scheduler
        if s is None or isinstance(s, LRScheduler):
            return s
        if s == "cosine":
            return CosineAnnealingLR(opt, T_max=max(1, int(self.epochs)))
        if s == "step":
            return StepLR(opt, step_size=max(1, int(self.epochs) // 3), gamma=0.5)
        if callable(s):
            return s(opt)
        raise ValueError(f"scheduler must be None, 'cosine', 'step', an LRScheduler or a callable; got {s!r}")

    def _setup(self) -> None:
        if not isinstance(self.model, Module):
            raise TypeError(f"model must be an hwreg_rs.nn.Module; got {type(self.model).__name__}")
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.epochs, "epochs", 0)
        check_int(self.seed, "seed", 0)
        check_float(self.lr, "lr", 0.0)
        check_float(self.momentum, "momentum", 0.0)
        check_float(self.weight_decay, "weight_decay", 0.0)
        if self.blas_threads is not None:
            check_int(self.blas_threads, "blas_threads", 1, 1 << 16)
        if not hasattr(self, "optimizer_"):
            self.optimizer_ = self._build_optimizer()
            self.scheduler_ = self._build_scheduler(self.optimizer_)
            self.step_ = 0
            self.history_ = History()
        hard = get_loss(self.loss)
        self.loss_: Loss = (DistillationLoss(temperature=self.temperature, alpha=self.alpha, hard_loss=hard)
                            if self.teacher is not None else hard)
        self.eval_loss_: Loss = hard
        cons = list(self.constraints)
        for c in cons:
            if not isinstance(c, C.Constraint):
                raise TypeError(f"constraints must be Constraint objects; got {type(c).__name__}")
            c.attach(self.model, self.optimizer_)
        self.constraints_ = cons
        self._grad_hooks = [c for c in C.sort_for_gradients(cons) if type(c).on_gradients is not C.Constraint.on_gradients]
        self._penalties = [c for c in cons if type(c).penalty is not C.Constraint.penalty]
        self._projections = [c for c in C.sort_for_projection(cons) if type(c).after_step is not C.Constraint.after_step]
        self._pre = [c for c in cons if type(c).before_step is not C.Constraint.before_step]
        cbs: list[Callback] = []
        for cb in self.callbacks:
            cbs.append(cb if isinstance(cb, Callback) else _FunctionCallback(cb))
        if self.early_stopping is not None:
            cbs.append(self.early_stopping)
        self.callbacks_ = cbs
        self._rng = np.random.default_rng(self.seed)
        for i, m in enumerate(mm for mm in self.model.modules() if isinstance(mm, Dropout)):
            m.rng = np.random.default_rng([int(self.seed), 1, i])

    def _teacher_logits(self, xb: np.ndarray) -> np.ndarray:
        t = self.teacher
        if isinstance(t, Module):
            was = t.training
            t.eval()
            try:
                return t.forward(xb)
            finally:
                t.train(was)
        return np.asarray(t(xb))

    # -- swapping the model ---------------------------------------------------
    def replace_model(self, model: Module, *, kept: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Go on training ``model`` in place of :attr:`model` (e.g. a shrunk copy of it), mid-run.

        What held the old model's parameters is rebuilt for the new one:

        - the optimizer (the same object, so its scheduler keeps driving it, with
          its settings and current learning rate) gets the new model's
          parameters of the same names, in its order; each one's state
          (momentum buffer, Adam moments and step count) is carried over by
          name: cut with ``kept[name]`` (the kept indices per axis, as
          :attr:`hwreg_rs.prune.ShrinkPlan.kept` gives them), copied when the
          shape did not change, else dropped (that parameter starts afresh);
        - every constraint is attached again (GradualPruning's masks are cut
          like their weights, so what was pruned stays pruned);
        - EarlyStopping forgets its best epoch (its weights fit the old model).

        Parameters
        ----------
        model : Module
        kept : mapping of str to tuple, optional
            For every parameter that was cut, the kept indices along each axis (``None``: all).

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> X, y = hw.data.make_classification(64, n_features=4, n_classes=3, seed=0)
        >>> tr = hw.Trainer(hw.nn.mlp([4, 16, 3], rng=0), epochs=1, verbose=False).fit(X, y)
        >>> plan = hw.prune.shrink_plan(tr.model, 0.5)
        >>> tr.replace_model(plan.apply(), kept=plan.kept)
        >>> [tuple(v["exp_avg"].shape) for v in tr.optimizer_.state.values()][:2]
        [(8, 4), (8,)]
        """
        from .shrink import take_kept

        if not isinstance(model, Module):
            raise TypeError(f"model must be an hwreg_rs.nn.Module; got {type(model).__name__}")
        kept = {} if kept is None else dict(kept)
        old, self.model = self.model, model
        if not hasattr(self, "optimizer_"):
            return  # not set up yet: fit builds everything for the new model
        opt = self.optimizer_
        old_names = {id(p): n for n, p in old.named_parameters()}
        new_params = dict(model.named_parameters())
        params, state = [], {}
        for p in opt.params:
            name = old_names.get(id(p))
            q = new_params.get(name) if name is not None else p  # not the model's: left as it was
            if q is None:
                continue  # gone from the model
            st: dict[str, Any] = {}
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, np.ndarray) and v.shape == p.data.shape:
                    if name in kept:
                        v = take_kept(v, kept[name])
                    if v.shape != q.data.shape:
                        st = {}
                        break  # a state that no longer fits: this parameter starts afresh
                    v = v.copy()
                st[k] = v
            params.append(q)
            state[q] = st
        opt.params, opt.state = params, state
        for c in self.constraints_:
            if isinstance(c, C.GradualPruning) and hasattr(c, "masks_"):  # pruned weights stay pruned
                c.masks_ = {n: take_kept(m, kept[n]) if n in kept else m for n, m in c.masks_.items()}
            c.attach(model, opt)
        for cb in self.callbacks_:
            if isinstance(cb, EarlyStopping) and hasattr(cb, "best_"):
                cb.on_train_begin(self)

    # -- one step -------------------------------------------------------------
    def train_step(self, xb: np.ndarray, yb: np.ndarray) -> tuple[float, np.ndarray]:
        """One optimizer step on a batch; returns ``(loss including penalties, model output)``."""
        for c in self._pre:
            c.before_step(self.step_)
        out = self.model.forward(xb)
        if self.teacher is not None:
            loss = self.loss_.forward(out, yb, teacher_logits=self._teacher_logits(xb))  # type: ignore[call-arg]
        else:
            loss = self.loss_.forward(out, yb)
        self.model.backward(self.loss_.backward())
        for c in self._penalties:
            loss += c.penalty()
        for c in self._grad_hooks:
            c.on_gradients()
        self.optimizer_.step()
        for c in self._projections:
            c.after_step()
        if self.check_constraints:
            for c in self.constraints_:
                c.check()
        self.step_ += 1
        return loss, out

    # -- the loop -------------------------------------------------------------
    def fit(self, X: Any, y: Any, *, validation_data: tuple[Any, Any] | None = None) -> Trainer:
        """Train for ``epochs`` epochs (or until a callback stops it); returns self.

        Parameters
        ----------
        X : array_like of shape (n_samples, ...)
        y : array_like of shape (n_samples,) or (n_samples, ...)
        validation_data : (X_val, y_val), optional
            Evaluated after every epoch (``val_loss``, ``val_accuracy``).
        """
        X = _as_array(X, "X").astype(np.float32, copy=False)
        y = _as_array(y, "y")
        if len(X) != len(y):
            raise ValueError(f"X and y must have the same number of samples; got {len(X)} and {len(y)}")
        if validation_data is not None:
            Xv = _as_array(validation_data[0], "X_val").astype(np.float32, copy=False)
            yv = _as_array(validation_data[1], "y_val")
        self._setup()
        with blas_limit(self.blas_threads):
            self._fit(X, y, Xv if validation_data is not None else None, yv if validation_data is not None else None)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray | None, yv: np.ndarray | None) -> None:
        validation_data = None if Xv is None else (Xv, yv)
        self.stop_training = False
        n, bs = len(X), int(self.batch_size)
        classification = self.eval_loss_.classification
        bar = self._progress()
        for cb in self.callbacks_:
            cb.on_train_begin(self)
        self.model.train()
        self.epoch_ = -1
        try:
            for epoch in range(int(self.epochs)):
                self.epoch_ = epoch
                for cb in self.callbacks_:
                    cb.on_epoch_begin(self, epoch)
                t0 = time.perf_counter()
                order = self._rng.permutation(n) if self.shuffle else None
                tot_loss, correct, seen = 0.0, 0, 0
                for idx in _batches(n, bs, order):
                    xb, yb = X[idx], y[idx]
                    loss, out = self.train_step(xb, yb)
                    k = len(xb)
                    tot_loss += loss * k
                    seen += k
                    if classification:
                        correct += int(np.count_nonzero(out.argmax(axis=1) == yb))
                    for cb in self.callbacks_:
                        cb.on_batch_end(self, self.step_, {"loss": loss})
                logs = {"loss": tot_loss / max(seen, 1)}
                if classification:
                    logs["accuracy"] = correct / max(seen, 1)
                if validation_data is not None:
                    for k2, v in evaluate(self.model, Xv, yv, loss=self.eval_loss_).items():
                        logs["val_" + k2] = v
                    self.model.train()
                logs["lr"] = self.optimizer_.lr
                logs["time"] = time.perf_counter() - t0
                if self.scheduler_ is not None:
                    self.scheduler_.step()
                self.history_.append(logs)
                for cb in self.callbacks_:
                    cb.on_epoch_end(self, epoch, logs)
                self._report(bar, epoch, logs)
                if self.stop_training:
                    break
        finally:
            if bar is not None:
                bar.close()
        for cb in self.callbacks_:
            cb.on_train_end(self)

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """Loss (and accuracy) of the model on ``(X, y)``; see :func:`evaluate`."""
        return evaluate(self.model, X, y, loss=self.loss if not hasattr(self, "eval_loss_") else self.eval_loss_)

    def predict(self, X: Any) -> np.ndarray:
        """Model outputs in evaluation mode; see :func:`predict`."""
        return predict(self.model, X)

    # -- progress -------------------------------------------------------------
    def _progress(self) -> Any:
        if not self.verbose:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=int(self.epochs), desc="epochs", unit="epoch", leave=True)

    def _report(self, bar: Any, epoch: int, logs: dict[str, float]) -> None:
        if not self.verbose:
            return
        shown = {k: (f"{v:.4g}") for k, v in logs.items() if k != "time"}
        if bar is not None:
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
        else:
            parts = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"epoch {epoch + 1}/{self.epochs} {parts} ({logs['time']:.2f}s)", file=sys.stderr)


def fit(model: Module, X: Any, y: Any, *, validation_data: tuple[Any, Any] | None = None, **options: Any) -> History:
    """Train ``model`` on ``(X, y)`` with a :class:`Trainer` built from ``options``; returns its history.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> X, y = hw.data.make_regression(128, coef=3.0, bias=2.0, noise=0.0, seed=0)
    >>> net = hw.nn.Linear(1, 1, rng=0)
    >>> h = hw.fit(net, X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=30, verbose=False)
    >>> np.round(net.weight.data, 2), np.round(net.bias.data, 2)
    (array([[3.]], dtype=float32), array([2.], dtype=float32))
    """
    return Trainer(model, **options).fit(X, y, validation_data=validation_data).history_
