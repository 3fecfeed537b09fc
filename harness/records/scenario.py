"""Scenario files: YAML parsed once, safely, into frozen typed objects.

Every problem becomes one :class:`ScenarioError` line naming the file, the key and what was
expected. From here on code receives these objects, never the raw dict.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.errors import ScenarioError
from harness.records import yaml_safe
from harness.records.vocab import PHASES
from harness.sizes import parse_size

BUILTIN_WORKLOAD = "model.stages:run"
BUILTIN_STAGES = ("train", "test")


@dataclass(frozen=True)
class ReadWhen:
    """A field's metadata: the field is read only while its section's ``key`` is one of
    ``values`` (``data.size`` only by the synthetic source); elsewhere it has no effect."""

    key: str
    values: tuple[str, ...]


def unread_keys(section: BaseModel) -> list[str]:
    """The keys of ``section`` that have no effect with its other values (:class:`ReadWhen`)."""
    return [name for name, info in type(section).model_fields.items()
            for m in info.metadata
            if isinstance(m, ReadWhen) and getattr(section, m.key) not in m.values]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    """Where the images come from and how they are split and loaded."""

    source: Literal["cifar10", "folder", "synthetic"] = "cifar10"
    # cifar10: torchvision's download/cache directory; folder: where an archive is unpacked.
    root: Annotated[str, ReadWhen("source", ("cifar10", "folder"))] = "data"
    # folder: a directory or a .tar.gz laid out train/<class>/*, test/<class>/*.
    path: Annotated[str | None, ReadWhen("source", ("folder",))] = None
    download: Annotated[bool, ReadWhen("source", ("cifar10",))] = False
    # synthetic: how many images in all (5/6 "train", 1/6 "test", as CIFAR-10's 50k/10k).
    size: Annotated[int, Field(ge=12), ReadWhen("source", ("synthetic",))] = 600
    # fractions of the merged train+test set: train, validation, test.
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    num_workers: int = Field(2, ge=0, le=64)

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v):
            raise ValueError("each split fraction must be > 0")
        if not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must add up to 1, they add up to {sum(v):g}")
        return v


class TrainConfig(_Section):
    """The tutorial's hyperparameters."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    log_every: int = Field(2000, ge=1)  # mini-batches between loss lines
    max_steps: int | None = Field(None, ge=1)  # cap on training steps per epoch (None: all)
    # torch's intra-op (and inter-op) threads in each stage (None: torch's default, one per core);
    # on a small machine they compete with the DataLoader workers for the same cores
    threads: int | None = Field(None, ge=1, le=1024)


class WorkloadConfig(_Section):
    """What runs in each stage: our tutorial workload, a script path, or ``pkg.module:function``."""

    entry: str = BUILTIN_WORKLOAD
    args: tuple[str, ...] = ()
    # a script or function without probe calls gets phases and epochs from PyTorch's own hooks
    auto_phases: bool = True

    @property
    def builtin(self) -> bool:
        return self.entry == BUILTIN_WORKLOAD


# memray keys each mode reads (harness/probe/steps.py): "off" only the mode itself
_CAPTURING = ReadWhen("mode", ("windows", "full"))
_WINDOWS = ReadWhen("mode", ("windows",))


