"""A sidecar read back into the settings `embed` recorded, and an Embedder that reproduces them.

The sidecar is the contract between commands (STYLE.md): `embed` writes `asdict(EmbedSettings)`
into it, and this module reads the very same dataclass back (its field list is the only list of
options: nothing here names them again) and turns it into Embedder options. `search` embeds its
queries through `recorded_embedder`, so a query is embedded exactly as `embed` would embed that
text with the index's options.

What may differ, and why: the device (where to run is free) and the token budget per batch (a
speed knob); the prompt when `prompt_name`/`prompt` ask for another one (queries); the compute
dtype only when this machine cannot run the recorded one (bf16 on a CPU without it: a warning).
Every other recorded setting, and the weights' and configs' hashes, must come out the same, or
the embedder is refused with the fields that differ.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from hfenc.errors import ConfigError, InputError, ModelNotFoundError

FREE_SETTINGS = ("device", "batch_tokens")  # recorded, but they do not change the numbers


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
                                        "dict": (dict,), "list": (list,)}
# The keys other commands read back, beside EmbedSettings' (whose types come from the dataclass).
_KEYS = {"format": "str", "complete": "bool | None", "output": "str | None", "rows": "int", "dim": "int",
         "out_dtype": "str | None", "input": "dict | None", "quantization": "dict | None",
         "ids_file": "str | None", "lines_file": "str | None", "files": "dict | None",
         "weights_sha256": "str | None", "config_sha256": "str | None", "model_path": "str | None",
         "chunking": "dict | None", "documents": "int | None", "chunks_file": "str | None", "docs_file": "str | None",
         "hashes_file": "str | None", "reuse": "dict | None", "sidecar_sha256": "str | None",
         "sparse": "dict | None"}


def _fits(value: object, annotation: str) -> bool:
    for name in (part.strip() for part in annotation.split("|")):
        if name == "None" and value is None:
            return True
        kinds = _TYPES.get(name, ())
        if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            return True
    return False


def check_sidecar(data: object, where: str) -> dict[str, Any]:
    """A sidecar read back from disk (untrusted): every key another command reads has the type
    `embed` writes, counts are not negative, and the files it names are plain names beside it.
    One InputError naming the key otherwise."""
    from hfenc.compute.embedder import EmbedSettings

    def bad(why: str) -> InputError:
        return InputError(f"{where} is not a sidecar hfenc can use: {why}",
                          hint="restore the file hfenc wrote, or embed the input again")

    if not isinstance(data, dict):
        raise bad("it is not a JSON object")
    expected = {**{f.name: str(f.type) for f in fields(EmbedSettings)}, **_KEYS}
    for key, annotation in expected.items():
        if key in data and not _fits(data[key], annotation):
            raise bad(f"{key} is {type(data[key]).__name__}, not {annotation}")
    for key in ("rows", "dim", "max_length", "batch_tokens", "truncate_dim", "documents"):
        if isinstance(data.get(key), int) and data[key] < (0 if key in ("rows", "documents") else 1):
            raise bad(f"{key} is {data[key]}")
    for key in ("ids_file", "lines_file", "chunks_file", "docs_file", "hashes_file"):
        name = data.get(key)
        if name is not None and (not name or Path(name).name != name or name in (".", "..")):
            raise bad(f"{key} {name!r} is not a file name beside the output")
    for name, entry in (data.get("files") or {}).items():
        if Path(name).name != name or not isinstance(entry, dict) or not _fits(entry.get("bytes"), "int"):
            raise bad(f"files lists {name!r} wrongly")
    return data


def recorded_spec(recorded: dict[str, Any], paths: list[str]) -> Any:
    """The InputSpec that reads `paths` as `embed` read the input its sidecar's "input" records:
    the same format and options, so record i is row i again."""
    from hfenc.io.inputs import FORMATS, InputSpec

    fmt = recorded.get("format")
    return InputSpec(paths[0], format=fmt if fmt in FORMATS else None, field=recorded.get("field") or "text",
                     column=recorded.get("column"), skip_blank=bool(recorded.get("skip_blank")),
                     tsv_quoting=bool(recorded.get("tsv_quoting")), more=tuple(paths[1:]),
                     encoding_errors="replace" if recorded.get("encoding_errors") == "replace" else "strict")


def recorded_settings(sidecar: dict[str, Any]) -> Any:
    """The sidecar's EmbedSettings (refused when it lacks some: an older hfenc wrote it)."""
    from hfenc.compute.embedder import EmbedSettings

    # A field with a default came later (backend): a sidecar without it was made with the default.
    missing = [f.name for f in fields(EmbedSettings) if f.name not in sidecar and f.default is MISSING]
    if missing:
        raise ConfigError(f"the index's sidecar does not record {', '.join(missing)}",
                          hint="an older hfenc wrote it: embed the input again")
    return EmbedSettings(**{f.name: sidecar[f.name] for f in fields(EmbedSettings) if f.name in sidecar})


