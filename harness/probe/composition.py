"""What a process's RSS is made of: the accounted composition (:mod:`harness.records.composition`).

Read only at a few moments of a stage (its start, each epoch snapshot, a few near the peak, its
end), never per step: :func:`read_smaps` parses ``/proc/<pid>/smaps`` in full (about a millisecond
per thousand mappings).

From ``smaps`` alone, for any process (:func:`from_outside`), every mapping's Rss goes to one part:

- a file mapping: ``file_torch`` (under torch's package directory, or a ``libtorch*``),
  ``file_cuda`` (``libcud*``, ``libcublas*``, ``libnccl*``... and anything under an ``nvidia/``
  package or ``/dev/nvidia*``), ``file_python`` (any other file mapped executable somewhere, or
  named ``*.so*``: the interpreter, extension modules, libc), ``file_data`` (any other regular
  file: ``np.memmap``, a mapped data set). A library's ``.bss`` (the anonymous mapping right
  after its last file mapping) is the library's. Files under the stage directory (the probe's
  cell, memray's output) and memray's own library are ``instrument``.
- ``shared_memory``: ``/dev/shm/*``, ``/memfd:*``, ``/SYSV*``, any ``(deleted)`` file.
- ``stacks``: ``[stack]``, and a thread's stack: an anonymous ``rw-p`` mapping right after a
  one-page ``---p`` guard.
- the rest of the anonymous memory (``[heap]`` included) is ``unexplained`` from outside.

Inside the process (:func:`inside`), that anonymous rest is split further: CPU tensors' resident
storage bytes by category (each storage once; a tensor in shared memory or a mapped file stays in
that part), Python objects (pymalloc's arenas, from ``sys._debugmallocstats``), glibc malloc's
bytes in use beyond the tensors (``native_heap``) and the free bytes it holds resident
(``malloc_free``, from ``mallinfo2`` capped by the arenas' resident pages). What remains is
``unexplained``: the parts always add up to the process's RSS (the sum of its mappings' Rss).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records.composition import CudaComposition, Moment, Parts, ProcessComposition, When
from harness.records.cuda_stats import parse_memory_stats

PAGE = os.sysconf("SC_PAGE_SIZE")
KiB = 1024
# glibc's thread arenas: HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX, 64 MiB on 64-bit, each
# mapped at an address aligned to it (malloc/arena.c).
ARENA_HEAP_MAX = 64 * 1024 * 1024

_CUDA_LIB = re.compile(r"^lib(cud|cublas|cufft|curand|cusparse|cusolver|nccl|nvrtc|nvJitLink|"
                       r"nvToolsExt|cupti|nvidia-|nvperf|cufile|nvshmem)")
_SO = re.compile(r"\.so(\.|$)")


@dataclass
class Vma:
    """One mapping of ``/proc/<pid>/smaps``, with the fields the account uses (bytes)."""

    start: int
    end: int
    perms: str
    path: str
    rss: int = 0
    pss: int = 0
    private: int = 0  # Private_Clean + Private_Dirty: what only this process maps (USS)

    @property
    def anonymous(self) -> bool:
        return not self.path or self.path == "[heap]"


def read_smaps(pid: int | str = "self") -> list[Vma]:
    """The mappings of ``pid`` in address order; [] if the process is gone or unreadable."""
    vmas: list[Vma] = []
    cur: Vma | None = None
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    for line in text.splitlines():
        # A field line starts with its capitalised name ("Rss:"); a mapping's with its start
        # address, in lower-case hex.
        if "A" <= line[:1] <= "Z":
            if cur is None:
                continue
            key, _, rest = line.partition(":")
            if key == "Rss":
                cur.rss = int(rest.split()[0]) * KiB
            elif key == "Pss":
                cur.pss = int(rest.split()[0]) * KiB
            elif key in ("Private_Clean", "Private_Dirty"):
                cur.private += int(rest.split()[0]) * KiB
            continue
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or "-" not in parts[0]:
            continue
        lo, _, hi = parts[0].partition("-")
        cur = Vma(int(lo, 16), int(hi, 16), parts[1], parts[5].strip() if len(parts) > 5 else "")
        vmas.append(cur)
    return vmas


@functools.cache
def _torch_dir() -> str:
    spec = sys.modules.get("torch")
    file = getattr(spec, "__file__", None)
    return os.path.dirname(file) + os.sep if file else "\0"


@dataclass
class FileSplit:
    """Rss by part from the mappings alone; ``anonymous`` the anonymous rest (not yet split)."""

    parts: dict[str, int]
    anonymous: list[Vma]
    rss: int
    pss: int
    uss: int


def _file_part(path: str, code: set[str], own: Sequence[str]) -> str:
    name = path.rsplit("/", 1)[-1]
    if any(path.startswith(o) for o in own) or name.startswith("_memray"):
        return "instrument"
    if path.startswith(_torch_dir()) or name.startswith("libtorch"):
        return "file_torch"
    if _CUDA_LIB.match(name) or "/nvidia/" in path or path.startswith("/dev/nvidia"):
        return "file_cuda"
    if path in code or _SO.search(name):
        return "file_python"
    return "file_data"


@functools.cache
def bss_size(path: str) -> int:
    """Bytes of the anonymous mapping the loader makes for a shared object's ``.bss`` (its
    writable PT_LOAD segment's memory size beyond its file size, in whole pages); 0 if the file
    is no 64-bit little-endian ELF or cannot be read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return 0
            phoff = int.from_bytes(head[0x20:0x28], "little")
            phentsize = int.from_bytes(head[0x36:0x38], "little")
            phnum = int.from_bytes(head[0x38:0x3A], "little")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return 0
    total = 0
    for i in range(phnum):
        ph = table[i * phentsize:(i + 1) * phentsize]
        if len(ph) < 56 or int.from_bytes(ph[0:4], "little") != 1:  # PT_LOAD
            continue
        vaddr = int.from_bytes(ph[0x10:0x18], "little")
        filesz = int.from_bytes(ph[0x20:0x28], "little")
        memsz = int.from_bytes(ph[0x28:0x30], "little")
        if memsz > filesz:
            total += _page_up(vaddr + memsz) - _page_up(vaddr + filesz)
    return total


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def split_mappings(vmas: Sequence[Vma], own: Sequence[str] = ()) -> FileSplit:
    """Every mapping's Rss to its part (see the module's docstring); ``own``: path prefixes that
    are the instrument's (the stage directory)."""
    parts: dict[str, int] = {}
    anonymous: list[Vma] = []
    code = {v.path for v in vmas if "x" in v.perms and v.path.startswith("/")}
    prev: Vma | None = None
    prev_part = ""
    for v in vmas:
        path = v.path
        if path.startswith(("/dev/shm/", "/memfd:", "/SYSV")) or path.endswith("(deleted)"):
            part = "shared_memory"
        elif path == "[stack]":
            part = "stacks"
        elif path.startswith("["):  # [heap], [vdso], [vvar], [vsyscall]
            part = "" if path == "[heap]" else "file_python"
        elif path:
            part = _file_part(path, code, own)
        elif (prev is not None and prev.end == v.start and prev.perms.startswith("---")
              and not prev.path and prev.end - prev.start == PAGE and v.perms.startswith("rw")):
            part = "stacks"  # a thread's stack above its guard page
        elif (prev is not None and prev.end == v.start and prev.path.startswith("/")
              and prev_part not in ("", "file_data", "shared_memory")
              and (bss := bss_size(prev.path)) > 0):
            # A library's .bss: the anonymous mapping right after its file mappings, as long as
            # its ELF header says; the kernel may have merged anonymous memory mapped after it
            # into the same mapping, which stays anonymous (its Rss split in proportion).
            size = v.end - v.start
            if bss >= size:
                part = prev_part
            else:
                mine = v.rss * bss // size
                parts[prev_part] = parts.get(prev_part, 0) + mine
                anonymous.append(Vma(v.start + bss, v.end, v.perms, v.path, v.rss - mine,
                                     v.pss - v.pss * bss // size, v.private - v.private * bss // size))
                part = "-"
        else:
            part = ""
        if part == "-":
            pass
        elif part:
            parts[part] = parts.get(part, 0) + v.rss
        else:
            anonymous.append(v)
        prev, prev_part = v, part
    return FileSplit(parts, anonymous, sum(v.rss for v in vmas), sum(v.pss for v in vmas),
                     sum(v.private for v in vmas))


def from_outside(pid: int, role: str, own: Sequence[str] = ()) -> ProcessComposition | None:
    """A process read from its ``smaps`` alone (a DataLoader worker); None if it is gone."""
    t0 = time.perf_counter()
    vmas = read_smaps(pid)
    if not vmas:
        return None
    split = split_mappings(vmas, own)
    parts = dict(split.parts)
    parts["unexplained"] = split.rss - sum(parts.values())
    return ProcessComposition(pid=pid, role=role, source="outside", rss=split.rss, pss=split.pss,
                              uss=split.uss, parts=Parts(**parts),
                              took_s=round(time.perf_counter() - t0, 6))


# -- inside the process --------------------------------------------------------------------------

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@dataclass(frozen=True)
class Malloc:
    """glibc malloc's counters (``mallinfo2``), bytes."""

    in_use: int  # uordblks: allocated in the arenas
    mmapped: int  # hblkhd: allocated in chunks of their own (above the mmap threshold)
    free: int  # fordblks: free in the arenas (the top chunk included)
    # the main arena's bytes from the system (``malloc_info``'s heap 0), None where not told
    main_arena: int | None = None


@functools.cache
def _libc() -> Any:
    """The C library this process runs: its own global symbols (``dlopen(NULL)``), not
    ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a child process (the sampler saw
    it as one of the stage's processes)."""
    return ctypes.CDLL(None, use_errno=True)


def mallinfo() -> Malloc | None:
    """glibc's ``mallinfo2()``; None on a libc without it (musl, glibc < 2.33)."""
    try:
        fn = _libc().mallinfo2
    except AttributeError:
        return None
    fn.restype = _Mallinfo2
    m = fn()
    return Malloc(in_use=int(m.uordblks), mmapped=int(m.hblkhd),
                  free=int(m.fordblks), main_arena=main_arena_bytes())


_MAIN_ARENA = re.compile(r'<heap nr="0">.*?<system type="current" size="(\d+)"/>', re.S)


def main_arena_bytes() -> int | None:
    """The bytes glibc's main arena holds from the system (its ``system_mem``: ``brk`` and,
    once ``brk`` cannot grow, anonymous mappings), from ``malloc_info``'s first heap; None where
    the C library has no ``malloc_info`` or says nothing parsable."""
    try:
        fn = _libc().malloc_info
    except AttributeError:
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_int
    text = _written_text(lambda stream: fn(0, stream))
    found = _MAIN_ARENA.search(text) if text is not None else None
    return int(found.group(1)) if found else None


_STAT = re.compile(r"^(#?[^=]+?)\s*=\s*([\d,]+)\s*$", re.M)


def pymalloc_stats() -> dict[str, int]:
    """``sys._debugmallocstats()``'s totals (``arenas * bytes/arena``, ``bytes in allocated
    blocks``, ...) by their text, bytes; {} where Python has no pymalloc.

    The text is written by ``_PyObject_DebugMallocStats(FILE *)`` into a stream of its own, so
    neither fd 2 nor the C ``stderr`` is touched: pointing fd 2 elsewhere for the call raced with
    any other thread writing there, and once read 0 in a long test process. Where the C function
    is not exported, fd 2 is pointed at a temporary file for ``sys._debugmallocstats``.
    """
    fn = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)
    text = None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
        text = _written_text(fn)
    if text is None:
        text = _debugmallocstats_through_fd2()
    if text is None:
        return {}
    out: dict[str, int] = {}
    for key, value in _STAT.findall(text):
        out[key.strip()] = int(value.replace(",", ""))
    return out


def _written_text(write: Callable[[int], object]) -> str | None:
    """The text ``write`` writes to the C stream (``FILE *``) it is called with: a temporary
    file's, flushed and closed after the call; None where the C library has no ``fdopen`` or it
    fails."""
    try:
        libc = _libc()
        fdopen, fclose = libc.fdopen, libc.fclose
    except AttributeError:
        return None
    fdopen.argtypes, fdopen.restype = [ctypes.c_int, ctypes.c_char_p], ctypes.c_void_p
    fclose.argtypes, fclose.restype = [ctypes.c_void_p], ctypes.c_int
    with tempfile.TemporaryFile() as tmp:
        dup = os.dup(tmp.fileno())
        stream = fdopen(dup, b"w")
        if not stream:
            os.close(dup)
            return None
        try:
            write(stream)
        finally:
            fclose(stream)  # flushes the text and closes ``dup``
        tmp.seek(0)
        return tmp.read().decode("utf-8", errors="replace")


def _debugmallocstats_through_fd2() -> str | None:
    """``sys._debugmallocstats()``'s text, with fd 2 pointed at a temporary file for the call;
    None where Python has no pymalloc."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return None
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            debug()
            _libc().fflush(None)  # a C stderr some library made buffered
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode("utf-8", errors="replace")


def python_objects(stats: Mapping[str, int]) -> tuple[int, int]:
    """(bytes of pymalloc's arenas in use by objects and their pools, bytes in its unused pools)
    from :func:`pymalloc_stats`. An arena is mapped whole but only touched pool by pool."""
    arenas = next((v for k, v in stats.items() if "arenas *" in k and "bytes/arena" in k), 0)
    unused = next((v for k, v in stats.items() if "unused pools *" in k), 0)
    return max(arenas - unused, 0), unused


def _is_arena_heap(v: Vma, nxt: Vma | None) -> bool:
    """A glibc thread arena's heap: anonymous, aligned to HEAP_MAX, at most HEAP_MAX long with
    its reserved, inaccessible rest."""
    if v.path or v.start % ARENA_HEAP_MAX or not v.perms.startswith("rw"):
        return False
    size = v.end - v.start
    if size == ARENA_HEAP_MAX:
        return True
    return (nxt is not None and nxt.start == v.end and not nxt.path and nxt.perms.startswith("---")
            and nxt.end - v.start == ARENA_HEAP_MAX)


def arena_resident(anonymous: Sequence[Vma], all_vmas: Sequence[Vma],
                   main_arena: int | None = None) -> int:
    """Resident bytes of malloc's arenas: ``[heap]`` and the thread arenas' heaps, plus the main
    arena's bytes beyond ``[heap]``.

    The main arena grows by ``brk`` while it can; once something is mapped just above ``[heap]``
    (a long-running process maps many libraries and buffers) glibc extends it with plain anonymous
    mappings instead, which nothing marks. Those bytes (``main_arena``, its ``system_mem``, less
    ``[heap]``'s size) are counted as resident: an upper bound, as the count is a cap on the free
    bytes malloc holds. All the arenas' bytes together (mallinfo2's ``arena``) cannot stand in for
    ``main_arena``: a thread heap trimmed by ``madvise`` stays mapped beyond its arena's bytes and
    hid as much of the extension."""
    following = {v.start: v for v in all_vmas}
    resident = heap = 0
    for v in anonymous:
        if v.path == "[heap]":
            resident += v.rss
            heap += v.end - v.start
        elif _is_arena_heap(v, following.get(v.end)):
            resident += v.rss
    return resident + max((main_arena or 0) - heap, 0)


class _Residency:
    """Which pages of the process are resident (``mincore``), asked range by range."""

    def __init__(self) -> None:
        libc = _libc()
        self._mincore = libc.mincore
        self._mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
        self._mincore.restype = ctypes.c_int

    def bytes(self, start: int, length: int) -> int:
        """Resident bytes of ``[start, start + length)``, counting partial pages by their part."""
        if length <= 0:
            return 0
        lo = start - start % PAGE
        hi = start + length
        npages = -(-(hi - lo) // PAGE)
        vec = ctypes.create_string_buffer(npages)
        if self._mincore(lo, npages * PAGE, vec) != 0:
            return length  # cannot tell: count it all
        raw = vec.raw
        resident = sum(1 for b in raw if b & 1)
        if resident == npages:
            return length
        total = 0
        for i, b in enumerate(raw):
            if b & 1:
                page = lo + i * PAGE
                total += min(page + PAGE, hi) - max(page, start)
        return total


@dataclass
class Storages:
    """CPU tensor storages found by a census, each once: address -> (category, bytes)."""

    by_address: dict[int, tuple[str, int]] = field(default_factory=dict)

    def add(self, category: str, tensor: Any) -> None:
        """Count ``tensor``'s storage under ``category`` unless counted; a parameter no one
        named (a script's model before the automatic phases watch it) is a parameter still."""
        if tensor.device.type != "cpu" or tensor.is_meta:
            return
        if category == "other" and isinstance(tensor, _parameter_type()):
            category = "parameters"
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a wrapper with no storage of its own
            return
        address, nbytes = storage.data_ptr(), storage.nbytes()
        if address and nbytes and address not in self.by_address:
            self.by_address[address] = (category, nbytes)


@functools.cache
def _parameter_type() -> type:
    import torch

    return torch.nn.Parameter


def cpu_storages(model: Any, optimizer: Any) -> Storages:
    """The census of :mod:`harness.probe.tensors`, as storages (when no snapshot took one)."""
    from harness.probe import tensors

    found = Storages()
    tensors.census(model, optimizer, storages=found)
    return found


_TENSOR_PART = {"parameters": "tensor_parameters", "gradients": "tensor_gradients",
                "optimizer_state": "tensor_optimizer_state"}


def tensor_parts(storages: Storages, anonymous: Sequence[Vma]) -> tuple[dict[str, int], int]:
    """(resident bytes by tensor part, allocated bytes) of the storages held in anonymous memory
    (a storage in shared memory or a mapped file is counted there already)."""
    starts = [v.start for v in anonymous]
    import bisect

    residency = _Residency()
    parts: dict[str, int] = {}
    allocated = 0
    for address, (category, nbytes) in storages.by_address.items():
        i = bisect.bisect_right(starts, address) - 1
        if i < 0 or not anonymous[i].start <= address < anonymous[i].end:
            continue
        allocated += nbytes
        part = _TENSOR_PART.get(category, "tensor_other")
        parts[part] = parts.get(part, 0) + residency.bytes(address, nbytes)
    return parts, allocated


def inside(role: str, storages: Storages, own: Sequence[str] = ()) -> ProcessComposition:
    """This process, split by itself: the mappings, then its anonymous memory (the module's doc)."""
    t0 = time.perf_counter()
    vmas = read_smaps()
    split = split_mappings(vmas, own)
    parts = dict(split.parts)
    tensors, tensor_alloc = tensor_parts(storages, split.anonymous)
    parts.update(tensors)
    py, _ = python_objects(pymalloc_stats())
    parts["python_objects"] = py
    m = mallinfo()
    if m is not None:
        # Tensors are malloc'd (c10's alloc_cpu: posix_memalign), in an arena or a chunk of
        # their own: what malloc holds in use beyond them is the libraries' native heap.
        parts["native_heap"] = max(m.in_use + m.mmapped - tensor_alloc, 0)
        # Free bytes count where they are resident: the arenas' resident pages not in use.
        arenas = arena_resident(split.anonymous, vmas, m.main_arena)
        parts["malloc_free"] = max(min(m.free, arenas - m.in_use), 0)
    parts["unexplained"] = split.rss - sum(parts.values())
    return ProcessComposition(pid=os.getpid(), role=role, source="inside", rss=split.rss,
                              pss=split.pss, uss=split.uss, parts=Parts(**parts),
                              took_s=round(time.perf_counter() - t0, 6))


# -- CUDA ----------------------------------------------------------------------------------------

def largest_free_block(segments: Iterable[Mapping[str, Any]]) -> int:
    """The largest free (``inactive``) block of the caching allocator's segments
    (``torch.cuda.memory_snapshot()``, or a ``_dump_snapshot`` pickle's ``segments``)."""
    return max((int(b["size"]) for seg in segments for b in seg.get("blocks", ())
                if b.get("state") == "inactive"), default=0)


def cuda_composition(stats: Mapping[str, Any], segments: Iterable[Mapping[str, Any]] | None = None,
                     device_used: int | None = None) -> CudaComposition:
    """The device at one moment from ``torch.cuda.memory_stats()``, the allocator's segments (for
    the largest free block) and the device's used bytes (``total - free`` of ``mem_get_info``):
    the context is what is used beyond what the caching allocator reserved."""
    parsed = parse_memory_stats(stats)
    return CudaComposition(
        allocated=parsed.allocated, reserved=parsed.reserved,
        largest_free_block=None if segments is None else largest_free_block(segments),
        context=None if device_used is None else max(device_used - parsed.reserved, 0))


def read_cuda(device: str) -> CudaComposition | None:
    """The device's composition now; None off CUDA."""
    from harness.probe.cuda import usable_device

    dev = usable_device(device)
    if dev is None:
        return None
    import torch

    free, total = torch.cuda.mem_get_info(dev)
    return cuda_composition(torch.cuda.memory_stats(dev), _segments(), total - free)


def _segments() -> list[dict[str, Any]] | None:
    """The caching allocator's segments, without the allocation history's traces where this
    torch can leave them out (a history window may be recording: its traces are large); None
    if the allocator cannot say."""
    import inspect

    import torch

    try:
        if "include_traces" in inspect.signature(torch.cuda.memory_snapshot).parameters:
            return list(torch.cuda.memory_snapshot(include_traces=False))  # type: ignore[no-untyped-call]
    except RuntimeError:
        pass
    try:
        return list(torch.cuda.memory._snapshot()["segments"])
    except (RuntimeError, KeyError, TypeError):
        return None


def own_paths(stage_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The path prefixes whose mappings are the instrument's: the stage directory."""
    return (str(Path(stage_dir).resolve()) + os.sep,)


# -- moments -------------------------------------------------------------------------------------

# A ``peak`` moment is taken when the main process's RSS passes the stage's previous peak (the
# highest RSS seen at a step boundary since the ``start`` moment) by this margin: max(32 MiB, 5 %
# of that peak), at most PEAK_MOMENTS a stage.
PEAK_MARGIN_BYTES = 32 * 1024 * 1024
PEAK_MARGIN_FRACTION = 0.05
PEAK_MOMENTS = 6


def peak_margin(peak: int) -> int:
    """How far RSS must pass ``peak`` (bytes) for a ``peak`` moment."""
    return max(PEAK_MARGIN_BYTES, int(peak * PEAK_MARGIN_FRACTION))


class RssWatch:
    """The main process's RSS read cheaply at step boundaries (``/proc/self/statm``: one pread
    of an open file, a few microseconds) and the peak rule: :meth:`passed` is True when RSS passed
    the previous peak by :func:`peak_margin`, at most ``limit`` times."""

    def __init__(self, limit: int = PEAK_MOMENTS) -> None:
        self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self.left = limit
        self.peak = 0  # the highest RSS seen at a step boundary
        self.next = 2**62  # RSS that asks for the next peak moment (none before the start)

    def rss(self) -> int:
        return int(os.pread(self._fd, 64, 0).split()[1]) * PAGE

    def arm(self, rss: int) -> None:
        """Start watching from ``rss`` (the ``start`` moment's)."""
        self.peak = max(self.peak, rss)
        self.next = self.peak + peak_margin(self.peak) if self.left > 0 else 2**62

    def passed(self) -> bool:
        """One read: True when a ``peak`` moment is due (the caller takes it, then ``arm``s)."""
        rss = self.rss()
        if rss > self.peak:
            self.peak = rss
            if rss >= self.next:
                self.left -= 1
                return True
        return False

    def close(self) -> None:
        os.close(self._fd)


def take(when: When, *, stage: str, stage_dir: str | os.PathLike[str], storages: Storages,
         device: str = "cpu", epoch: int | None = None, step: int | None = None,
         phase: str | None = None, rank: int | None = None) -> Moment:
    """One moment: this process inside, its descendants from outside (named as the sampler names
    them), and on CUDA the device."""
    from harness.probe import processes

    t0 = time.perf_counter()
    own = own_paths(stage_dir)
    me = os.getpid()
    found = [inside(processes.MAIN, storages, own)]
    for pid, _, role in processes.roles_of(me):
        if pid != me:
            comp = from_outside(pid, role, own)
            if comp is not None:
                found.append(comp)
    return Moment(when=when, stage=stage, t=time.time(), epoch=epoch, step=step, phase=phase,
                  rank=rank, processes=found, cuda=read_cuda(device),
                  took_s=round(time.perf_counter() - t0, 6))


def append(path: Path, moment: Moment) -> None:
    """Append ``moment`` as one line of composition.jsonl, in one write (a reader never sees
    half a line but of a killed process's last)."""
    line = (moment.model_dump_json() + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
