"""Seeded random directions ``z`` that are regenerated, never stored.

``z ~ N(0, I)`` (MeZO's choice, ``directions="gaussian"``) or symmetric ±1 entries
(``"rademacher"``): both have E[z zᵀ] = I, so ``(∇L·z) z`` is unbiased for ∇L either way.

MeZO (Malladi et al., NeurIPS 2023, Algorithm 1) keeps memory at inference level by
never materialising the direction ``z``: it re-draws ``z`` from the step's seed every
time it needs it ("resample z" in lines 3–4 and 7 of ``PerturbParameters`` and
``Update``). This module is that trick, organised for speed:

* Every parameter is cut into *streams* of :data:`CHUNK` elements; stream ``c`` of
  parameter ``i`` under direction seed ``s`` is drawn from its own generator seeded with
  ``stream_seed(s, i, c)``. The same ``(s, i, c)`` always gives the same numbers, in any
  order and on any thread, so the passes over the streams run in parallel (torch ops
  release the GIL) and each stream's ``z`` lives in a small per-worker buffer.
* A *pass* applies one in-place kernel to every stream:
  ``kernel(view, zgen, item)`` gets the flat slice of the weights and ``zgen(seed, slot)``,
  which draws the stream's ``z`` for ``seed`` into buffer ``slot``.
* On CPU, ``group`` consecutive streams of a parameter may form one *span* (``Perturber(...,
  group=16)``; the default :data:`GROUP` is 1) that a pass
  treats as a unit: each stream's generator draws its own numbers into its slice of the
  span's buffer, and the kernel runs once on the whole span. The values are those of the
  streams one by one (bit for bit), but a pass makes ``GROUP``× fewer Python-level op
  calls, which on a 2-core CPU cost more than the arithmetic: a ±1 pass over MiniLM's
  22.7 M weights took 118–125 ms in streams of 32 Ki (two threads) and 37–43 ms in spans of
  512 Ki (one thread; benchmarks/README.md, "MeZO's passes in spans").
* Buffers are allocated in the calling thread at the start of a pass, so
  :func:`zoedu.memory.measure` sees them (they are the only scratch memory: one span per
  worker and slot).
* *Row streams* (:meth:`Perturber.plan` with ``rows``): for a parameter whose rows are
  read independently — an input embedding, of which a batch looks up a few hundred rows
  out of tens of thousands — a step may perturb and update only the rows the batch uses.
  Those rows are cut into streams of about :data:`CHUNK` elements; a pass gathers a
  stream's rows into a scratch copy, runs the same kernel on it and scatters it back, so
  every kernel works unchanged and the extra memory is one chunk per worker.

The direction for a parameter stored in ``bfloat16``/``float16`` is drawn in that dtype,
so the perturbation is exactly what is added to the weights.

*Masks* (``Perturber(..., masks=)``, Sparse MeZO): a parameter may carry a fixed 0/1 mask,
stored as packed bits (one bit per weight, 1/32 of an fp32 parameter's memory; built by
:func:`magnitude_mask`). Its streams' directions are then ``m ⊙ z``: every pass perturbs and
updates only the weights where ``m = 1``, and ``z`` is drawn exactly as without the mask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

#: Elements per random stream on CPU: 32 Ki, torch's intra-op grain size, so each stream's
#: draw runs on the worker thread that issued it (no nested OpenMP teams, which spin and
#: oversubscribe a busy machine); a span's lookup and kernel (:data:`GROUP` streams) are
#: large enough for torch's own threads, which is why ±1 passes run in one worker.
CHUNK = 1 << 15
#: Streams per span on CPU by default (see the module docstring). 1: spans are opt-in
#: (``Perturber(..., group=16)``: a MeZO step on MiniLM 0.77× as long on 2 idle cores). Two CI
#: runs with them on by default failed the browser test on a notebook's first live figure; the
#: same failure later came back with them off, so they were not its cause, but spans by default
#: have not yet passed CI (benchmarks/README.md, "Spans are opt-in").
GROUP = 1
#: The distributions a direction's entries may be drawn from.
DIRECTIONS = ("gaussian", "rademacher")
#: Precisions narrow enough that θ ± εz may overflow for a large ε (checked before a step).
LOW_PRECISION = (torch.float16, torch.bfloat16)
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit seed that mixes ``values`` (splitmix64); distinct inputs give unrelated seeds."""
    x = 0x243F6A8885A308D3
    for v in values:
        x = _splitmix64(x ^ (int(v) & _MASK64))
    return x & ((1 << 63) - 1)