class MemrayConfig(_Section):
    """Allocation-site capture. ``windows`` tracks bounded windows; ``full`` tracks everything."""

    mode: Literal["off", "windows", "full"] = "windows"
    # Native (C/C++) frames in the captures. Off by default: the report's flamegraphs and
    # allocation sites show Python frames, and unwinding each allocation's native stack was about
    # half of a window's cost (bench/RESULTS.md); on, the .bin files serve `memray flamegraph
    # --native` and build_report(native_flamegraphs=True).
    native_traces: Annotated[bool, _CAPTURING] = False
    # DataLoader workers forked while a capture is open are tracked until it closes
    follow_fork: Annotated[bool, _CAPTURING] = True
    # each DataLoader worker (fork, spawn or forkserver) tracks the batches of the training window
    # it fetches, train_start.. of the window's epochs, with a tracker of its own
    # (harness.probe.workers): persistent and spawned workers too, which follow_fork never reaches
    workers: Annotated[bool, _WINDOWS] = True
    # first tracked training step of each epoch (0: from the loader's start, so its forked
    # workers are tracked too, for the window's steps)
    train_start: Annotated[int, Field(ge=0), _WINDOWS] = 100
    train_steps: Annotated[int, Field(ge=0), _WINDOWS] = 150  # tracked training steps per epoch (0: none)
    # 1-based epochs with a training window. None: where one answers a question — epochs 1 and
    # 2, each power of two (4, 8, 16, ...), and the epoch after one whose end found the main
    # process's RSS more than regrow_mb above its RSS at the end of the last epoch with a
    # window; "every": each epoch. A 300-step window cost ~7 MB and ~2 s, so one every epoch of a
    # long run would write ~440 MB an hour.
    epochs: Annotated[tuple[int, ...] | Literal["every"] | None, _WINDOWS] = None
    # MiB of epoch-end RSS growth that asks for a window in the next epoch (0: never). Measured:
    # epoch-end RSS of the JPEG baseline moves <= 1.4 MiB an epoch, 2.1 MiB over 7 epochs.
    regrow_mb: Annotated[float, Field(ge=0), _WINDOWS] = 32.0
    validation: Annotated[bool, _WINDOWS] = True  # track validation passes (their workers included)
    # epochs whose validation pass is tracked (None: all); the passes run the same code, and
    # each costs about as much as it tracks, so one is the default
    validation_epochs: Annotated[tuple[int, ...] | None, _WINDOWS] = (1,)
    test: Annotated[bool, _WINDOWS] = True  # track the test stage
    # batches of a tracked validation or test pass (its workers stop with it); 0 or None: the
    # whole pass. A pass repeats one small loop: 50 of the baseline's 1,500 batches find the same
    # top three sites in every process and a peak heap within 3 % of the whole pass's; 25 missed a
    # third of the test's main peak (bench/eval_window.py). A tracked batch costs ~3.7 ms.
    eval_batches: Annotated[int | None, Field(ge=0), _WINDOWS] = 50

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_form(cls, v: Any) -> Any:
        if v is None or v == "every" or isinstance(v, tuple):
            return v
        if isinstance(v, list):  # read back from JSON (probe.json)
            return tuple(v)
        raise ValueError(f"expected a list of epochs, 'every' or null, got {v!r}")


class SamplingConfig(_Section):
    """psutil sampling of the stage's process tree, in the harness process."""

    rss_hz: float = Field(25.0, ge=1, le=1000)  # RSS and its parts, /proc/<pid>/status (~20 us a process)
    # USS, PSS, swap of each process via smaps_rollup: the kernel walks every page table, 10-30 ms
    # a call for an 800 MB process, so this is the sampler's main cost (one process a tick, in turn)
    full_hz: float = Field(1.0, gt=0, le=50)
    # the sampler thread runs as SCHED_BATCH: it keeps its fair share of the CPU, but its wake-ups
    # (rss_hz of them a second) never preempt a training thread on its core; they wait for the
    # scheduler's tick or an idle core (false: an ordinary thread, as before)
    background: bool = True


class TensorsConfig(_Section):
    """Tensor accounting in the workload process (needs the probe API)."""

    trace_steps: int = Field(10, ge=0)  # first steps of each epoch traced per phase
    trace_every: int = Field(1000, ge=0)  # and every Nth step after (0: never)
    snapshots: bool = True  # epoch-boundary snapshots with a tensor map
    composition: bool = True  # composition.jsonl: what RSS is made of at start, epochs, peaks, end


class CudaConfig(_Section):
    """Device memory, when ``device`` is CUDA (ignored on the CPU)."""

    sample_every: int = Field(25, ge=1)  # training steps between device-memory readings
    history_epoch: int = Field(1, ge=0)  # epoch with an allocator-history window (0: none)
    history_start: int = Field(100, ge=0)  # first step of that window
    history_steps: int = Field(50, ge=1)  # steps recorded (~90 alloc/free events a step)
    history_max_mb: float = Field(64, gt=0)  # the pickle is trimmed to this size


class DistributedConfig(_Section):
    """Run each stage under torchrun: the stage process is the agent, each rank runs the workload."""

    nproc_per_node: int = Field(1, ge=1)  # ranks on this node
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)  # this node's place; each node runs `harness run` with its own
    # host:port of the c10d rendezvous; None: 127.0.0.1 on a free port (one node only)
    rdzv_endpoint: str | None = None
    backend: Literal["gloo", "nccl"] = "gloo"  # nccl needs CUDA
    strategy: Literal["ddp", "fsdp"] = "ddp"  # how the built-in workload spreads the model
    rdzv_timeout_s: float = Field(60.0, gt=0)  # for every node to join (and to reach the endpoint)

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_form(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}", v):
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        if v is not None and not 0 < int(v.rpartition(":")[2]) < 65536:
            raise ValueError(f"port out of range in {v!r}")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("several nodes need rdzv_endpoint: the HOST:PORT every node can reach")
        return self


