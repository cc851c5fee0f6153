"""The progress ETA (issue 22): computed from tokens, within 25% of the real remaining time once
10% of the tokens are done, on a fake clock that charges each batch what a transformer costs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hfenc.compute import engine as engine_module
from hfenc.compute.engine import Engine, Progress, Tokenized
from corpus import real_sentences


class _Tokenizer:
    """Word counts as token counts (plus two specials), capped at 256 like MiniLM."""

    pad_id, left_pad = 0, False

    def __call__(self, texts, threads=1):
        lengths = np.array([min(256, int(len(t.split()) * 1.3) + 2) for t in texts], dtype=np.int64)
        return Tokenized(np.ones(int(lengths.sum()), np.int64), lengths, lengths >= 256)


class _Model(nn.Module):
    """Charges a batch rows x width padded tokens at 6,000 tokens/s, attention's share growing with
    the width (as in a 384-wide encoder), plus 2 ms a batch."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def forward(self, ids, mask):
        rows, width = ids.shape
        self.clock[0] += rows * width * (1 + width / 2304) / 6000 + 0.002
        return torch.zeros(rows, 4)


@pytest.mark.parametrize("chunk", [16384, 500])  # one chunk (every token known), and many
def test_eta_is_within_a_quarter_of_the_time_left(monkeypatch, chunk):
    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    texts = real_sentences(2000)
    engine = Engine(_Model(clock), _Tokenizer(), torch.device("cpu"), torch.float32, batch_tokens=3072)
    seen: list[tuple[float, Progress]] = []
    out = np.empty((len(texts), 4), np.float32)
    chunks = [(i, texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
    stats = engine.run(chunks, lambda s, n: out[s:s + n], progress=lambda p: seen.append((clock[0], p)),
                       rows_total=len(texts))
    end, total_tokens = clock[0], stats.tokens
    checked, rows_rate_off = 0, 0
    for at, p in seen:
        left = end - at
        if p.tokens_done < 0.1 * total_tokens or left < 1.0:  # the ETA is shown in whole seconds
            continue
        assert abs(p.eta - left) <= 0.25 * left, (p.tokens_done / total_tokens, p.eta, left)
        by_rows = Progress(p.rows_done, p.rows_total, p.tokens_done, p.elapsed).eta  # the old ETA
        rows_rate_off += abs(by_rows - left) > 0.25 * left
        checked += 1
    assert checked >= 10
    if chunk > len(texts):  # the test has teeth: rows/s climbs through a chunk sorted longest first
        assert rows_rate_off > checked / 2
