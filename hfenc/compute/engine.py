"""The encode loop: tokenize, sort by length, cut token-budget batches, run, write rows in place.

Inference hygiene lives here and only here: eval(), torch.inference_mode(), length-sorted batches
whose padded cost (rows x longest row) stays under a token budget, and rows written straight to
their input positions in the destination array (a numpy array or a memory-mapped .npy), so order
is restored without a re-sort and nothing accumulates in Python lists.

Work arrives in chunks. While the model computes chunk k, a worker thread reads and tokenizes
chunk k+1 (the Rust tokenizer releases the GIL). Trade-off: sorting happens within a chunk only,
so a larger chunk pads less but holds more token ids in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn

from hfenc.errors import ConfigError, UnknownChoiceError
from hfenc.compute.precision import compute_context
from hfenc.compute.threads import ThreadPolicy
from hfenc.model.sparse import SparseRows

# int8 exists on the OpenVINO backend only (hfenc.compute.openvino; EmbedOptions.check refuses it elsewhere).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    name = name.strip().lower()  # CPU, Cuda:0 and cpu alike
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was asked for, but this torch build sees no CUDA GPU",
                hint="use --device cpu (or auto)",
            )
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' was asked for, but Apple's MPS is not available here")
        return torch.device("mps")
    raise UnknownChoiceError("device", name, DEVICE_CHOICES)


# Issue 14's CPU rule for `auto`: mixed bf16 where the CPU has it natively (AVX512-BF16 or AMX)
# and the model's probe holds (hfenc.compute.precision.AUTO_BF16_MIN_COSINE); float32 elsewhere.
# HFENC_AUTO_BF16=0 keeps `auto` at float32 on every CPU (the test suite sets it, so that its
# comparisons at 1e-5 hold on any machine); an explicit --dtype is not affected.
AUTO_BF16_ENV = "HFENC_AUTO_BF16"


def auto_bf16_on_cpu() -> bool:
    return os.environ.get(AUTO_BF16_ENV, "1").strip() != "0" and cpu_has_native_bf16()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: on GPU bf16 where supported, else fp16; on a CPU bf16 where the CPU has native bf16
    (auto_bf16_on_cpu), which the Embedder keeps only if the model's probe cosine holds
    (hfenc.compute.precision), else float32. bf16/fp16 are the mixed scheme of hfenc.compute.precision."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and auto_bf16_on_cpu() else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise UnknownChoiceError("dtype", name, DTYPE_CHOICES) from None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: without them torch emulates bfloat16 and runs several times slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_batch_tokens(device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    # CPU: small batches stay in cache (measured on 2 cores, MiniLM: float32 2-4k tokens beat 8-16k
    # by ~25%; mixed bf16 1,024 beat 3,072 by ~13%, benchmarks/README.md; the OpenVINO backend has
    # its own, openvino_backend.BATCH_TOKENS); GPU: large batches amortise kernel launches.
    if device.type == "cuda":
        return 131072
    return 1024 if dtype in (torch.bfloat16, torch.float16) else 3072


@dataclass(frozen=True)
class Tokenized:
    """A chunk of tokenized texts, ragged ids stored flat (no per-row Python objects kept)."""

    flat: np.ndarray  # int64, every row's ids concatenated
    lengths: np.ndarray  # int64, tokens per row
    truncated: np.ndarray  # bool, the text was longer than max_length
    # Late chunking (hfenc.compute.chunking): the rows are passes over documents, and each output
    # row is a (pass, start, end) span of one pass's tokens, pooled by mean
    spans: np.ndarray | None = None
    # Reuse (hfenc.jobs.reuse): rows whose vectors come from an earlier output; not computed, but
    # tokenized all the same, so every row's token count and truncation are known
    given: np.ndarray | None = None

    @cached_property  # once per chunk, not once per batch
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths)))

    @property
    def rows(self) -> int:
        """Output rows: one per text, or one per span."""
        return len(self.lengths) if self.spans is None else len(self.spans)

    def row_tokens(self) -> np.ndarray:
        """Tokens of each output row: its text's, or a late chunk's span of its pass."""
        return self.lengths if self.spans is None else self.spans[:, 2] - self.spans[:, 1]

    def row_truncated(self) -> np.ndarray:
        """Whether each output row's text was truncated (a late chunk never is)."""
        return self.truncated if self.spans is None else np.zeros(len(self.spans), bool)


