"""Automatic phases: a script without probe calls gets phases, epochs and sections from PyTorch's hooks.

Installed by the stage process (:func:`phases`) around a script or ``module:function`` workload
while ``harness run`` is live; never for the built-in workload, never in a bare run. Each hook has
one place that installs it (:meth:`AutoPhases.install`) and one that removes it
(:meth:`AutoPhases.uninstall`); none changes what the user's code computes. What they mark:

- ``forward``  the outermost call of a module with parameters (a depth counter: not every submodule;
  a loss module, having no parameters, is not a forward);
- ``loss``     from the end of a grad-enabled outermost forward until backward;
- ``backward`` ``Tensor.backward`` or ``torch.autograd.backward``;
- ``optimizer`` the optimizer's step; with ``optimizer.step(closure)``, the end of each call of
  the closure (its forward and backward keep their own phases);
- ``data``     while the DataLoader iterator's ``__next__`` waits for a batch.

A *training step* is a step of the optimizer (the first one stepped, while it lives: a second
optimizer stepped in the same iteration, a GAN's, is the same step), whatever drives the loop:
a DataLoader, tensors sliced by hand, an endless iterator. Several backwards before it (gradient
accumulation, an LBFGS closure) are one step. Where no optimizer holds the trained model's
parameters (updated by hand: ``p.data.add_(p.grad, alpha=-lr)``), each backward is a step. Steps
drive the live probe's step hooks (:meth:`LiveProbe.train_steps`: memray training windows,
traced steps, device readings): a step begins when the one before ends. The stage's first step
is known to be one only once it is done, so the first loop begins at step 1; a loop begun at a
training loader's pass begins at step 0, before the pass's first batch.

A *pass* is one iteration over a DataLoader (keyed by the loader's index sampler, which a loader
keeps for life). A pass whose batches are followed by a backward or an optimizer step trains;
one that is not is an evaluation pass, run as the live probe's section ``validate`` (``test`` in
a stage named test, or over a second evaluation loader). How a pass is told apart, batch by batch:

- a loader known from an earlier pass keeps its kind from its first batch;
- the first loader of the stage is taken for training once its first batch saw a backward or an
  optimizer step; otherwise (or when its first forward runs without grad or in eval mode) it
  evaluates from its second batch on. Its first batch is recorded with plain phases;
- a new loader after a training loader is known is taken for evaluation from its first batch,
  until a backward or optimizer step says otherwise (then it trains from its next batch).

An evaluation pass's section opens at its first forward of a model (or its second batch, if no
model ran), so that the section can be named by the model it runs: ``validate``, unless the stage
is named test, or the loader is the second evaluation loader, or the model is not the one being
trained (the tutorial's test reloads a fresh ``Net()`` from the checkpoint after training) — those
are ``test``. A test pass ends the epoch it would otherwise fall in. (A script that validates a
separate averaged copy of its model, an EMA, gets ``test`` for that pass; a script that tests
the very model it trained, after its last epoch, gets ``validate`` in that epoch: which training
pass is the last is not known when the pass begins.)

Evaluation without a loader: outside a loader's pass (or inside a training pass), forwards of one
model in one grad mode with no backward or optimizer step between them evaluate, from the second
under no_grad and from the third with grad enabled (a training step may run one monitoring
forward before its own). The evaluation is a section, named as above, that ends at the next
backward or optimizer step, at a forward of another model or in the other grad mode, or at the
training loader's next batch.

Epochs: each pass of the training loader starts one (the previous one ends then, and at the
stage's end). Without a training loader, or within one pass that never ends, training after an
evaluation starts the next: a block of steps followed by forwards without backward is an epoch
ending in its evaluation. An evaluation inside a training pass of known length (every so many
steps) ends no epoch. The first outermost module with parameters seen under grad, and the first
optimizer stepped, are watched.

A workload that calls the probe itself (``phase``, ``iterate``, ``epoch``, ``section``, ``watch``)
keeps its own marks: the first such call removes the hooks, ends what they opened, and the
automatic marks stop. A DataLoader worker forked from the stage marks nothing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from harness.probe.frameworks import Frameworks
from harness.probe.imports import AfterImport, Patches

if TYPE_CHECKING:

    from harness.probe.live import LiveProbe

# how a pass is classified so far
PENDING = 0  # the stage's first loader, first batch: not known yet
TRAIN = 1
EVAL = 2
GONE = -1  # the key of a training loader that no longer exists

_current: AutoPhases | None = None  # the installed instance, for the fork handler
_fork_handler = False


def _after_fork_in_child() -> None:
    if _current is not None:  # a forked DataLoader worker: its modules (transforms) mark nothing
        _current.child = True
        _current.quiet = True


def _living(cls: type) -> list[Any]:
    """The objects of ``cls`` (or a subclass) alive now: a walk of every object the collector
    tracks (a few hundred milliseconds in a large process).

    By ``type()``, not ``isinstance``: an object's ``__class__`` property may warn or raise.
    """
    classes: set[type] = set()
    todo = [cls]
    while todo:
        c = todo.pop()
        if c not in classes:
            classes.add(c)
            todo.extend(c.__subclasses__())
    return [o for o in gc.get_objects() if type(o) in classes]


def _has_parameters(module: Any) -> bool:
    return next(iter(module.parameters()), None) is not None


def _related(a: Any, b: Any) -> bool:
    """Whether one module is the other or contains it."""
    try:
        return any(m is b for m in a.modules()) or any(m is a for m in b.modules())
    except (AttributeError, TypeError):
        return a is b


class _Pass:
    """One iteration over a DataLoader."""

    __slots__ = ("it", "key", "state", "trained", "fetched", "section")

    def __init__(self, it: Any, key: int, state: int) -> None:
        self.it = it
        self.key = key
        self.state = state
        self.trained = False  # a backward or an optimizer step happened during this pass
        self.fetched = 0  # batches handed to the workload
        self.section: contextlib.AbstractContextManager[None] | None = None  # while evaluating


class _StandAside:
    """Stands in for the live probe as ``harness.probe``'s target while the hooks are installed.

    An explicit marking call uninstalls the hooks first, then goes to the live probe.
    """

    enabled = True

    def __init__(self, auto: AutoPhases, live: LiveProbe) -> None:
        self._auto = auto
        self._live = live

    def _explicit(self) -> LiveProbe:
        self._auto.stand_aside()
        return self._live

    def phase(self, name: str) -> None:
        self._explicit().phase(name)

    def iterate(self, loader: Any, limit: int | None = None) -> Any:
        return self._explicit().iterate(loader, limit)

    def epoch(self, number: int) -> contextlib.AbstractContextManager[None]:
        return self._explicit().epoch(number)

    def section(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._explicit().section(name)

    def watch(self, model: Any = None, optimizer: Any = None) -> None:
        self._explicit().watch(model, optimizer)

    def __getattr__(self, name: str) -> Any:  # metric, record, close: no marks, the hooks stay
        return getattr(self._live, name)


class AutoPhases:
    """PyTorch's global hooks driving a live probe; see the module's docstring."""

    def __init__(self, live: Any, stage: str) -> None:
        self.live = live
        self.stage = stage
        self.installed = False
        self.quiet = False  # inside an evaluation section, or in a forked child: mark nothing
        self.child = False
        self._mark: Callable[[str], None] = live.phase
        self._cell = getattr(live, "_cell", None)
        self._handles: list[Any] = []
        self._patches = Patches()
        self._grad_enabled: Callable[[], bool] = lambda: True  # torch.is_grad_enabled, once installed
        self._depth = 0  # nesting of module calls
        self._has_params: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._in_backward = False  # inside Tensor.backward: torch.autograd.backward is the same call
        self._pass: _Pass | None = None
        self._samplers: dict[int, weakref.ref[Any]] = {}  # loader key -> the loader's sampler
        self._kinds: dict[int, int] = {}  # loader key -> TRAIN or EVAL
        self._sections: dict[int, str] = {}  # evaluation loader key -> section name
        self._eval_loaders = 0  # evaluation loaders seen: the first validates, later ones test
        self._train_key: int | None = None  # the loader whose passes start epochs
        self._epoch = 0
        self._epoch_cm: contextlib.AbstractContextManager[None] | None = None
        self._watched_model = False
        self._model: weakref.ref[Any] | None = None  # the watched (trained) model, while it lives
        self._watched_optimizer = False
        self._proxy: _StandAside | None = None
        self._previous: Any = live  # harness.probe's target before install
        self._ended: weakref.ref[Any] | None = None  # the iterator whose pass ended by running out
        # steps: one an optimizer step (of the lead optimizer), or a backward where none exists
        self._optimizer_refs: weakref.WeakSet[Any] = weakref.WeakSet()  # the script's optimizers
        self._holds: tuple[tuple[int, int], bool] | None = None  # _has_optimizer's last answer
        self._optimizer_cls: type = object  # torch.optim.Optimizer, once installed
        self._scanned = False  # the optimizers made before install are known
        self._lead: weakref.ref[Any] | None = None  # the optimizer whose steps are the steps
        self._closures = 0  # nesting of optimizer.step(closure)'s closure calls
        self._loop: Any = None  # the live probe's StepLoop while training steps run
        self._loop_pass: _Pass | None = None  # the loader pass the loop runs in (None: no loader)
        self._per_step = 0  # batches a training step takes (gradient accumulation), once known
        # evaluation without a loader: model forwards with no backward between them
        self._run = 0  # consecutive outermost forwards of one model in one grad mode, untrained
        self._run_of: tuple[int, bool] | None = None  # (id of that model, grad enabled)
        self._block: contextlib.AbstractContextManager[None] | None = None  # its open section
        self._block_of: tuple[int, bool] | None = None  # (id of its model, grad enabled)
        self._evaluated = False  # an evaluation ended since this epoch's training began
        self._mid_pass = False  # the open block runs inside a training pass of known length
        self.inner = 0  # inside a framework loader's own fetch: the DataLoader beneath it is not seen
        self.frameworks = Frameworks(self)  # Lightning's and Accelerate's adapters

    # -- installing and removing ----------------------------------------------------------
    def install(self, fresh: bool = False) -> None:
        """Install every hook and wrapper; a second call does nothing.

        ``fresh``: torch has just been imported, so no optimizer exists yet; otherwise the living
        ones are counted (a backward is a step only where there is none).
        """
        global _current, _fork_handler
        if self.installed:
            return
        import torch
        from torch.nn.modules import module as nn_module
        from torch.optim import optimizer as optim_module
        from torch.utils.data import dataloader

        from harness import probe

        self.installed = True
        self._grad_enabled = torch.is_grad_enabled
        _current = self
        if not _fork_handler:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_handler = True
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._forward_pre),
            nn_module.register_module_forward_hook(self._forward_post, always_call=True),
            optim_module.register_optimizer_step_pre_hook(self._step_pre),
            optim_module.register_optimizer_step_post_hook(self._step_post),
        ]
        self._wrap(torch.Tensor, "backward", self._tensor_backward)
        self._wrap(torch.autograd, "backward", self._autograd_backward)
        self._wrap(optim_module.Optimizer, "__init__", self._optimizer_init)
        self._optimizer_cls = optim_module.Optimizer
        self._scanned = fresh  # torch was imported just now: no optimizer exists from before
        iter_cls = dataloader._BaseDataLoaderIter
        self._wrap(iter_cls, "__next__", self._loader_next)
        self._previous = probe._active
        self._proxy = _StandAside(self, self.live)
        probe._active = self._proxy
        self.frameworks.install()

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
        original = getattr(owner, name)
        self._patches.wrap(owner, name, make(original), original)

    def uninstall(self) -> None:
        """Remove every hook and wrapper ``install`` put in place; the probe's target is as before."""
        global _current
        if not self.installed:
            return
        from harness import probe

        self.installed = False
        self.frameworks.uninstall()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._patches.undo()
        if probe._active is self._proxy:
            probe._active = self._previous
        self._proxy = None
        if _current is self:
            _current = None

    def finish(self) -> None:
        """End of the workload: end the open pass, evaluation, loop and epoch, then uninstall."""
        try:
            self.frameworks.end()  # a Trainer still running (it raised): its section, its epoch
            self._end_pass()
            self._close_block()
            self._close_loop()
            self._end_epoch()
        finally:
            self.uninstall()

    def stand_aside(self) -> None:
        """The workload calls the probe itself: end what the hooks opened, and stop marking."""
        self.finish()

    # -- marks ----------------------------------------------------------------------------
    def _forward_pre(self, module: Any, args: Any) -> None:
        self._depth += 1
        if self._depth != 1 or self.child:
            return
        p = self._pass
        waiting = p is not None and p.state == EVAL and p.section is None
        by_loader = p is not None and p.state in (PENDING, EVAL)  # the pass says what it is
        if self.quiet and not waiting and (by_loader or self._block is None):
            return
        try:
            has = self._has_params.get(module)
            if has is None:
                has = self._has_params[module] = _has_parameters(module)
        except TypeError:  # a module class made unhashable (an __eq__ without __hash__)
            has = _has_parameters(module)
        if not has:
            return  # a loss or a transform: no forward of a model
        if waiting:
            assert p is not None
            self._enter_section(p, module)
            return
        grad = self._grad_enabled()
        if p is not None and p.state == PENDING and not p.trained and not (grad and module.training):
            self._open_eval(p, module)  # an evaluation pass that says so
            return
        if not by_loader and self._evaluating(module, grad):
            return
        if grad and not self._watched_model:
            self._watched_model = True
            with contextlib.suppress(TypeError):
                self._model = weakref.ref(module)
            self.live.watch(model=module)
        self._mark("forward")

    def _evaluating(self, module: Any, grad: bool) -> bool:
        """Whether this forward, outside a loader's evaluation pass, belongs to an evaluation.

        Forwards of one model in one grad mode with no backward or optimizer step between them
        evaluate: from the second under no_grad, the third with grad enabled (a training step
        may run a monitoring forward before its own). The evaluation is a section; a forward
        of another model or in the other grad mode ends it (training again, or a test of
        another model next), as a backward or an optimizer step does.
        """
        of = (id(module), grad)
        if self._block is not None:
            if of == self._block_of:
                return True
            self._close_block()  # training again, or another model (a test after validation)
        self._run = self._run + 1 if of == self._run_of else 1
        self._run_of = of
        if self._closures or self._run < (3 if grad else 2):
            return False
        self._open_block(module, grad)
        return True

    def _forward_post(self, module: Any, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth or self.quiet:
            return
        try:
            has = self._has_params.get(module)
        except TypeError:
            has = _has_parameters(module)
        if has and self._grad_enabled():
            self._mark("loss")

    def _trains(self) -> None:
        """A backward or an optimizer step: the running pass trains; an evaluation is over."""
        self._run, self._run_of = 0, None
        p = self._pass
        if p is not None and not p.trained:
            p.trained = True
            if p.state == EVAL:  # taken for evaluation, but it trains: from its next batch on
                self._close_section(p)
                self._kinds[p.key] = TRAIN
                p.state = PENDING
        self._close_block()
        if p is not None and p.state != TRAIN:
            return  # the pass decides the epoch at its next batch or step
        if self._epoch_cm is None or self._evaluated:
            # training after an evaluation no loader pass began: the next epoch
            self._end_epoch()
            self._new_epoch()

    def _tensor_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(*args: Any, **kwargs: Any) -> Any:
            if self.child:
                return original(*args, **kwargs)
            self._trains()
            if not self.quiet:
                self._mark("backward")
            self._in_backward = True
            try:
                out = original(*args, **kwargs)
            finally:
                self._in_backward = False
            self._backward_done()
            return out

        return backward

    def _autograd_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(*args: Any, **kwargs: Any) -> Any:
            if self._in_backward or self.child:
                return original(*args, **kwargs)
            self._trains()
            if not self.quiet:
                self._mark("backward")
            out = original(*args, **kwargs)
            self._backward_done()
            return out

        return backward

    def _backward_done(self) -> None:
        """A backward returned: where no optimizer holds the model's parameters, a step (updated
        by hand); otherwise the optimizer's step is (gradient accumulation: several backwards)."""
        if not self._closures and not self._has_optimizer():
            self._step_done()

    def _has_optimizer(self) -> bool:
        """Whether an optimizer has stepped, or one holds a parameter of the watched model (any,
        while none is watched). Known per model and count of optimizers, so checked once."""
        if self._lead is not None:
            return True
        model = self._model() if self._model is not None else None
        key = (id(model), len(self._optimizer_refs))
        if self._holds is None or self._holds[0] != key:
            held = self._held(model)
            if not held and not self._scanned:  # torch ran before the hooks: made before?
                self._scanned = True
                self._optimizer_refs.update(_living(self._optimizer_cls))
                held = self._held(model)
            self._holds = ((id(model), len(self._optimizer_refs)), held)
        return self._holds[1]

    def _held(self, model: Any) -> bool:
        if model is None:
            return len(self._optimizer_refs) > 0
        ids = {id(p) for p in model.parameters()}
        return any(id(p) in ids for opt in list(self._optimizer_refs)
                   for group in opt.param_groups for p in group["params"])

    def _optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(opt: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(opt, *args, **kwargs)
            if not self.child:
                with contextlib.suppress(TypeError):
                    self._optimizer_refs.add(opt)
            return out

        return __init__

    def _step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        if self.child:
            return None
        self._trains()
        if not self._watched_optimizer:
            self._watched_optimizer = True
            self.live.watch(optimizer=optimizer)
        lead = self._lead() if self._lead is not None else None
        if lead is None:
            with contextlib.suppress(TypeError):
                self._lead = weakref.ref(optimizer)
        # args: (the optimizer, closure?); forward and backward run inside a closure, each call
        # of it ends in "optimizer"
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 else None)
        if callable(closure):
            wrapped = self._closure(closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        if not self.quiet:
            self._mark("optimizer")
        return None

    def _closure(self, closure: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._closures += 1
            try:
                return closure(*args, **kwargs)
            finally:
                self._closures -= 1
                if not self.quiet and not self.child:
                    self._mark("optimizer")

        return call

    def _step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.child:
            return
        self._trains()
        lead = self._lead() if self._lead is not None else None
        if lead is None or lead is optimizer:  # a second optimizer (a GAN's) is the same step
            self._step_done()

    # -- training steps -------------------------------------------------------------------
    def _step_done(self) -> None:
        """A training step is done: the next begins. The first in a loop starts it."""
        if self.child:
            return
        if self._loop is not None:
            self._loop.end()
            self._loop.begin()
            return
        p = self._pass
        if p is not None and p.state == PENDING:
            self._begin_training(p)
        if self._epoch_cm is None:
            self._new_epoch()
        train = p if p is not None and p.state == TRAIN else None
        if train is not None and not self._per_step:
            self._per_step = max(1, train.fetched)  # the batches its first step took
        self._start_loop(1, train)  # the step just done ran unseen

    def _start_loop(self, start: int, p: _Pass | None) -> None:
        total = -1
        if p is not None and self._per_step:
            with contextlib.suppress(TypeError):
                total = len(p.it) // self._per_step
        self._loop = self.live.train_steps(start, total)
        self._loop_pass = p
        self._loop.begin()

    def _close_loop(self) -> None:
        loop, self._loop, self._loop_pass = self._loop, None, None
        if loop is not None:
            loop.abandon()  # begun at the last step's end, never a step itself
            loop.close()

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._evaluated = False
        self._epoch_cm = self.live.epoch(self._epoch)
        self._epoch_cm.__enter__()

    # -- DataLoader passes ----------------------------------------------------------------
    def _loader_next(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def __next__(it: Any) -> Any:
            if self.child or self.inner:
                return original(it)
            if self.frameworks.driver is not None:  # a framework's loop says what the pass is
                if not self.quiet:
                    self._mark("data")
                return original(it)
            return self.fetch(it, original)

        return __next__

    def fetch(self, it: Any, original: Callable[[Any], Any]) -> Any:
        """The next batch of iterator ``it`` (fetched with ``original(it)``), read as a pass.

        ``it`` is a DataLoader iterator, or anything with its ``_index_sampler`` (a key that
        lives as long as the loader), ``_num_yielded`` and ``len()`` (:mod:`harness.probe.frameworks`).
        """
        p = self._pass
        if p is None and it._num_yielded and self._ended is not None and self._ended() is it:
            return original(it)  # asked again after it ran out: no new pass
        if p is None or p.it is not it or (it._num_yielded == 0 and p.fetched > 0):
            p = self._start_pass(it)
        elif p.state == PENDING and p.fetched > 0:
            if p.trained:
                self._begin_training(p)
            else:
                self._open_eval(p)
        if p.state == EVAL and p.section is None and p.fetched > 0:
            self._enter_section(p, None)  # a second batch and still no model ran: name it now
        if p.state == TRAIN:
            self._close_block()  # the training loader's next batch: an evaluation between is over
        if p.state != EVAL:
            self._mark("data")
        try:
            batch = original(it)
        except StopIteration:
            self._ran_out(it)
            raise
        p.fetched += 1
        if p.section is not None:  # the section counts its batches; its capture may end here
            self.live.section_step(p.fetched)
        return batch

    def _ran_out(self, it: Any) -> None:
        self._end_pass()
        self._ended = weakref.ref(it)

    def _start_pass(self, it: Any) -> _Pass:
        self._end_pass()
        # Before the first batch of the first pass (its workers running): the composition's
        # start, before any training step — which this pass may turn out to be.
        self.live.composition_start()
        key = self._key(it._index_sampler)
        kind = self._kinds.get(key)
        if kind is None and self._train_key is not None:
            kind = EVAL  # a new loader once training is known: evaluation until it trains
        p = self._pass = _Pass(it, key, PENDING)
        if kind == TRAIN:
            self._begin_training(p)
            if self._loop is None:
                self._start_loop(0, p)
        elif kind == EVAL:
            self._open_eval(p)
        return p

    def _key(self, sampler: Any) -> int:
        """The key of the loader that owns ``sampler`` (a loader keeps its own for life).

        Held weakly: the hooks keep no dataset alive, and a key goes when its sampler does, so
        that a new loader never inherits a dead one's id.
        """
        key = id(sampler)
        if key not in self._samplers:
            def forget(_: weakref.ref[Any], key: int = key) -> None:
                self._forget(key)

            self._samplers[key] = weakref.ref(sampler, forget)
        return key

    def _forget(self, key: int) -> None:
        self._samplers.pop(key, None)
        self._kinds.pop(key, None)
        self._sections.pop(key, None)
        if self._train_key == key:
            self._train_key = GONE  # training is still known: later loaders start as evaluation

    def _begin_training(self, p: _Pass) -> None:
        """The pass trains; a pass of the training loader starts the next epoch."""
        self._kinds[p.key] = TRAIN
        if self._train_key is None:
            self._train_key = p.key
        if p.key == self._train_key or self._epoch_cm is None:
            self._close_block()
            self._end_epoch()
            self._new_epoch()
        p.state = TRAIN

    def _open_eval(self, p: _Pass, module: Any = None) -> None:
        """The pass evaluates: mark nothing from now on; its section opens at its first model."""
        self._close_loop()
        self._close_block()
        self._kinds[p.key] = EVAL
        p.state = EVAL
        self.quiet = True
        if self._cell is not None:
            self._cell.step = p.fetched
        if module is not None:
            self._enter_section(p, module)

    def _section_name(self, module: Any, first: str) -> str:
        """``validate``, or ``test``: in a test stage, for a model that is not the one trained."""
        trained = self._model() if self._model is not None else None
        # another model, not a part or a wrapper of the trained one (DDP's `.module` validates)
        other_model = module is not None and trained is not None and not _related(module, trained)
        # a watched model that is gone was replaced too (`net = Net()` dropped the trained one)
        gone = self._model is not None and trained is None
        return "test" if self.stage == "test" or other_model or gone else first

    def _enter_section(self, p: _Pass, module: Any) -> None:
        """Open the evaluation pass's section, named by its loader and the model it runs."""
        name = self._sections.get(p.key)
        if name is None:
            name = self._section_name(module, "test" if self._eval_loaders else "validate")
            self._eval_loaders += 1
            self._sections[p.key] = name
        if name == "test":
            self._end_epoch()  # a test pass belongs to no epoch
        section = self.live.section(name)
        section.__enter__()
        p.section = section

    def _close_section(self, p: _Pass) -> None:
        section, p.section = p.section, None
        self.quiet = self.child
        if section is not None:
            section.__exit__(None, None, None)
            if self._train_key is None and self._epoch_cm is not None:
                self._evaluated = True  # training by no loader: its epoch ends with this pass

    # -- evaluation without a loader ------------------------------------------------------
    def _open_block(self, module: Any, grad: bool) -> None:
        """Forwards without backward, outside a loader's pass: an evaluation, as a section.

        It ends the epoch, unless it runs in the middle of a training loader's pass of known
        length (an evaluation every so many steps: the pass's end ends the epoch).
        """
        p = self._pass
        self._mid_pass = False
        if p is not None and p.state == TRAIN:
            with contextlib.suppress(TypeError):
                self._mid_pass = p.fetched < len(p.it)
        if not self._mid_pass:
            self._close_loop()
        name = self._section_name(module, "validate")
        if name == "test" and not self._mid_pass:
            self._end_epoch()  # a test pass belongs to no epoch
        self._block_of = (id(module), grad)
        self._block = self.live.section(name)
        self._block.__enter__()
        self.quiet = True

    def _close_block(self) -> None:
        block, self._block = self._block, None
        if block is None:
            return
        self.quiet = self.child
        block.__exit__(None, None, None)
        if self._epoch_cm is not None and not self._mid_pass:
            self._evaluated = True  # the epoch ends with its evaluation

    def _end_pass(self) -> None:
        p, self._pass = self._pass, None
        if p is None:
            return
        if self._loop is not None and self._loop_pass is p:
            self._close_loop()
        self._close_section(p)
        if p.state == PENDING and p.fetched:  # a pass of one batch: it trained or it did not
            self._kinds[p.key] = TRAIN if p.trained else EVAL

    def _end_epoch(self) -> None:
        self._close_loop()
        cm, self._epoch_cm = self._epoch_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    # -- a framework's loop (harness.probe.frameworks) ----------------------------------------
    def end_generic(self) -> None:
        """A framework takes over the loop: end the pass, evaluation and epoch the hooks opened."""
        self._end_pass()
        self._close_block()
        self._end_epoch()

    def begin_epoch(self, number: int) -> None:
        """The framework's epoch ``number`` begins (the previous one ends)."""
        self._end_epoch()
        self._epoch = number - 1
        self._new_epoch()

    def end_epoch(self) -> None:
        self._end_epoch()

    def begin_steps(self, start: int, total: int) -> None:
        """The framework's training steps (re)start at ``start`` of ``total`` (-1: unknown); each
        optimizer step ends one, as in any loop."""
        self._close_loop()
        self._loop = self.live.train_steps(start, total)
        self._loop.begin()

    def end_steps(self) -> None:
        self._close_loop()

    @property
    def running_steps(self) -> bool:
        return self._loop is not None

    @property
    def watched_model(self) -> bool:
        return self._watched_model

    def watch_model(self, model: Any) -> None:
        """Watch ``model`` as the trained one (a framework knows it before its first forward)."""
        self._watched_model = True
        with contextlib.suppress(TypeError):
            self._model = weakref.ref(model)
        self.live.watch(model=model)


@contextlib.contextmanager
def phases(stage: str, enabled: bool = True) -> Iterator[AutoPhases | None]:
    """Automatic phases around a workload, when ``enabled`` and the live probe is on.

    The hooks go in when torch is imported (now, if it is already), so a workload without torch
    never imports it.
    """
    from harness import probe

    live = probe._active
    if not enabled or not live.enabled:
        yield None
        return
    auto = AutoPhases(live, stage)
    watch = AfterImport("torch", lambda _torch: auto.install(fresh=True))
    if "torch" in sys.modules:
        auto.install()
    else:
        watch.add()
    try:
        yield auto
    finally:
        watch.remove()
        auto.finish()