def stream_seed(direction_seed: int, param_index: int, chunk_index: int) -> int:
    """Seed of the random stream for chunk ``chunk_index`` of parameter ``param_index``."""
    return mix_seed(direction_seed, param_index, chunk_index)


def direction_seed(seed: int, step: int, j: int = 0) -> int:
    """Seed of direction ``j`` at step ``step`` for an optimizer created with ``seed``."""
    return mix_seed(seed, step, j)


def block_for_step(seed: int, step: int, n_blocks: int) -> int:
    """Block-coordinate MeZO's block at step ``step``: uniform over ``n_blocks``, a function of
    the seed and the step alone (so a resumed run and :func:`~zoedu.optim.replay` find it again)."""
    return int(mix_seed(seed, step, -7) % n_blocks)


def block_streams(streams: Sequence[Stream], block_of: Sequence[int], seed: int,
                  step: int) -> tuple[list[Stream], float]:
    """Block-coordinate MeZO's plan for step ``step`` (``block_of``: each parameter's block): the
    streams of that step's block and the factor B on the rate — the one rule of
    :meth:`MeZO.step <zoedu.optim.MeZO.step>` and :func:`~zoedu.optim.replay`."""
    n_blocks = max(block_of) + 1
    block = block_for_step(seed, step, n_blocks)
    return [s for s in streams if block_of[s.param_index] == block], float(n_blocks)


@dataclass(frozen=True, eq=False)
class Stream:
    """One slice of one parameter: ``flat[start:stop]`` (or the whole tensor if not contiguous),
    or, for a row stream, the rows ``rows`` of the parameter (``start``/``stop`` then count
    elements of the gathered copy). A span (``chunks`` > 1) holds the consecutive streams
    ``chunk_index … chunk_index + chunks − 1`` of ``chunk`` elements each (the last may be
    shorter)."""

    param_index: int
    chunk_index: int
    param: torch.Tensor
    start: int
    stop: int
    contiguous: bool
    rows: torch.Tensor | None = None
    chunks: int = 1
    chunk: int = 0

    @property
    def numel(self) -> int:
        return self.stop - self.start

    def view(self) -> torch.Tensor:
        """The weights of this stream: a tensor that aliases the parameter, or for a row
        stream a flat copy of its rows (written back by :meth:`write_back`)."""
        data = self.param.detach()
        if self.rows is not None:
            return data.index_select(0, self.rows).view(-1)
        if self.contiguous:
            return data.view(-1)[self.start:self.stop]
        return data

    def write_back(self, v: torch.Tensor) -> None:
        """Scatter a row stream's (modified) copy back into the parameter; no-op otherwise."""
        if self.rows is not None:
            data = self.param.detach()
            data.index_copy_(0, self.rows, v.view(len(self.rows), *data.shape[1:]))

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """The same slice of a tensor shaped like the parameter (optimizer state)."""
        if self.rows is not None:
            return t.index_select(0, self.rows).view(-1)
        return t.view(-1)[self.start:self.stop] if self.contiguous else t