class TextTokenizer:
    """The model's own tokenizer, driven through its Rust backend when it has one."""

    def __init__(self, hf_tokenizer: Any, max_length: int, prefix: str = "", lowercase: bool = False,
                 special_tokens: bool = True):
        self.hf = hf_tokenizer
        self.max_length = int(max_length)
        self.special_tokens = special_tokens  # False: no [CLS]/[SEP] (a sparse model's static query side)
        self.prefix, self.lowercase = prefix, lowercase
        pad = hf_tokenizer.pad_token_id
        if pad is None:
            pad = hf_tokenizer.eos_token_id if hf_tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)  # masked out, so any id works; the tokenizer's own keeps parity
        self.left_pad = getattr(hf_tokenizer, "padding_side", "right") == "left"
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self.fast = None
        if backend is not None:
            from tokenizers import Tokenizer, normalizers

            self.fast = Tokenizer.from_str(backend.to_str())  # a copy: never mutate the user's
            self.fast.no_padding()
            side = getattr(hf_tokenizer, "truncation_side", "right")
            self.fast.enable_truncation(self.max_length, direction="left" if side == "left" else "right")
            if lowercase:  # as sentence-transformers does it: a Lowercase normalizer run first
                current = self.fast.normalizer
                self.fast.normalizer = normalizers.Sequence(
                    [normalizers.Lowercase(), *([current] if current is not None else [])])

    def _prepare(self, texts: Sequence[str], prefix: str) -> list[str]:
        if prefix:
            texts = [prefix + t for t in texts]
        if self.lowercase and self.fast is None:
            texts = [t.lower() for t in texts]
        return list(texts)

    def prompt_length(self) -> int:
        """Tokens of the prompt at the start of every row, as sentence-transformers counts them:
        the prompt tokenized alone, less a trailing special token (EOS/SEP)."""
        tok = self._tokenize(self._prepare([self.prefix], ""))
        n = int(tok.lengths[0])
        if n and int(tok.flat[n - 1]) in set(self.hf.all_special_ids):
            n -= 1
        return n

    def __call__(self, texts: Sequence[str], threads: int = 1) -> Tokenized:
        """Token ids of `texts`; with threads > 1, sub-chunks of SUB_CHUNK texts are encoded by
        that many threads (the Rust encode releases the GIL, so one thread's encode overlaps
        another's conversion to numpy) and joined in order: the same ids as one thread."""
        prepared = self._prepare(texts, self.prefix)
        if threads <= 1 or len(prepared) <= SUB_CHUNK:
            return self._tokenize(prepared)
        parts = [prepared[i : i + SUB_CHUNK] for i in range(0, len(prepared), SUB_CHUNK)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hfenc-tok") as pool:
            done = list(pool.map(self._tokenize, parts))
        return Tokenized(np.concatenate([d.flat for d in done]), np.concatenate([d.lengths for d in done]),
                         np.concatenate([d.truncated for d in done]))

    def _tokenize(self, texts: list[str]) -> Tokenized:
        if self.fast is not None:
            encodings = self.fast.encode_batch_fast(texts, add_special_tokens=self.special_tokens)
            lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
            truncated = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
            flat = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, int(lengths.sum()))
        else:  # a Python-only tokenizer: slower, same ids (special tokens kept when truncating)
            special = {"add_special_tokens": self.special_tokens}
            ids = self.hf(texts, truncation=True, max_length=self.max_length, padding=False, **special)["input_ids"]
            full = self.hf(texts, truncation=False, padding=False, **special)["input_ids"]
            truncated = np.fromiter((len(r) > self.max_length for r in full), bool, len(ids))
            lengths = np.fromiter((len(r) for r in ids), np.int64, len(ids))
            flat = np.fromiter(chain.from_iterable(ids), np.int64, int(lengths.sum()))
        return Tokenized(flat, lengths, truncated)


