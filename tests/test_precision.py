"""Issue 14: the mixed bf16 scheme, the int8 path and its guard, reused host buffers, threaded
tokenization. All on CPU; bf16 is emulated where the CPU lacks it (slow, same numbers)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import tiny_models
from hfenc.compute import engine
from hfenc.compute import precision
from hfenc.model.archs import ARCHS
from hfenc.compute.embedder import Embedder
from hfenc.compute.engine import HostStaging, TextTokenizer


def _texts(n: int) -> list[str]:
    words = tiny_models.WORDS
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 23)) for i in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def native_bf16(monkeypatch):
    """Let bf16 run whatever the CPU (emulated bf16 gives the same numbers, slower)."""
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("hfenc.compute.embedder.cpu_has_native_bf16", lambda: True)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_mixed_bf16_keeps_norms_float32_and_beats_plain_bf16(model_type, tiny_model_dir, native_bf16, monkeypatch):
    folder = str(tiny_model_dir(model_type))
    texts = _texts(24)
    reference = Embedder(folder, device="cpu", dtype="float32").encode(texts)

    mixed = Embedder(folder, device="cpu", dtype="bfloat16")
    assert mixed.settings.dtype == "bfloat16"
    transformer = mixed.encoder.transformer
    norms = [m for m in transformer.modules() if precision.is_norm(m)]
    assert norms, model_type
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append(out.dtype)) for m in norms]
    got = mixed.encode(texts)
    for h in hooks:
        h.remove()
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters()), model_type
    assert seen and set(seen) == {torch.float32}, (model_type, set(seen))  # norms compute in float32
    linears = [m for m in transformer.modules() if isinstance(m, nn.Linear)]
    assert any(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(b.dtype != torch.bfloat16 for b in transformer.buffers())  # inv_freq etc. untouched
    assert got.dtype == np.float32 and np.isfinite(got).all()

    # Plain bf16, as before issue 14: the transformer loaded in bf16, no autocast.
    monkeypatch.setattr(precision, "load_dtype", lambda dtype: dtype)
    monkeypatch.setattr(precision, "prepare", lambda transformer, dtype, *a, **k: (dtype, None))
    monkeypatch.setattr(engine, "compute_context", lambda device, dtype: contextlib.nullcontext())
    plain = Embedder(folder, device="cpu", dtype="bfloat16").encode(texts)
    mixed_cos, plain_cos = _cos(got, reference), _cos(plain, reference)
    assert mixed_cos.min() >= plain_cos.min() - 1e-6, (model_type, mixed_cos.min(), plain_cos.min())


def test_modules_transformers_keeps_in_float32_stay_float32(tiny_model_dir, native_bf16):
    emb = Embedder(str(tiny_model_dir("t5")), device="cpu", dtype="bfloat16")
    wo = [m for n, m in emb.encoder.transformer.named_modules() if n.endswith(".wo")]
    assert wo and all(m.weight.dtype == torch.float32 for m in wo)
    assert np.isfinite(emb.encode(_texts(5))).all()


def test_auto_on_cpu_follows_native_bf16(tiny_model_dir, monkeypatch):
    folder = str(tiny_model_dir("bert"))
    monkeypatch.delenv(engine.AUTO_BF16_ENV)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert Embedder(folder, device="cpu").settings.dtype == "float32"
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("hfenc.compute.embedder.cpu_has_native_bf16", lambda: True)
    emb = Embedder(folder, device="cpu")
    assert emb.probe_min_cosine is not None
    assert emb.settings.dtype == ("bfloat16" if emb.probe_min_cosine >= precision.AUTO_BF16_MIN_COSINE else "float32")
    assert emb.settings.batch_tokens == (1024 if emb.settings.dtype == "bfloat16" else 3072)
    monkeypatch.setenv(engine.AUTO_BF16_ENV, "0")  # the switch: auto stays float32 on this CPU
    assert Embedder(folder, device="cpu").settings.dtype == "float32"
    assert Embedder(folder, device="cpu", dtype="bfloat16").settings.dtype == "bfloat16"  # explicit: unaffected
    monkeypatch.delenv(engine.AUTO_BF16_ENV)
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_COSINE", 1.01)  # a guard that cannot hold
    emb = Embedder(folder, device="cpu")
    assert emb.settings.dtype == "float32" and not emb.notes
    assert all(p.dtype == torch.float32 for p in emb.encoder.parameters())
    np.testing.assert_array_equal(emb.encode(_texts(10)), Embedder(folder, device="cpu", dtype="float32").encode(_texts(10)))


def test_int8_linear_is_close_to_the_float_one():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        got, want = precision.Int8Linear(linear)(x), linear(x)
    assert got.shape == want.shape == (3, 7, 48) and got.dtype == torch.float32
    assert float((got - want).norm() / want.norm()) < 0.02


def test_int8_guard_measures_and_falls_back(tiny_model_dir):
    emb = Embedder(str(tiny_model_dir("bert")), device="cpu", dtype="float32")
    texts = _texts(12)
    want = emb.encode(texts)

    def probe(dtype):
        return emb.encode(texts)

    transformer = emb.encoder.transformer
    used, cos = precision.prepare(transformer, torch.int8, emb.device, probe, 0.9)
    assert used == torch.int8 and 0.9 <= cos < 1
    assert any(isinstance(m, precision.Int8Linear) for m in transformer.modules())
    assert _cos(emb.encode(texts), want).min() == pytest.approx(cos, abs=1e-6)

    emb = Embedder(str(tiny_model_dir("bert")), device="cpu", dtype="float32")
    transformer = emb.encoder.transformer
    used, cos = precision.prepare(transformer, torch.int8, emb.device, probe, 1.01)  # cannot hold
    assert used == torch.float32 and cos < 1.01
    assert not any(isinstance(m, precision.Int8Linear) for m in transformer.modules())
    np.testing.assert_array_equal(emb.encode(texts), want)


class _FakeEvent:
    def __init__(self) -> None:
        self.synced = 0

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        self.synced += 1


def test_host_staging_grows_then_reuses_and_waits_for_the_last_copy(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.numel()) or self)
    staging = HostStaging(slots=2)
    pointers, events = [], []
    for size in (100, 50, 3000, 10, 20000, 20000, 7):
        a, b = np.arange(size, dtype=np.int64), np.arange(size // 3 + 1, dtype=np.int64) * -1
        view, slot = staging.stage(a, b)
        np.testing.assert_array_equal(view.numpy(), np.concatenate([a, b]))
        pointers.append(staging.buffers[slot].data_ptr())
        event = _FakeEvent()
        staging.record(slot, event)
        events.append(event)
    # Slot 0 took 100, 3000, 20000, 7 rows' worth; slot 1 took 50, 10, 20000: each grew only when
    # a batch did not fit (4096 elements first, then 32768).
    assert staging.allocations == 4 and len(pinned) == 4
    assert pointers[0] == pointers[2] and pointers[1] == pointers[3] and pointers[4] == pointers[6]
    assert [e.synced for e in events] == [1, 1, 1, 1, 1, 0, 0]  # each refill waited on the copy before


@pytest.mark.parametrize("model_type", ["bert", "qwen2"])
def test_gpu_batch_path_gives_the_same_embeddings(model_type, tiny_model_dir, monkeypatch):
    """The CUDA branch (one staged copy of ids + lengths, mask built on the device), run on CPU
    with a fake pin and fake events: same rows as the plain path, right or left padding."""
    folder = str(tiny_model_dir(model_type))
    texts = _texts(50)
    emb = Embedder(folder, device="cpu", dtype="float32", batch_tokens=64)
    want = emb.encode(texts)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    emb.engine.staging = HostStaging(pin=False)
    got = emb.encode(texts)
    np.testing.assert_array_equal(got, want)
    assert emb.engine.staging.allocations <= 4


def test_threaded_tokenization_returns_the_single_threaded_ids_in_order(tiny_model_dir, monkeypatch):
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir("bert")))
    tok = TextTokenizer(hf, max_length=12)
    texts = _texts(1000)
    one = tok(texts, threads=1)
    monkeypatch.setattr(engine, "SUB_CHUNK", 37)  # many sub-chunks, a short last one
    for threads in (2, 4):
        many = tok(texts, threads=threads)
        np.testing.assert_array_equal(many.flat, one.flat)
        np.testing.assert_array_equal(many.lengths, one.lengths)
        np.testing.assert_array_equal(many.truncated, one.truncated)
    assert one.truncated.any()
