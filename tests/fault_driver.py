"""Fault-injection driver (issue 10): kill `hfenc embed` at every step of a job, then finish it.

Run as a script by tests/test_faults.py: `python tests/fault_driver.py MODEL_DIR WORK_DIR SEED`.
It imports hfenc, torch and transformers once, runs no torch op itself, and forks one child per
run (a fresh process would spend ~3 s importing torch; a fork from a process that never started
a thread pool is safe). Each case:
  1. a child runs the job with HFENC_FAULT_AT=<point> (it SIGKILLs itself there) or is SIGKILLed
     by the driver after a random delay;
  2. the final paths are checked: no incomplete array, and a sidecar only beside the rows it
     describes (never new rows with old metadata);
  3. a child reruns the same command, with --resume when a resume state was left;
  4. the output must equal an uninterrupted run bit for bit (rows and ids).
Cases killed during publication (and some before it) are also settled with `hfenc clean --remove`
instead of a rerun: then the output must be the old set or the new one, whole, never a mix, and
no hidden file may be left.
Prints one JSON line: kill points tried, runs completed, rows lost, mismatches, failures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402

import hfenc.cli  # noqa: E402
import hfenc.compute.embedder  # noqa: E402,F401  (torch and transformers imported before forking)
import hfenc.jobs.local  # noqa: E402,F401
import transformers  # noqa: E402

# transformers imports its modules lazily: resolve the ones a run needs once, here, not per child.
for _name in ("AutoConfig", "AutoModel", "AutoTokenizer", "BertModel", "PreTrainedTokenizerFast"):
    getattr(transformers, _name)

ROWS, CHUNK = 240, 20
POINTS = [
    "scanned", "loaded", "chunk-saved:1", "chunk-saved:2", "chunk-saved:6", "chunk-saved:12",
    "json-written:1", "json-written:2", "json-written:7", "finish-flushed", "publishing",
    "old-sidecar-removed", "published-side-file", "published-array", "published-sidecar", "published",
]
CLEAN_POINTS = ["chunk-saved:2", "finish-flushed", "publishing", "old-sidecar-removed", "published-side-file",
                "published-array", "published-sidecar", "published"]


def _texts(seed: int, n: int) -> list[str]:
    import tiny_models

    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _write_input(path: Path, seed: int) -> None:
    lines = (json.dumps({"text": t, "id": f"r{seed}-{i}"}) for i, t in enumerate(_texts(seed, ROWS)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run(argv: list[str], env: dict[str, str], kill_after: float | None = None) -> int:
    """Fork a child running `hfenc ARGV`; return its exit code (-9 when killed)."""
    pid = os.fork()
    if pid == 0:  # child
        os.environ.update(env)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(2, 3)  # the driver's stderr, for a traceback
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        sys.argv = ["hfenc", *argv]
        try:
            hfenc.cli.main()
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException:  # a crash of hfenc itself: say what it was
            import traceback

            os.write(3, traceback.format_exc().encode())
            os._exit(99)
        os._exit(0)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _command(model: str, src: Path, out: Path, force: bool) -> list[str]:
    argv = ["embed", str(src), "-m", model, "-o", str(out), "--id-field", "id", "--chunk-size", str(CHUNK),
            "--device", "cpu", "-q"]
    return argv + (["--force"] if force else [])


def main() -> None:
    model, work, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    # References: the new input's rows (what every case must end with) and an old output's.
    refs = {}
    for tag, input_seed in (("new", 1), ("old", 2)):
        d = work / f"ref-{tag}"
        d.mkdir()
        _write_input(d / "in.jsonl", input_seed)
        assert _run(_command(model, d / "in.jsonl", d / "out.npy", False), {}) == 0, tag
        refs[tag] = (np.load(d / "out.npy"), (d / "out.ids.txt").read_text(),
                     json.loads((d / "out.npy.json").read_text())["input"]["sha256"])

    cases = [(p, False, None) for p in POINTS] + [(p, True, None) for p in POINTS]  # fresh / --force over old
    cases += [(None, bool(i % 2), rng.uniform(0.02, 0.4)) for i in range(8)]  # random moments of a ~0.5 s run
    report = {"kill_points": 0, "killed": 0, "runs_completed": 0, "rows_lost": 0, "mismatches": 0,
              "cleaned": 0, "failures": []}
    for n, (point, over_old) in enumerate([(p, f) for p in CLEAN_POINTS for f in (False, True)]):
        _clean_case(work / f"clean-{n}", model, refs, point, over_old, report)
    for n, (point, over_old, delay) in enumerate(cases):
        d = work / f"case-{n}"
        d.mkdir()
        _write_input(d / "in.jsonl", 1)
        out = d / "out.npy"
        if over_old:  # a complete output of another input is already there
            for name in ("out.npy", "out.ids.txt", "out.npy.json"):
                shutil.copy(work / "ref-old" / name, d / name)
        name = point or f"random@{delay:.2f}s"
        report["kill_points"] += 1
        code = _run(_command(model, d / "in.jsonl", out, over_old), {"HFENC_FAULT_AT": point} if point else {},
                    kill_after=delay)
        report["killed"] += code == -9
        problem = _check_after_crash(d, refs)
        if problem:
            report["failures"].append(f"{name} (force={over_old}): after the kill: {problem}")
        state = d / ".out.npy.resume.json"
        if code != 0:
            again = _command(model, d / "in.jsonl", out, over_old and not state.exists())
            code = _run(again + (["--resume"] if state.exists() else []), {})
        if code != 0:
            report["failures"].append(f"{name} (force={over_old}): the rerun exited {code}")
            continue
        report["runs_completed"] += 1
        rows, ids, _ = refs["new"]
        got = np.load(out)
        report["rows_lost"] += max(0, len(rows) - len(got))
        if got.shape != rows.shape or not np.array_equal(got, rows) or (d / "out.ids.txt").read_text() != ids:
            report["mismatches"] += 1
            report["failures"].append(f"{name} (force={over_old}): output differs from an uninterrupted run")
        leftovers = sorted(p.name for p in d.iterdir() if p.name.startswith("."))
        if leftovers:
            report["failures"].append(f"{name} (force={over_old}): hidden files left: {leftovers}")
    print(json.dumps(report))


def _clean_case(d: Path, model: str, refs: dict, point: str, over_old: bool, report: dict) -> None:
    """Kill the job at `point`, then `hfenc clean --remove`: the old set or the new set, whole."""
    d.mkdir()
    _write_input(d / "in.jsonl", 1)
    if over_old:
        for name in ("out.npy", "out.ids.txt", "out.npy.json"):
            shutil.copy(d.parent / "ref-old" / name, d / name)
    name = f"{point} then clean (force={over_old})"
    code = _run(_command(model, d / "in.jsonl", d / "out.npy", over_old), {"HFENC_FAULT_AT": point})
    if code != -9:
        return  # not reached: nothing to clean
    cleaned = _run(["clean", str(d), "--remove"], {})
    problem = _check_after_crash(d, refs)
    if cleaned != 0:
        problem = f"clean exited {cleaned}"
    elif problem is None and not (d / "out.npy").exists() and over_old:
        problem = "the old output is gone and no new one took its place"
    leftovers = sorted(p.name for p in d.iterdir() if p.name.startswith("."))
    if problem or leftovers:
        report["failures"].append(f"{name}: {problem or f'hidden files left: {leftovers}'}")
    report["cleaned"] += 1


def _check_after_crash(d: Path, refs: dict) -> str | None:
    """What a crash may leave at the final paths: nothing, or a complete output whose sidecar (if
    any) describes exactly the rows beside it."""
    out, sidecar = d / "out.npy", d / "out.npy.json"
    if not out.exists():
        return "a sidecar without its array" if sidecar.exists() else None
    try:
        rows = np.load(out)
    except Exception as exc:  # noqa: BLE001
        return f"the array at the final path does not load ({exc})"
    which = next((tag for tag, (ref, _, _) in refs.items() if rows.shape == ref.shape and np.array_equal(rows, ref)), None)
    if which is None:
        return "the array at the final path is incomplete"
    if sidecar.exists():
        described = json.loads(sidecar.read_text())["input"]["sha256"]
        if described != refs[which][2]:
            return f"{which} rows beside the other run's sidecar"
        ids = d / "out.ids.txt"
        if not ids.exists() or ids.read_text() != refs[which][1]:
            return f"{which} rows and sidecar beside other ids"
    return None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