SUB_CHUNK = 2048  # texts per tokenizer task (issue 14: 4 threads x 2,048 lines measured 60k texts/s)


def tokenizer_threads(device: torch.device) -> int:
    """On a CPU device the model needs the cores, so one thread; feeding a GPU, up to 4."""
    return 1 if device.type == "cpu" else max(1, min(4, (os.cpu_count() or 1) - 1))


def plan_batches(sorted_lengths: np.ndarray, batch_tokens: int) -> list[tuple[int, int]]:
    """Cut rows sorted by length (longest first) into [start, end) batches whose padded cost,
    rows x longest row, stays within the budget (a single over-long row still gets a batch)."""
    batches, start, n = [], 0, len(sorted_lengths)
    while start < n:
        longest = max(int(sorted_lengths[start]), 1)
        end = min(n, start + max(1, batch_tokens // longest))
        batches.append((start, end))
        start = end
    return batches


def pad_rows(tok: Tokenized, rows: np.ndarray, pad_id: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Padded ids and boolean mask for the given rows (right padding, or left as the tokenizer
    says), without a per-row Python loop."""
    lengths = tok.lengths[rows]
    width = max(int(lengths.max()), 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    if left:
        mask = np.ascontiguousarray(mask[:, ::-1])  # the same tokens, in the same order, at the end
    starts = tok.offsets[rows]
    # Index of every real token in `flat`, in row-major order of the padded batch.
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask] = tok.flat[np.repeat(starts, lengths) + within]
    return ids, mask


class HostStaging:
    """Reusable host buffers for host-to-device copies (issue 14: no per-batch pinning).

    `slots` int64 buffers are used in turn; a slot grows (to a power of two) only when a batch
    needs more than it holds, so a run allocates a handful of times, not once per batch. Before a
    slot is refilled, the copy that last read it must have finished (its CUDA event), so a
    non-blocking copy never reads ids already overwritten, while the next batch's ids can be
    staged during the current copy. `pin=False` (or a CPU target) gives plain memory."""

    def __init__(self, slots: int = 2, pin: bool = True) -> None:
        self.pin = pin
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.events: list[Any] = [None] * slots
        self.turn = 0
        self.allocations = 0

    def stage(self, *arrays: np.ndarray) -> tuple[torch.Tensor, int]:
        """Copy the arrays (int64), one after another, into the next slot; returns the filled view
        of that slot and the slot's number (for `record`)."""
        n = sum(a.size for a in arrays)
        slot = self.turn
        self.turn = (self.turn + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copy that read this slot is done
            self.events[slot] = None
        buf = self.buffers[slot]
        if buf is None or buf.numel() < n:
            buf = torch.empty(1 << max(int(n - 1).bit_length(), 12), dtype=torch.int64)
            if self.pin:
                buf = buf.pin_memory()
            self.buffers[slot] = buf
            self.allocations += 1
        view = buf.numpy()
        at = 0
        for a in arrays:
            view[at : at + a.size] = a.reshape(-1)
            at += a.size
        return buf[:n], slot

    def record(self, slot: int, event: Any) -> None:
        """`event` (recorded after the copy out of `slot`) is what the next refill waits for."""
        self.events[slot] = event


@dataclass
class Progress:
    rows_done: int  # rows finished, counting those an earlier run saved
    rows_total: int | None
    tokens_done: int  # tokens embedded by this run
    elapsed: float  # seconds since this run started embedding
    resumed: int = 0  # rows an earlier run had saved (not part of this run's rate)
    tokens_left: float | None = None  # tokens this run has still to embed (known or estimated)
    docs_done: int | None = None  # a chunked job (rows are chunks): its documents
    docs_total: int | None = None
    phase: str = "embed"  # or "chunking": a chunked job cutting its records, before any row

    @property
    def rate(self) -> float:
        """Rows per second of this run."""
        return (self.rows_done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left; None until there is a rate and a known total. From tokens where the engine
        counts them: rows run longest first, so rows/s climbs through a chunk while tokens/s holds."""
        if self.tokens_left is not None and self.tokens_done > 0 and self.elapsed > 0:
            return self.tokens_left / (self.tokens_done / self.elapsed)
        if self.rows_total is None or self.rate <= 0:
            return None
        return max(self.rows_total - self.rows_done, 0) / self.rate


@dataclass
class RunStats:
    rows: int = 0
    tokens: int = 0
    truncated: int = 0
    first_truncated: int | None = None  # input row index of the first truncated text


# Seconds of embedding between checkpoints inside a chunk: a kill loses at most about this much.
CHECKPOINT_SECONDS = 5.0


@dataclass(frozen=True)
class Partial:
    """The finished part of one chunk: the rows of the first `batches` batches of its plan.

    A chunk's batches are a function of its texts, the tokenizer and the token budget, so a job
    resumed from a Partial computes the rest in exactly the batches an uninterrupted run would:
    its rows are the same bits."""

    start: int  # the chunk's first input row
    batches: int
    positions: np.ndarray  # chunk-relative row indices, in the order the batches ran
    rows: np.ndarray  # float32, one per position


class Engine:
    """Runs an encoder module over tokenized chunks on one device and dtype."""

    def __init__(
        self,
        encode_fn: nn.Module,
        tokenizer: TextTokenizer,
        device: torch.device,
        dtype: torch.dtype,
        batch_tokens: int | None = None,
        threads: ThreadPolicy | None = None,
    ) -> None:
        # Moved, never cast: the transformer was loaded in `dtype` by transformers itself, which
        # keeps what must stay float32 (rotary inv_freq, _keep_in_fp32_modules); the head is
        # float32 (issue 9: casting a RoPE model's buffers to bf16 skews positions).
        # bf16/fp16 are hfenc.compute.precision's mixed scheme: Linear weights in the low dtype, the
        # forward under autocast (compute_context), norms and buffers float32.
        self.module = encode_fn.eval().to(device=device)
        # a sparse pipeline returns SparseRows per batch; its chunks are not checkpointed within
        # (a chunk interrupted is computed again whole)
        self.sparse = bool(getattr(encode_fn, "sparse_rows", False))
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        self.batch_tokens = int(batch_tokens or default_batch_tokens(device, dtype))
        if self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be positive, got {self.batch_tokens}")
        self.tokenize_threads = tokenizer_threads(device)
        self.threads = threads  # re-counts the free cores between batches (hfenc.compute.threads)
        self.staging = HostStaging(pin=True) if device.type == "cuda" else None

    def _batch(self, tok: Tokenized, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids and mask of `rows` on the device. CUDA: ids and lengths go in one copy
        from a reused pinned buffer; the mask is built on the device from the lengths."""
        ids, mask = pad_rows(tok, rows, self.tokenizer.pad_id, self.tokenizer.left_pad)
        if self.staging is None:
            return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
        n, width = ids.shape
        host, slot = self.staging.stage(ids, tok.lengths[rows])
        on_device = host.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.staging.record(slot, event)
        lengths = on_device[n * width :]
        positions = torch.arange(width, device=self.device)
        if self.tokenizer.left_pad:
            dev_mask = positions[None, :] >= (width - lengths)[:, None]
        else:
            dev_mask = positions[None, :] < lengths[:, None]
        return on_device[: n * width].view(n, width), dev_mask

    @torch.inference_mode()
    def embed_tokenized(self, tok: Tokenized, dest: np.ndarray,
                        on_batch: Callable[[int, int], None] | None = None, *, start: int = 0,
                        done: Partial | None = None, checkpoint: Callable[[Partial], None] | None = None) -> None:
        """Embed every row of `tok` into dest[i] (dest has len(tok.lengths) rows); `on_batch(rows,
        tokens)` after each batch is handed to the device (progress between chunks).

        `done`: this chunk's rows finished before an interruption (its batches are skipped);
        `checkpoint`: called with the finished part every CHECKPOINT_SECONDS and on Ctrl-C
        (neither with late chunking: such a chunk is computed again whole).

        `tok.spans` (late chunking): dest has a row per span instead."""
        if tok.spans is not None:
            return self._embed_spans(tok, dest, on_batch)
        if self.sparse:
            done = checkpoint = None
        order = np.argsort(-tok.lengths, kind="stable")
        if tok.given is not None:  # their rows are in dest already: batch the others as if alone
            order = order[~tok.given[order]]
            if on_batch is not None and tok.given.any():
                on_batch(int(tok.given.sum()), int(tok.lengths[tok.given].sum()))
        plan = plan_batches(tok.lengths[order], self.batch_tokens)
        kept = self._reuse(done, order, plan, dest, on_batch, tok)
        results, positions = [], []
        last = time.perf_counter()
        try:
            for index in range(kept.batches if kept else 0, len(plan)):
                rows = order[plan[index][0]:plan[index][1]]
                if self.threads is not None:
                    self.threads.tick()
                with compute_context(self.device, self.dtype):
                    out = self.module(*self._batch(tok, rows))
                # dense rows stay on the device: one copy back per chunk
                results.append(out if self.sparse else out.float())
                positions.append(rows)
                if on_batch is not None:
                    on_batch(len(rows), int(tok.lengths[rows].sum()))
                if checkpoint is not None and index + 1 < len(plan) and time.perf_counter() - last >= CHECKPOINT_SECONDS:
                    checkpoint(_partial(start, index + 1, kept, positions, results))
                    last = time.perf_counter()
        except KeyboardInterrupt:
            if checkpoint is not None and results:  # keep every finished batch, not only whole chunks
                checkpoint(_partial(start, (kept.batches if kept else 0) + len(results), kept, positions, results))
            raise
        finally:
            if self.threads is not None:
                self.threads.pause()
        if results:
            dest[np.concatenate(positions)] = SparseRows.concat(results) if self.sparse else \
                torch.cat(results).cpu().numpy()

    def _embed_spans(self, tok: Tokenized, dest: np.ndarray, on_batch: Callable[[int, int], None] | None) -> None:
        """Late chunking: each pass once through the transformer, each span pooled from it."""
        assert tok.spans is not None
        order = np.argsort(-tok.lengths, kind="stable")
        by_pass = np.argsort(tok.spans[:, 0], kind="stable")  # spans grouped by their pass
        bounds = np.searchsorted(tok.spans[by_pass, 0], np.arange(len(tok.lengths) + 1))
        try:
            for a, b in plan_batches(tok.lengths[order], self.batch_tokens):
                rows = order[a:b]
                if self.threads is not None:
                    self.threads.tick()
                out_rows = np.concatenate([by_pass[bounds[r]:bounds[r + 1]] for r in rows])
                where = np.empty(len(tok.lengths), np.int64)
                where[rows] = np.arange(len(rows))
                spans = tok.spans[out_rows].copy()
                spans[:, 0] = where[spans[:, 0]]
                if self.tokenizer.left_pad:  # positions move right by the row's padding
                    width = int(tok.lengths[rows].max())
                    spans[:, 1:] += (width - tok.lengths[rows])[spans[:, 0], None]
                with compute_context(self.device, self.dtype):
                    out = self.module.forward_spans(*self._batch(tok, rows), torch.from_numpy(spans))
                dest[out_rows] = out.float().cpu().numpy()
                if on_batch is not None:
                    on_batch(len(out_rows), int(tok.lengths[rows].sum()))
        finally:
            if self.threads is not None:
                self.threads.pause()

    @staticmethod
    def _reuse(done: Partial | None, order: np.ndarray, plan: list[tuple[int, int]], dest: np.ndarray,
               on_batch: Callable[[int, int], None] | None, tok: Tokenized) -> Partial | None:
        """Put `done`'s rows in place when they are this chunk's first batches; else None (all
        is computed again, which is only slower)."""
        if done is None or not 0 < done.batches <= len(plan):
            return None
        expected = order[:plan[done.batches - 1][1]]
        if not np.array_equal(expected, done.positions) or done.rows.shape[0] != len(expected):
            return None
        dest[done.positions] = done.rows
        if on_batch is not None:
            on_batch(len(done.positions), int(tok.lengths[done.positions].sum()))
        return done

    def run(
        self,
        chunks: Iterable[tuple[int, Sequence[str]]],
        dest: Callable[[int, int], np.ndarray],
        on_chunk: Callable[[int, int, RunStats, Tokenized], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        rows_total: int | None = None,
        stats: RunStats | None = None,
        done: Partial | None = None,
        checkpoint: Callable[[Partial], None] | None = None,
        tokenize: Callable[[Any], Tokenized] | None = None,
    ) -> RunStats:
        """Embed (start_row, texts) chunks; rows of a chunk land in dest(start_row, n). `rows_total`:
        the rows this run will embed (for the progress's ETA).

        Tokenization of the next chunk overlaps the model's work on the current one. `done` and
        `checkpoint`: see embed_tokenized (`done` applies to the chunk it names). `tokenize`: how
        a chunk's payload becomes a Tokenized (default: the payload is texts, tokenized as rows).
        `on_chunk(start, n, stats, tok)` after each chunk's rows are in dest."""
        stats = stats or RunStats()
        rows0, tokens0 = stats.rows, stats.tokens  # a resumed job passes in what was done before
        t0 = time.perf_counter()
        iterator: Iterator[tuple[int, Sequence[str]]] = iter(chunks)

        def prepare() -> tuple[int, Tokenized] | None:
            item = next(iterator, None)
            if item is None:
                return None
            return item[0], (self.tokenizer(item[1], self.tokenize_threads) if tokenize is None else tokenize(item[1]))

        in_chunk = [0, 0]  # rows and tokens of the chunk in flight, batch by batch
        seen = [0, 0]  # rows and tokens of the chunks tokenized so far (their token counts are known)

        def on_batch(rows: int, tokens: int) -> None:
            in_chunk[0] += rows
            in_chunk[1] += tokens
            if progress is not None:
                done = stats.tokens - tokens0 + in_chunk[1]
                progress(Progress(stats.rows - rows0 + in_chunk[0], rows_total, done, time.perf_counter() - t0,
                                  tokens_left=_tokens_left(seen, done, rows_total)))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfenc-tokenize") as pool:
            pending: Future = pool.submit(prepare)
            while (item := pending.result()) is not None:
                pending = pool.submit(prepare)
                start, tok = item
                n = tok.rows
                in_chunk[:] = [0, 0]
                seen[0] += n
                seen[1] += int(tok.lengths.sum())
                self.embed_tokenized(tok, dest(start, n), on_batch, start=start, checkpoint=checkpoint,
                                     done=done if done is not None and done.start == start else None)
                stats.rows += n
                stats.tokens += int(tok.lengths.sum())
                n_trunc = int(tok.truncated.sum())
                if n_trunc and stats.first_truncated is None:
                    stats.first_truncated = start + int(np.argmax(tok.truncated))
                stats.truncated += n_trunc
                if on_chunk is not None:
                    on_chunk(start, n, stats, tok)
        return stats


def _tokens_left(seen: list[int], done: int, rows_total: int | None) -> float | None:
    """The tokens of the chunks in hand not yet embedded, plus the rows not yet read at the mean
    tokens per row seen so far."""
    if rows_total is None or not seen[0]:
        return None
    return max(seen[1] - done, 0) + max(rows_total - seen[0], 0) * seen[1] / seen[0]


def _partial(start: int, batches: int, kept: Partial | None, positions: list[np.ndarray],
             results: list[torch.Tensor]) -> Partial:
    """The finished part of a chunk: what was reused plus the batches computed since."""
    rows = torch.cat(results).cpu().numpy() if results else np.empty((0, 0), np.float32)
    done = np.concatenate(positions) if positions else np.empty(0, np.int64)
    if kept is not None:
        rows = np.concatenate([kept.rows, rows]) if len(done) else kept.rows
        done = np.concatenate([kept.positions, done])
    return Partial(start, batches, done, rows)