def plan_streams(params: Sequence[torch.Tensor], chunk: int = CHUNK,
                 start_index: int = 0, group: int = 1) -> list[Stream]:
    """Cut ``params`` into streams; parameter ``k`` gets index ``start_index + k``.
    ``group`` > 1: spans of up to ``group`` consecutive streams (only when ``chunk`` is a
    multiple of 64, so that every full stream's ±1 draw uses whole 64-bit words)."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive number of elements")
    if group > 1 and chunk % 64 == 0:
        span = chunk * group
        streams = []
        for k, p in enumerate(params):
            n = p.numel()
            if n and not p.is_contiguous():
                streams.append(Stream(start_index + k, 0, p, 0, n, False))
                continue
            for start in range(0, n, span):
                stop = min(start + span, n)
                streams.append(Stream(start_index + k, start // chunk, p, start, stop, True,
                                      chunks=-(-(stop - start) // chunk), chunk=chunk))
        return streams
    streams = []
    for k, p in enumerate(params):
        index = start_index + k
        n = p.numel()
        if n == 0:
            continue
        if not p.is_contiguous():
            streams.append(Stream(index, 0, p, 0, n, False))
            continue
        for c, start in enumerate(range(0, n, chunk)):
            streams.append(Stream(index, c, p, start, min(start + chunk, n), True))
    return streams


def plan_rows(param: torch.Tensor, param_index: int, rows: torch.Tensor,
              chunk: int = CHUNK) -> list[Stream]:
    """Row streams for ``rows`` (sorted, unique indices into dim 0) of a contiguous ``param``.

    Stream ``c`` holds about ``chunk`` elements (whole rows) and draws its z from seed
    ``stream_seed(s, param_index, -1 - c)``: a namespace apart from the dense streams. Its z
    is a fresh Gaussian over the rows of this step, so a row's direction depends on which
    rows the step uses — any fixed rule serves, as long as every pass of the step (and a
    replay, which logs the rows) uses the same one.
    """
    if not param.is_contiguous() or param.dim() < 1:
        raise ValueError("row streams need a contiguous parameter with at least one dimension")
    row_numel = max(1, param[0].numel()) if param.shape[0] else 1
    per = max(1, chunk // row_numel)
    streams = []
    for c, start in enumerate(range(0, len(rows), per)):
        r = rows[start:start + per]
        streams.append(Stream(param_index, -1 - c, param, 0, len(r) * row_numel, True, rows=r))
    return streams


def check_rows(param: torch.Tensor, rows, name: str = "rows") -> torch.Tensor:
    """``rows`` as sorted unique int64 indices into dim 0 of ``param``, or a clear error."""
    if not torch.is_tensor(rows):
        rows = torch.as_tensor(rows)
    if rows.dtype.is_floating_point or rows.dtype == torch.bool or rows.is_complex():
        raise ValueError(f"{name} must hold integer row indices, got dtype {rows.dtype}")
    if param.dim() < 1:
        raise ValueError(f"{name}: a 0-dimensional parameter has no rows")
    rows = torch.unique(rows.reshape(-1).to(device=param.device, dtype=torch.int64))
    if rows.numel() and (int(rows[0]) < 0 or int(rows[-1]) >= param.shape[0]):
        raise ValueError(f"{name} must be row indices in [0, {param.shape[0]}), got values from "
                         f"{int(rows[0])} to {int(rows[-1])}")
    return rows


def row_map(params: Sequence[torch.Tensor], rows) -> dict[int, torch.Tensor]:
    """An optimizer's ``rows={parameter: row indices}`` argument, checked, as
    ``{index in params: sorted unique int64 rows}`` for :meth:`Perturber.plan`."""
    if rows is None:
        return {}
    if not isinstance(rows, dict):
        raise ValueError("rows must be a dict {parameter: row indices} (e.g. the input embedding's weight and "
                         f"the token ids of the batch), got {type(rows).__name__}")
    index = {id(p): k for k, p in enumerate(params)}
    out = {}
    for p, r in rows.items():
        k = index.get(id(p))
        if k is None:
            raise ValueError("rows names a tensor that is not one of this optimizer's parameters")
        if not p.is_contiguous():
            raise ValueError(f"rows: parameter {k} (shape {tuple(p.shape)}) is not contiguous")
        out[k] = check_rows(p, r, name=f"rows[parameter {k}]")
    return out


def default_workers(directions: str = "gaussian") -> int:
    """Worker threads for the CPU passes: ``ZOEDU_PERTURB_THREADS`` if set; else one for ±1
    directions (a second Python thread only contends for the GIL between the passes' short
    calls: a MeZO step on MiniLM 0.40 s against 0.465 with two, 0.36 s in spans of 16) and
    torch's thread count for gaussian ones (each stream's ``randn`` is too small to be split
    by torch)."""
    env = os.environ.get("ZOEDU_PERTURB_THREADS")
    if env:
        return max(1, int(env))
    if directions == "rademacher":
        return 1
    return max(1, torch.get_num_threads())


def _padded(n: int) -> int:
    """``n`` rounded up to whole bytes of random bits (8 entries each): a Rademacher draw
    writes 8 entries per byte, so its scratch buffer holds a multiple of 8."""
    return -(-n // 8) * 8


#: Per (kind, dtype, device): the 256 × 8 table whose row b holds bit k of b, as ±1 (kind
#: "sign", for ±1 directions) or as 0/1 (kind "bit", for masks).
_BIT_TABLES: dict[tuple, torch.Tensor] = {}


def _bit_table(kind: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (kind, dtype, str(device))
    table = _BIT_TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = _BIT_TABLES[key] = (bits * 2 - 1 if kind == "sign" else bits).to(dtype=dtype, device=device)
    return table


def _sign_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _bit_table("sign", dtype, device)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as packed bits: ``uint8`` of ``ceil(numel / 8)`` bytes, element ``i``
    (row-major) in bit ``i % 8`` of byte ``i // 8`` (the sign table's order, so a mask and a
    ±1 draw read their bytes the same way)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = _padded(flat.numel()) - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    cols = flat.view(-1, 8)
    out = cols[:, 0].clone()
    for k in range(1, 8):
        out.bitwise_or_(cols[:, k] << k)
    return out


def unpack_mask(packed: torch.Tensor, numel: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """The flat mask of ``numel`` elements that :func:`pack_mask` packed (0/1 in ``dtype``)."""
    return _mask_bits(packed, 0, numel, torch.float32).to(dtype)


def _mask_bits(packed: torch.Tensor, start: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Elements ``start … start + n − 1`` of a packed mask as 0/1 in ``dtype``."""
    first, last = start // 8, -(-(start + n) // 8)
    nbytes = last - first
    out = torch.empty(nbytes * 8, dtype=dtype, device=packed.device)
    torch.index_select(_bit_table("bit", dtype, packed.device), 0, packed[first:last].long(),
                       out=out[: nbytes * 8].view(nbytes, 8))
    off = start - first * 8
    return out[off: off + n]


