"""Training frameworks run unchanged under the automatic phases: PyTorch Lightning and Accelerate.

:mod:`harness.probe.auto` reads a loop from PyTorch's own hooks. Two popular frameworks drive the
loop in ways those hooks read wrong, so each gets a small adapter here, installed and removed with
the automatic phases (:meth:`Frameworks.install`, :meth:`Frameworks.uninstall`) once its module is
imported; neither changes what the user's code computes.

- **PyTorch Lightning** (``lightning.pytorch`` or ``pytorch_lightning``): every ``Trainer`` built
  gets one more callback, :class:`_LightningDriver`'s, which says from Lightning's public hooks
  what the loader passes cannot: the sanity check's validation batches before training (the
  section ``sanity_check``, not epoch 0's validation), Lightning's own epochs and their steps
  (each ends at an optimizer step, as in any loop: with ``accumulate_grad_batches`` a step holds
  several batches), and the ``validate`` and ``test`` sections. While a Trainer runs, the loader
  hooks only mark ``data``; forward, loss, backward and optimizer come from PyTorch's hooks
  (Lightning's ``training_step`` runs inside ``optimizer.step(closure)``: forward and backward).
- **Accelerate** (``accelerate.data_loader``): a prepared loader (``DataLoaderShard`` and the
  others built on ``DataLoaderAdapter``) fetches one batch ahead of the one it yields, so the
  inner DataLoader's fetches run a batch ahead of the loop: the first pass would be judged
  before its first batch was used, and the last batch trained after the pass had ended. Here the
  pass is read from the batches the prepared loader yields (:class:`_LookAhead`), the inner
  fetches going through unseen. ``accelerator.backward`` is ``Tensor.backward`` and an
  accumulation step's skipped ``optimizer.step`` never reaches the optimizer: PyTorch's hooks see
  both as they are.

Where neither is imported, nothing here is installed and the generic mechanism stands alone.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.probe.auto import AutoPhases
from harness.probe.imports import AfterImport, Patches

SANITY_CHECK = "sanity_check"
# The module that defines Lightning's Trainer, in each of its two distributions.
LIGHTNING_TRAINERS = ("lightning.pytorch.trainer.trainer", "pytorch_lightning.trainer.trainer")
ACCELERATE_LOADERS = "accelerate.data_loader"


class Frameworks:
    """The framework adapters of one :class:`AutoPhases`: each patched when its module is imported
    (at once if it is already), all undone by :meth:`uninstall`."""

    def __init__(self, auto: AutoPhases) -> None:
        self.auto = auto
        self.driver: _LightningDriver | None = None  # the Trainer running now, if any
        self._finders: list[AfterImport] = []
        self._patches = Patches()

    def install(self) -> None:
        for name in LIGHTNING_TRAINERS:
            self._when_imported(name, self._patch_lightning)
        self._when_imported(ACCELERATE_LOADERS, self._patch_accelerate)

    def end(self) -> None:
        """End what a running framework loop opened (its section, then its epoch)."""
        if self.driver is not None:
            self.driver.end()

    def uninstall(self) -> None:
        for finder in self._finders:
            finder.remove()
        self._finders = []
        self.end()
        self._patches.undo()

    def _when_imported(self, name: str, then: Callable[[Any], None]) -> None:
        module = sys.modules.get(name)
        if module is not None:
            then(module)
            return
        finder = AfterImport(name, then)
        finder.add()
        self._finders.append(finder)

    def _wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self._patches.wrap(owner, name, wrapper, owner.__dict__[name])

    # -- Lightning ------------------------------------------------------------------------
    def _patch_lightning(self, module: Any) -> None:
        trainer_cls = getattr(module, "Trainer", None)
        if trainer_cls is None or not self.auto.installed:
            return
        package = module.__name__.rsplit(".trainer.", 1)[0]  # lightning.pytorch, pytorch_lightning
        callback_cls = _callback_class(importlib.import_module(f"{package}.callbacks").Callback)
        original = trainer_cls.__init__
        frameworks = self

        def __init__(trainer: Any, *args: Any, **kwargs: Any) -> None:
            original(trainer, *args, **kwargs)
            if frameworks.auto.installed and not frameworks.auto.child:
                callback = callback_cls()
                callback.driver = _LightningDriver(frameworks)
                trainer.callbacks.append(callback)

        self._wrap(trainer_cls, "__init__", __init__)

    # -- Accelerate -----------------------------------------------------------------------
    def _patch_accelerate(self, module: Any) -> None:
        if not self.auto.installed:
            return
        for cls in _look_ahead_loaders(module):
            self._wrap(cls, "__iter__", self._look_ahead_iter(cls.__dict__["__iter__"]))

    def _look_ahead_iter(self, original: Callable[[Any], Iterator[Any]]) -> Callable[[Any], Any]:
        auto = self.auto

        def __iter__(loader: Any) -> Any:
            batches = original(loader)
            if not auto.installed or auto.child or self.driver is not None:
                return batches
            return _LookAhead(auto, loader, batches)

        return __iter__


def _look_ahead_loaders(module: Any) -> list[type]:
    """Accelerate's prepared loaders that define their own ``__iter__`` (each looks one batch ahead)."""
    base = getattr(module, "DataLoaderAdapter", None)
    found = []
    for name in ("DataLoaderShard", "DataLoaderDispatcher", "SkipDataLoader"):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and (base is None or issubclass(cls, base)) and "__iter__" in cls.__dict__:
            found.append(cls)
    return found