class LimitsConfig(_Section):
    """Limits the harness enforces by stopping the whole process tree."""

    max_rss_mb: float | None = Field(None, gt=0)  # RSS of the stage's whole tree, MiB
    timeout_s: float | None = Field(None, gt=0)  # wall time of one stage
    # A size ("2 GiB"): each stage's process tree runs in a memory cgroup of its own limited to it
    # (the harness stays outside); the kernel's OOM killer acts on the stage alone.
    memory: int | None = Field(None, gt=0)

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return _size_or_none(v)


def _size_or_none(v: Any) -> Any:
    # Sizes as people write them ("900 MB", "1.5 GiB"); the model holds bytes.
    return None if v is None else parse_size(v)


class PhaseBudget(_Section):
    """Limits on one phase's figures (bytes): the largest over every stage and epoch."""

    peak_footprint: int | None = None  # the tree's footprint, shared pages counted once
    peak_main_rss: int | None = None  # RSS of the stage's main process
    peak_tree_rss: int | None = None  # RSS summed over the stage's process tree
    peak_workers_uss: int | None = None  # USS summed over the DataLoader workers
    peak_live_tensor_bytes: int | None = None  # live tensor bytes on the traced steps
    peak_cuda_allocated: int | None = None  # CUDA: the phase's own peak allocated
    peak_cuda_reserved: int | None = None  # CUDA: the phase's own peak reserved

    @field_validator("*", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        return _size_or_none(v)


class BudgetsConfig(_Section):
    """What ``harness check`` holds a run to (bytes); unset keys are not checked."""

    peak_footprint: int | None = None  # the tree's footprint, shared pages counted once
    peak_main_rss: int | None = None
    peak_tree_rss: int | None = None  # RSS summed over the tree's processes
    peak_workers_uss: int | None = None
    peak_heap: int | None = None  # memray's high-water mark, largest over the captures
    peak_live_tensor_bytes: int | None = None
    peak_cuda_allocated: int | None = None  # CUDA: torch.cuda allocated, highest phase peak
    peak_cuda_reserved: int | None = None  # CUDA: reserved by the caching allocator
    growth_per_epoch: int | None = None  # main RSS growth between epoch-end snapshots, mean
    # after a stage's stage_end (interpreter and library teardown); peak_main_rss and
    # peak_tree_rss are the peaks while the workload ran, up to stage_end
    peak_main_rss_teardown: int | None = None
    peak_tree_rss_teardown: int | None = None
    phases: dict[str, PhaseBudget] = Field(default_factory=dict)
    # distributed runs: one rank's own limits, by global rank (the keys above: the largest over ranks)
    ranks: dict[int, BudgetsConfig] = Field(default_factory=dict)

    @field_validator("*", mode="before")
    @classmethod
    def _sizes(cls, v: Any, info: ValidationInfo) -> Any:
        return v if info.field_name in ("phases", "ranks") else _size_or_none(v)

    @field_validator("ranks")
    @classmethod
    def _ranks_flat(cls, v: dict[int, BudgetsConfig]) -> dict[int, BudgetsConfig]:
        for rank, budgets in v.items():
            if rank < 0:
                raise ValueError(f"rank {rank}: expected a global rank, 0 or more")
            if budgets.ranks:
                raise ValueError(f"rank {rank}: a rank's budgets cannot have ranks of their own")
        return v

    @field_validator("phases")
    @classmethod
    def _known_phases(cls, v: dict[str, PhaseBudget]) -> dict[str, PhaseBudget]:
        for name in v:
            if name not in PHASES and name != "none":
                raise ValueError(
                    f"unknown phase {name!r}; expected one of {', '.join(PHASES)} or none"
                )
        return v


class Scenario(_Section):
    """A resolved scenario: every default filled in, data and script paths made absolute.

    It does not remember the file it came from: code that names the file in an error takes it
    as a separate ``source`` argument (:func:`from_dict`, :func:`check_data`, ``run_scenario``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seed: int = 0
    device: str = "cpu"
    stages: tuple[str, ...] = BUILTIN_STAGES
    workload: WorkloadConfig = WorkloadConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    memray: MemrayConfig = MemrayConfig()
    sampling: SamplingConfig = SamplingConfig()
    tensors: TensorsConfig = TensorsConfig()
    cuda: CudaConfig = CudaConfig()
    limits: LimitsConfig = LimitsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    distributed: DistributedConfig | None = None  # None: one process, no torchrun

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError("expected 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("stages")
    @classmethod
    def _stages_form(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("expected at least one stage")
        if len(set(v)) != len(v):
            raise ValueError("stages must be unique")
        for s in v:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", s):
                raise ValueError(f"stage name {s!r} may hold only letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _builtin_stages(self) -> Scenario:
        if self.workload.builtin:
            unknown = [s for s in self.stages if s not in BUILTIN_STAGES]
            if unknown:
                raise ValueError(
                    f"stages: the built-in workload has stages 'train' and 'test', not {unknown[0]!r}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _fail(source: str, key: str, message: str) -> ScenarioError:
    return ScenarioError(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=1`` -> (["train", "epochs"], 1); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
        raise _fail("--set", text, "expected KEY=VALUE with a dotted key, e.g. train.epochs=1")
    try:  # the same reader as files: no repeated keys, aliases capped, integers printable
        value = yaml_safe.load_text(raw, prefix=key) if raw else ""
    except yaml_safe.YamlInputError as exc:
        raise ScenarioError(exc.format("--set", lines=False)) from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``KEY=VALUE`` override applied."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise _fail("--set", ".".join(path), f"{part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def from_dict(raw: Any, source: str, base: Path | None = None) -> Scenario:
    """Validate a raw mapping. Relative data paths resolve against ``base``."""
    if not isinstance(raw, dict):
        raise _fail(source, "", "expected a mapping of scenario keys at the top level")
    raw = copy.deepcopy(raw)
    try:
        scenario = _validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _format_loc(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg}, got {err['input']!r}"
        msg = msg.removeprefix("Value error, ")
        raise _fail(source, key, msg) from None
    if base is not None:
        data = scenario.data.model_copy(
            update={
                "root": _resolve_path(scenario.data.root, base),
                "path": _resolve_path(scenario.data.path, base),
            }
        )
        workload = scenario.workload
        entry = workload.entry
        if entry.endswith(".py"):
            workload = workload.model_copy(update={"entry": _resolve_path(entry, base)})
        scenario = scenario.model_copy(update={"data": data, "workload": workload})
    return scenario


def _validate(raw: dict[str, Any]) -> Scenario:
    # Strict types (no "4" for 4, no "yes" for true) but YAML sequences become tuples.
    def tuplify(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: tuplify(v) for k, v in node.items()}
        if isinstance(node, list):
            return tuple(tuplify(v) for v in node)
        return node

    return Scenario.model_validate(tuplify(raw))


def check_data(scenario: Scenario, source: str) -> None:
    """Fail early, with the key to fix, when the data a scenario names is not there."""
    data = scenario.data
    if not scenario.workload.builtin:
        return
    if data.source == "folder":
        if data.path is None:
            raise _fail(source, "data.path", "the folder source needs a directory or .tar.gz archive")
        if not Path(data.path).exists():
            raise _fail(source, "data.path", f"no such directory or archive: {data.path}")
    elif data.source == "cifar10" and not data.download:
        marker = Path(data.root) / "cifar-10-batches-py"
        if not marker.is_dir():
            raise _fail(
                source,
                "data.root",
                f"no CIFAR-10 in {data.root} (expected {marker.name}/) and data.download is false",
            )


def load(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file; check that its data is reachable.

    The file is read by :mod:`harness.records.yaml_safe` (UTF-8, no repeated keys, aliases and
    size capped), so a hostile file is one line and a bounded load like any other mistake.
    """
    path = Path(path)
    source = str(path)
    raw = _read_yaml(path, "no such scenario file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(source, "", "expected a mapping of scenario keys at the top level")
    base = path.resolve().parent
    file_scenario = from_dict(raw, source, base)  # errors in the file name the file
    if overrides:
        merged = apply_overrides(file_scenario.to_dict(), overrides)
        scenario = from_dict(merged, f"{source} (with --set)", Path.cwd())
    else:
        scenario = file_scenario
    check_data(scenario, source)
    return scenario


def read_resolved(path: str | Path) -> Scenario:
    """A run's ``scenario.yaml`` (as :func:`dump` wrote it) read back: the same YAML reader and the
    same model, every default from the model, paths as they were resolved; its data is not
    checked (a finished run's may be gone). ScenarioError naming the file, the key and why."""
    return from_dict(_read_yaml(Path(path), "no such file"), str(path))


def _read_yaml(path: Path, missing: str) -> Any:
    """``path`` through the one YAML reader; a file that is missing (said as ``missing``),
    unreadable or refused by the reader is a ScenarioError naming it."""
    source = str(path)
    try:
        return yaml_safe.load_file(path)
    except FileNotFoundError:
        raise _fail(source, "", missing) from None
    except OSError as exc:
        raise _fail(source, "", f"cannot read: {exc.strerror}") from None
    except yaml_safe.YamlInputError as exc:
        raise ScenarioError(exc.format(source)) from None


def dump(scenario: Scenario) -> str:
    """The resolved scenario as YAML, as saved with every run."""
    return yaml.safe_dump(scenario.to_dict(), sort_keys=False)