def _mask_rows(packed: torch.Tensor, rows: torch.Tensor, row_numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The mask of the rows ``rows`` of a parameter whose rows hold ``row_numel`` elements."""
    pos = (rows.to(torch.int64).unsqueeze(1) * row_numel + torch.arange(row_numel, device=rows.device)).view(-1)
    return ((packed.index_select(0, pos >> 3).to(torch.int64) >> (pos & 7)) & 1).to(dtype)


def magnitude_mask(param: torch.Tensor, density: float) -> torch.Tensor:
    """Sparse MeZO's mask of ``param``: its ``density`` fraction of smallest-magnitude weights
    (at least one; ties at the threshold included), packed (:func:`pack_mask`).

    Liu et al. (2024, "Sparse MeZO") perturb and update only the small weights of each
    layer: a zeroth-order step's noise hurts large weights most, and on the bundled MiniLM
    the smallest half of each tensor holds 64–69 % of the loss gradient's squared norm
    (benchmarks/README.md, "Sparse MeZO")."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density={density!r} must be a fraction in (0, 1] (the share of weights perturbed)")
    w = param.detach().reshape(-1).abs().float()
    if density >= 1 or w.numel() == 0:
        return pack_mask(torch.ones(w.numel(), dtype=torch.bool, device=w.device))
    k = max(1, math.ceil(density * w.numel()))
    threshold = w.kthvalue(k).values if w.device.type == "cpu" else w.sort().values[k - 1]
    return pack_mask(w <= threshold)


def sparse_masks(params: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor] | None:
    """Sparse MeZO's masks of ``params`` for ``sparsity`` (the share of each tensor left out):
    each tensor's :func:`magnitude_mask` at density ``1 − sparsity``; ``None`` when dense."""
    return [magnitude_mask(p, 1.0 - sparsity) for p in params] if sparsity else None


def masks_due(step: int, mask_every: int | None) -> bool:
    """Whether Sparse MeZO re-chooses its masks at the start of ``step`` (``mask_every``)."""
    return bool(mask_every) and step > 0 and step % mask_every == 0


