"""Two jobs on one output, as whole processes: local pairs, --ray pairs, and `hfenc clean` during a
live run. (tests/test_claim.py runs the local pairs in the suite; Ray pairs take a Ray runtime
each, so they are checked here and their figures go in the notes.)

    python benchmarks/check_two_runs.py MODEL_DIR [--lines 3000] [--offsets 0.3 1.5 4]

For each offset the second job starts that many seconds after the first. Exactly one may publish,
its rows must equal a lone run of the input its sidecar names, the other must exit 1 with one
`Error:` line, and no hidden file may be left. Then a job is started and `hfenc clean --remove`
runs while it embeds: clean must leave it alone (exit 1, one line) and the job must finish."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_startup import cpu_name  # noqa: E402

WORDS = "the a cat dog red blue car tree runs fast slow house river stone light dark".split()


def _write(path: Path, seed: int, n: int) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) + "\n" for _ in range(n)))
    return path


def _start(model: str, src: Path, out: Path, ray: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hfenc", "embed", str(src), "-o", str(out), "-m", model, "--device", "cpu",
           "--dtype", "float32", "-q", *(["--ray", "--workers", "1"] if ray else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _pair(model: str, work: Path, n: int, offset: float, ray: bool) -> str:
    d = work / f"{'ray' if ray else 'local'}-{offset}"
    d.mkdir()
    inputs = [_write(d / "a.txt", 1, n), _write(d / "b.txt", 2, n)]
    out = d / "out.npy"
    first = _start(model, inputs[0], out, ray)
    time.sleep(offset)
    second = _start(model, inputs[1], out, ray)
    results = [(p.wait(), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    loser = next((err for code, err in results if code == 1), "")
    errors = [line for line in loser.splitlines() if line.startswith("Error: ")]
    published = Path(json.loads((d / "out.npy.json").read_text())["input"]["path"]) if out.exists() else None
    same = False
    if published is not None:
        lone = _start(model, published, d / "lone.npy", ray)
        lone.communicate()
        same = np.array_equal(np.load(out), np.load(d / "lone.npy"))
        (d / "lone.npy").unlink()
        (d / "lone.npy.json").unlink()
    hidden = sorted(p.name for p in d.iterdir() if p.name.startswith("."))
    ok = codes == [0, 1] and len(errors) == 1 and same and not hidden
    return (f"{'--ray' if ray else 'local'} offset {offset} s: exits {codes}, loser: {errors[0] if errors else '-'}; "
            f"published {published.name if published else '-'}, equal to a lone run: {same}; hidden left: {hidden}"
            f" -> {'OK' if ok else 'FAIL'}")


def _clean_during(model: str, work: Path, n: int) -> str:
    d = work / "clean"
    d.mkdir()
    src = _write(d / "a.txt", 3, n)
    job = _start(model, src, d / "out.npy", False)
    state = d / ".out.npy.resume.json"
    while not state.exists() and job.poll() is None:
        time.sleep(0.01)
    clean = subprocess.run([sys.executable, "-m", "hfenc", "clean", str(d), "--remove"], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    code = job.wait()
    errors = [line for line in clean.stderr.splitlines() if line.startswith("Error: ")]
    ok = clean.returncode == 1 and len(errors) == 1 and code == 0 and "in use by" in clean.stderr
    return (f"clean --remove during a live run: clean exit {clean.returncode} ({errors[0] if errors else '-'}), "
            f"the job exit {code} -> {'OK' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.3, 1.5, 4.0])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hfenc-two-runs-"))
    print(f"CPU: {cpu_name()}; {args.lines:,} lines per input")
    for ray in (False, True):
        for offset in args.offsets:
            print(_pair(args.model, work, args.lines, offset, ray), flush=True)
    print(_clean_during(args.model, work, args.lines * 4))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