class _LookAhead:
    """The batches a prepared Accelerate loader yields, as one pass over a DataLoader for the
    automatic phases: the loader object is the pass's key (``_index_sampler``), each batch it
    yields is one fetch, and the inner DataLoader's own fetches are not seen (``auto.inner``)."""

    def __init__(self, auto: AutoPhases, loader: Any, batches: Iterator[Any]) -> None:
        self._auto = auto
        self._loader = loader
        self._batches = batches
        self._index_sampler = loader
        self._num_yielded = 0

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> _LookAhead:
        return self

    def __next__(self) -> Any:
        if self._auto.installed and not self._auto.child:
            return self._auto.fetch(self, _LookAhead.pull)
        return self.pull()

    def pull(self) -> Any:
        """The prepared loader's next batch, its inner fetches unseen by the hooks."""
        auto = self._auto
        auto.inner += 1
        try:
            batch = next(self._batches)
        finally:
            auto.inner -= 1
        self._num_yielded += 1
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)


class _LightningDriver:
    """What one Trainer's callback says, turned into the automatic phases' epochs, steps and
    sections. A step ends at each optimizer step, as in any loop (:mod:`harness.probe.auto`)."""

    def __init__(self, frameworks: Frameworks) -> None:
        self._fw = frameworks
        self._auto = frameworks.auto
        self._live = frameworks.auto.live
        self._section: contextlib.AbstractContextManager[None] | None = None
        self._in_epoch = False
        self._total = -1  # steps in the running epoch (-1: unknown)

    # -- the Trainer's stages (fit, validate, test, predict) ------------------------------
    def begin(self, model: Any) -> None:
        """A Trainer stage starts: the generic passes stand aside while it runs."""
        if self._fw.driver is not None and self._fw.driver is not self:
            self._fw.driver.end()
        self._auto.end_generic()
        self._fw.driver = self
        if not self._auto.watched_model:
            self._auto.watch_model(model)

    def end(self) -> None:
        """The Trainer stage is over (or failed): end what it opened; the generic passes return."""
        self.close_section()
        self.end_epoch()
        if self._fw.driver is self:
            self._fw.driver = None

    # -- epochs and steps ------------------------------------------------------------------
    def start_epoch(self, number: int, batches: float, accumulate: int = 1) -> None:
        """Epoch ``number`` of ``batches`` training batches begins, ``accumulate`` batches a
        step; so do its steps, before its first batch is fetched."""
        self.close_section()
        self._total = math.ceil(batches / max(accumulate, 1)) if math.isfinite(batches) else -1
        self._auto.begin_epoch(number)
        self._in_epoch = True
        self._auto.begin_steps(0, self._total)

    def train_batch(self, step: int) -> None:
        """A training batch of step ``step`` begins: after a validation pass inside the epoch,
        the steps resume here."""
        if self._in_epoch and self._section is None and not self._auto.running_steps:
            self._auto.begin_steps(step, self._total)

    def end_epoch(self) -> None:
        if self._in_epoch:
            self._in_epoch = False
            self._auto.end_epoch()

    # -- sections --------------------------------------------------------------------------
    def open_section(self, name: str) -> None:
        self._auto.end_steps()  # validation inside an epoch: its steps resume after it
        self.close_section()
        if name == "test":
            self.end_epoch()  # a test pass belongs to no epoch
        self._auto.quiet = True
        section = self._live.section(name)
        section.__enter__()
        self._section = section

    def section_batch(self, done: int) -> None:
        if self._section is not None:
            self._live.section_step(done)

    def close_section(self) -> None:
        section, self._section = self._section, None
        if section is not None:
            self._auto.quiet = self._auto.child
            section.__exit__(None, None, None)


def _callback_class(base: type) -> type:
    """A Callback of the imported Lightning (``base``) that tells its ``driver`` (a
    :class:`_LightningDriver`, set once it is made)."""

    def setup(self: Any, trainer: Any, pl_module: Any, stage: str) -> None:
        self.driver.begin(pl_module)

    def teardown(self: Any, trainer: Any, pl_module: Any, stage: str) -> None:
        self.driver.end()

    def on_exception(self: Any, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.driver.end()

    def on_sanity_check_start(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.open_section(SANITY_CHECK)

    def on_sanity_check_end(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.close_section()

    def on_train_epoch_start(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.start_epoch(trainer.current_epoch + 1, trainer.num_training_batches,
                                trainer.accumulate_grad_batches)

    def on_train_batch_start(self: Any, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self.driver.train_batch(batch_idx // trainer.accumulate_grad_batches)

    def on_train_epoch_end(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.end_epoch()

    def on_validation_start(self: Any, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:  # the sanity check's section is open already
            self.driver.open_section("validate")

    def on_validation_end(self: Any, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.driver.close_section()

    def on_validation_batch_end(self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.driver.section_batch(batch_idx + 1)

    def on_test_start(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.open_section("test")

    def on_test_end(self: Any, trainer: Any, pl_module: Any) -> None:
        self.driver.close_section()

    def on_test_batch_end(self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.driver.section_batch(batch_idx + 1)

    methods = {name: fn for name, fn in dict(locals()).items() if name != "base"}
    cls: type = type("HarnessPhases", (base,), {
        **methods, "__module__": __name__, "__doc__": "The harness's phases from Lightning's hooks."})
    return cls