def rademacher_(buf: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Fill ``buf[:n]`` with ±1 entries, each with probability ½ and independent, from
    ``generator``; return that slice. ``buf`` must hold ``_padded(n)`` elements.

    Every random bit is used: one 64-bit word (all 2⁶⁴ values equally likely) gives 64
    entries, and a lookup of each of its bytes in a 256 × 8 table of signs writes 8 entries
    at once — 0.47 ns per entry on one CPU core against 3.7 ns for ``torch.randn`` and
    1.5–1.8 ns for unpacking the bits with shifts (benchmarks/README.md, section 1 + 3).
    The bytes are read in the machine's byte order (little-endian on x86 and ARM).
    """
    words = torch.empty(_words(n), dtype=torch.int64, device=buf.device)
    words.random_(-(1 << 63), None, generator=generator)
    return _signs(buf, words, _padded(n) // 8)[:n]


def _words(n: int) -> int:
    """64-bit random words for ``n`` ±1 entries (one byte per 8 entries, whole words)."""
    return -(-(_padded(n) // 8) // 8)


def _signs(buf: torch.Tensor, words: torch.Tensor, nbytes: int) -> torch.Tensor:
    """``buf[:8 nbytes]`` ← the ±1 entries of the first ``nbytes`` bytes of ``words`` (the sign table)."""
    index = words.view(torch.uint8)[:nbytes].long()
    torch.index_select(_sign_table(buf.dtype, buf.device), 0, index, out=buf[: nbytes * 8].view(nbytes, 8))
    return buf


class Perturber:
    """Runs in-place passes over the streams of a fixed list of parameters.

    Args:
        params: the tensors to perturb and update (in a fixed order: the index of a
            parameter in this list is part of its streams' seeds).
        chunk: elements per stream on CPU; on CUDA each parameter is one stream.
        workers: CPU threads for the passes (default :func:`default_workers`: 1 for ±1
            directions, torch's thread count for gaussian ones).
        directions: ``"gaussian"`` (N(0, 1) entries) or ``"rademacher"`` (±1 with probability ½).
        group: streams per span on CPU (default :data:`GROUP`; 1: every stream on its own).
            It changes the speed of a pass and its scratch memory, never the numbers.
        masks: per parameter, ``None`` or a packed 0/1 mask (:func:`pack_mask`, one bit per
            element in row-major order): the parameter's direction is ``m ⊙ z`` (Sparse MeZO).
    """

    def __init__(self, params: Sequence[torch.Tensor], *, chunk: int = CHUNK, workers: int | None = None,
                 directions: str = "gaussian", group: int = GROUP,
                 masks: Sequence[torch.Tensor | None] | None = None):
        if directions not in DIRECTIONS:
            raise ValueError(f"directions={directions!r} is unknown; allowed: {', '.join(DIRECTIONS)}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group={group!r} must be a positive integer (streams per span)")
        self.directions = directions
        self.params = list(params)
        self.chunk = int(chunk)
        on_cuda = any(p.is_cuda for p in self.params)
        self.streams = plan_streams(self.params, chunk=max(p.numel() for p in self.params) if on_cuda
                                    and self.params else self.chunk, group=1 if on_cuda else group)
        self.workers = 1 if on_cuda else int(workers or default_workers(directions))
        self._pool: ThreadPoolExecutor | None = None
        self.masks = _check_masks(self.params, masks)

    # ------------------------------------------------------------------ internals
    def _buffers(self, slots: int, streams: Sequence[Stream]) -> list[dict]:
        """Per worker, per (dtype, device, slot): a scratch buffer of one stream."""
        need: dict[tuple, int] = {}
        for s in streams:
            key = (s.param.dtype, s.param.device)
            need[key] = max(need.get(key, 0), _padded(s.numel))
        return [{(dt, dev, slot): torch.empty(n, dtype=dt, device=dev)
                 for (dt, dev), n in need.items() for slot in range(slots)}
                for _ in range(self.workers)]

    def _draw(self, stream: Stream, buffers: dict, seed: int, slot: int) -> torch.Tensor:
        z = self._draw_z(stream, buffers, seed, slot)
        mask = self.masks[stream.param_index] if self.masks is not None else None
        if mask is None:
            return z
        p = stream.param
        if stream.rows is not None:
            bits = _mask_rows(mask, stream.rows, max(1, p[0].numel()), z.dtype)
        else:
            bits = _mask_bits(mask, stream.start if stream.contiguous else 0, stream.numel, z.dtype)
        return z.mul_(bits.view(z.shape))

    def _draw_z(self, stream: Stream, buffers: dict, seed: int, slot: int) -> torch.Tensor:
        p = stream.param
        scratch = buffers[(p.dtype, p.device, slot)]
        gen = torch.Generator(device=p.device)
        if stream.chunks > 1:
            return self._draw_span(stream, scratch, gen, seed)
        gen.manual_seed(stream_seed(seed, stream.param_index, stream.chunk_index))
        if self.directions == "gaussian":
            buf = torch.randn(stream.numel, generator=gen, dtype=p.dtype, device=p.device, out=scratch[: stream.numel])
        else:
            buf = rademacher_(scratch, stream.numel, gen)
        return buf if stream.contiguous else buf.view(p.shape)

    def _draw_span(self, stream: Stream, scratch: torch.Tensor, gen: torch.Generator, seed: int) -> torch.Tensor:
        """A span's direction: each of its streams' numbers, drawn from that stream's own seed,
        side by side — what the streams would draw one by one."""
        n, chunk = stream.numel, stream.chunk
        sizes = [min(chunk, n - off) for off in range(0, n, chunk)]
        first = stream.chunk_index
        if self.directions == "gaussian":
            for k, m in enumerate(sizes):
                gen.manual_seed(stream_seed(seed, stream.param_index, first + k))
                torch.randn(m, generator=gen, dtype=scratch.dtype, device=scratch.device,
                            out=scratch[k * chunk: k * chunk + m])
            return scratch[:n]
        # ±1: every full stream fills chunk / 64 whole words, so the bytes of all streams lie
        # side by side and one table lookup (rademacher_'s) serves the span
        per = chunk // 64
        words = torch.empty((len(sizes) - 1) * per + _words(sizes[-1]), dtype=torch.int64, device=scratch.device)
        for k, m in enumerate(sizes):
            gen.manual_seed(stream_seed(seed, stream.param_index, first + k))
            words[k * per: k * per + _words(m)].random_(-(1 << 63), None, generator=gen)
        return _signs(scratch, words, (len(sizes) - 1) * (chunk // 8) + _padded(sizes[-1]) // 8)[:n]

    def run(self, kernel: Callable, *, slots: int = 1, streams: Sequence[Stream] | None = None,
            serial: bool = False) -> None:
        """Apply ``kernel(view, zgen, stream)`` to every stream (in parallel on CPU).

        ``zgen(seed, slot=0)`` returns the stream's direction for ``seed`` in scratch
        buffer ``slot`` (``slots`` buffers per worker are allocated for this pass).
        ``serial=True`` runs in the calling thread (for kernels that allocate: only the
        calling thread's allocations are seen by :func:`zoedu.memory.measure`).
        """
        streams = self.streams if streams is None else streams
        if not streams:
            return
        workers = 1 if serial else min(self.workers, len(streams))
        buffers = self._buffers(slots, streams)

        def work(w: int) -> None:
            for s in streams[w::workers]:
                v = s.view()
                kernel(v, lambda seed, slot=0, s=s: self._draw(s, buffers[w], seed, slot), s)
                s.write_back(v)

        with torch.no_grad():
            if workers == 1:
                work(0)
                return
            if self._pool is None or self._pool._max_workers < workers:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="zoedu-perturb")
            futures = [self._pool.submit(_no_grad_call, work, w) for w in range(workers)]
            for f in futures:
                f.result()

    def plan(self, rows: dict[int, torch.Tensor] | None = None) -> list[Stream]:
        """The streams of one step: the dense plan, except that a parameter index in ``rows``
        is covered only on those rows (sorted unique indices; see :func:`plan_rows`)."""
        if not rows:
            return self.streams
        out = [s for s in self.streams if s.param_index not in rows]
        for k in sorted(rows):
            out.extend(plan_rows(self.params[k], k, rows[k], chunk=self.chunk))
        return out

    def add(self, seed: int, scale: float, streams: Sequence[Stream] | None = None) -> None:
        """``θ ← θ + scale · z(seed)`` over all parameters (one pass)."""
        self.run(lambda v, zgen, s: v.add_(zgen(seed), alpha=scale), streams=streams)

    def add_twice(self, seed: int, scale: float, streams: Sequence[Stream] | None = None) -> None:
        """``θ ← (θ + scale·z) + scale·z``, rounding in between, in one pass.

        MeZO's move from θ + εz to θ − εz, done as two steps of −εz on each cached stream:
        the round trip ``+εz, −εz, −εz, +εz`` is then two simple round trips, each exact
        unless a weight crosses into a coarser binade, and changes ≈ 8 % of the weights by
        an ulp instead of the ≈ 46 % of ``+εz, −2εz, +εz`` (benchmarks/README.md).
        """
        def kernel(v, zgen, s):
            z = zgen(seed)
            v.add_(z, alpha=scale)
            v.add_(z, alpha=scale)

        self.run(kernel, streams=streams)

    @property
    def low_precision(self) -> bool:
        """Whether some parameter is float16/bfloat16 (whose range θ ± εz may leave)."""
        return any(p.dtype in LOW_PRECISION for p in self.params)

    def overflows(self, seed: int, scale: float, *, two_sided: bool = True,
                  streams: Sequence[Stream] | None = None) -> int:
        """How many float16/bfloat16 weights ``θ + scale·z`` (and, two-sided, the two rounded
        steps to ``θ − scale·z``) would turn to ±inf or NaN, computed with the passes' own
        operations on a scratch copy: the weights are only read. An overflow cannot be undone
        (inf − εz is inf), so a step checks this before it moves anything."""
        counts: list[int] = []

        def kernel(v, zgen, s):
            if v.dtype not in LOW_PRECISION:
                return
            z = zgen(seed)
            w = v.add(z, alpha=scale)
            bad = ~torch.isfinite(w)
            if two_sided:
                w.add_(z, alpha=-scale)
                bad |= ~torch.isfinite(w)
                bad |= ~torch.isfinite(w.add_(z, alpha=-scale))
            bad &= torch.isfinite(v)
            counts.append(int(bad.sum()))

        self.run(kernel, streams=[s for s in (self.streams if streams is None else streams)
                                  if s.param.dtype in LOW_PRECISION])
        return sum(counts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:
            pass


def _check_masks(params: Sequence[torch.Tensor], masks) -> list | None:
    """``Perturber(masks=)`` checked: one entry per parameter, each ``None`` or packed bits of
    the parameter's size on its device."""
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != len(params):
        raise ValueError(f"masks must have one entry per parameter ({len(params)}), got {len(masks)}")
    for k, (p, m) in enumerate(zip(params, masks)):
        if m is None:
            continue
        if not torch.is_tensor(m) or m.dtype != torch.uint8 or m.dim() != 1 or m.numel() != _padded(p.numel()) // 8:
            raise ValueError(f"masks[{k}] must be None or the packed bits of parameter {k} (a 1-D uint8 tensor of "
                             f"{_padded(p.numel()) // 8} bytes, from pack_mask), got "
                             f"{type(m).__name__ if not torch.is_tensor(m) else f'{m.dtype} of shape {tuple(m.shape)}'}")
        if m.device != p.device:
            raise ValueError(f"masks[{k}] is on {m.device} but parameter {k} is on {p.device}")
    return masks if any(m is not None for m in masks) else None


def _no_grad_call(fn, *args):
    with torch.no_grad():
        return fn(*args)


def direction(params: Sequence[torch.Tensor], seed: int, *, chunk: int = CHUNK,
              directions: str = "gaussian", masks: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """The direction ``z(seed)`` (``m ⊙ z`` with ``masks``) as materialised tensors shaped like
    ``params`` (for tests, the forward-gradient reference and teaching; the optimizers never
    store it)."""
    out = [torch.zeros_like(p) for p in params]
    Perturber(out, chunk=chunk, workers=1, directions=directions, masks=masks).add(seed, 1.0)
    return out