def embedder_options(settings: Any, *, prompt: str | None = None, prompt_name: str | None = None,
                     device: str = "auto") -> dict[str, Any]:
    """Embedder options that reproduce `settings`: every EmbedOptions field it records, but the
    free ones; the prompt by name when it had one (so the model's own text is used), else its
    literal text ("" for none, so a model default does not sneak in)."""
    from hfenc.compute.embedder import EmbedOptions

    shared = {f.name for f in fields(EmbedOptions)} & {f.name for f in fields(type(settings))}
    options = {n: getattr(settings, n) for n in shared if n not in (*FREE_SETTINGS, "prompt", "prompt_name", "dim")}
    if settings.proj != "none":
        options["dim"] = settings.dim  # a projection's width; without one, dim is the model's own
    if prompt is not None or prompt_name is not None:
        options.update(prompt=prompt, prompt_name=prompt_name)
    elif settings.prompt_name is not None:
        options["prompt_name"] = settings.prompt_name
    else:
        options["prompt"] = settings.prompt or ""
    options["device"] = device
    if options.get("pooler") == "sparse_static":  # a sparse model's static query side: no pooler to name
        options["pooler"] = None
    return options


def recorded_model(sidecar: dict[str, Any], folder: Path) -> Any:
    """The recorded model: its name, else the folder it was loaded from (as recorded, or relative
    to the index's folder)."""
    from hfenc.model.spec import load_spec

    candidates = [sidecar.get("model"), sidecar.get("model_path")]
    if sidecar.get("model_path") and not Path(sidecar["model_path"]).is_absolute():
        candidates.append(str(folder / sidecar["model_path"]))
    first: ModelNotFoundError | None = None
    for name in [c for c in candidates if c]:
        try:
            return load_spec(name)
        except ModelNotFoundError as exc:
            first = first or exc
    assert first is not None
    raise first


def recorded_embedder(sidecar: dict[str, Any], folder: Path, *, query_prompt: bool = True,
                      prompt: str | None = None, prompt_name: str | None = None, device: str = "auto") -> Any:
    """An Embedder with the sidecar's settings. `query_prompt`: when the model defines a prompt
    named "query", use it (queries); `prompt` / `prompt_name`: use that one instead."""
    from hfenc.compute.embedder import Embedder

    settings = recorded_settings(sidecar)
    spec = recorded_model(sidecar, folder)
    if prompt is None and prompt_name is None and query_prompt and "query" in spec.layout.prompts:
        prompt_name = "query"
    embedder = Embedder(spec, **embedder_options(settings, prompt=prompt, prompt_name=prompt_name, device=device))
    got, want = asdict(embedder.settings), asdict(settings)
    skip = {*FREE_SETTINGS, "model", "dtype", *(("prompt", "prompt_name") if prompt is not None or prompt_name is not None else ())}
    differ = [k for k in want if k not in skip and got[k] != want[k]]
    for key in ("weights_sha256", "config_sha256"):
        if key in sidecar and sidecar[key] != (embedder.weights_hash if key == "weights_sha256" else embedder.config_hash):
            differ.append(key)
    if differ:
        detail = ", ".join(f"{k}: {want.get(k, sidecar.get(k))!r} -> {got.get(k, 'other')!r}" for k in differ[:3])
        raise ConfigError(f"model {spec.name} no longer embeds as the index was embedded ({detail})",
                          hint="search with the model files the index was made with, or embed the input again")
    if got["dtype"] != want["dtype"]:
        embedder.notes.append(f"queries are computed in {got['dtype']}; the index was computed in {want['dtype']}")
    return embedder
