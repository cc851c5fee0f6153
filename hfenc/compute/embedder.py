"""Embedder: a loaded model plus every option of an embedding job; `encode()` on top of it.

This is where a model becomes a runnable pipeline: a ModelSpec (resolved once, hfenc.model.spec) gives
the folder and its sentence-transformers layout (pooling, token stage, head modules, Normalize,
prompts, max_seq_length, lower-casing), which become the defaults; HFTextEncoder and the head
modules are built from it and handed to the Engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from hfenc import __version__
from hfenc.model.encoder import HFTextEncoder, build_projection
from hfenc.compute import precision
from hfenc.compute import openvino as openvino_backend
from hfenc.compute.engine import Engine, Progress, TextTokenizer, cpu_has_native_bf16, pad_rows, resolve_device, resolve_dtype
from hfenc.errors import ConfigError, InputError, ModelLoadError, UnknownChoiceError
from hfenc.model.head import Pipeline, build_head, build_token_stage, head_out_dim, load_state
from hfenc.model.resolve import DEFAULT_MODEL, hash_files, weight_files
from hfenc.compute.openvino import BACKENDS
from hfenc.compute.sparse import batch_tokens as sparse_batch_tokens
from hfenc.compute.sparse import (SpladePipeline, StaticPipeline, load_static, refuse_dense_options, sparse_model,
                                  sparse_prompt, sparse_route)
from hfenc.compute.threads import ThreadPolicy
from hfenc.model.spec import ModelSpec, load_spec
from hfenc.model.sparse import SparseBlock, SparseRows


@dataclass(frozen=True)
class EmbedSettings:
    """Every option that changes the numbers; recorded in the sidecar, compared on --resume."""

    model: str
    pooler: str
    proj: str
    proj_weights: str | None
    proj_untrained: bool
    seed: int | None
    normalize: bool
    dim: int
    truncate_dim: int | None
    max_length: int
    prompt: str | None  # the text put before every text (after resolving prompt_name / the default)
    prompt_name: str | None
    include_prompt: bool  # False: the prompt's tokens are left out of the pooling
    lowercase: bool
    padding_side: str
    init_seed: int | None  # seeds an untrained part (a pooling layer the checkpoint lacks)
    dtype: str
    device: str
    batch_tokens: int
    backend: str = "torch"  # "openvino": the transformer run by OpenVINO (hfenc.compute.openvino)
    int8_group_size: int | None = None  # OpenVINO int8: channels per activation scale
    side: str | None = None  # a sparse model's side: query | document (None: plain encode)
    max_active_dims: int | None = None  # sparse: each row's k largest values kept


def library_versions(backend: str) -> dict[str, str]:
    """The versions of what computes the rows: recorded in the sidecar, matched on --resume."""
    return {"hfenc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            **({"openvino": openvino_backend.version()} if backend == "openvino" else {})}


@dataclass(frozen=True)
class EmbedOptions:
    """What to compute, apart from the model; `check()` needs no model, so bad options fail first."""

    pooler: str | None = None
    proj: str | None = None
    dim: int | None = None
    proj_weights: str | Path | None = None
    seed: int | None = None
    normalize: bool | None = None
    truncate_dim: int | None = None
    max_length: int | None = None
    prompt: str | None = None  # literal text ("" for none, overriding the model's default prompt)
    prompt_name: str | None = None  # a prompt the model defines (config_sentence_transformers.json)
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None
    threads: int | None = None  # CPU threads for torch (default: torch's own, all cores)
    backend: str = "torch"  # or "openvino" (the extra `openvino`): the transformer run by OpenVINO
    # OpenVINO int8: channels per activation scale (default: the largest of INT8_GROUPS that keeps
    # the guard); a resumed job, a Ray replica or a search passes the recorded one
    int8_group_size: int | None = None
    side: str | None = None  # sparse models: "query" or "document" (SparseEncoder.encode_query/_document)
    max_active_dims: int | None = None  # sparse models: keep each row's k largest values

    def requested_device(self) -> str:
        """The device asked for; OpenVINO's backend runs on the CPU, so `auto` means the CPU there
        (a Ray job plans its replicas by this too)."""
        auto = self.device.strip().lower() == "auto"
        return "cpu" if auto and self.backend == "openvino" else self.device

    def device_for_backend(self) -> torch.device:
        """The device, resolved here; refused when the backend cannot run on it."""
        device = resolve_device(self.requested_device())
        if self.backend == "openvino" and device.type != "cpu":
            raise ConfigError(f"backend=openvino runs on the CPU, not on {self.device}",
                              hint="use device=cpu, or backend=torch for a GPU")
        return device

    def check(self) -> None:
        from hfenc.model.encoder import PROJ_TYPES
        from hfenc.errors import UnknownChoiceError
        from hfenc.model.poolers import canonical_pooler

        if self.pooler is not None:
            canonical_pooler(self.pooler)
        kind = "none" if self.proj is None else self.proj
        if kind not in PROJ_TYPES:
            raise UnknownChoiceError("projection", self.proj, PROJ_TYPES)
        if self.backend not in BACKENDS:
            raise UnknownChoiceError("backend", self.backend, BACKENDS)
        dtype = resolve_dtype(self.dtype, self.device_for_backend())
        if self.backend == "openvino":
            openvino_backend.openvino()  # a missing extra fails before the model loads
            if dtype == torch.int8:
                openvino_backend.nncf_module()
        elif dtype == torch.int8:
            raise ConfigError("dtype=int8 runs on the OpenVINO backend only",
                              hint="add backend=openvino (pip install 'hfenc[openvino]')")
        if self.int8_group_size is not None:
            if dtype != torch.int8 or self.backend != "openvino":
                raise ConfigError("int8_group_size is for dtype=int8 on backend=openvino")
            if self.int8_group_size not in openvino_backend.INT8_GROUPS:
                raise UnknownChoiceError("int8 group size", str(self.int8_group_size),
                                         [str(g) for g in openvino_backend.INT8_GROUPS])
        for name, value in (("dim", self.dim), ("truncate_dim", self.truncate_dim), ("max_length", self.max_length),
                            ("batch_tokens", self.batch_tokens), ("threads", self.threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be a positive number")
        if kind != "none":
            if self.dim is None:
                raise ConfigError(f"proj={kind} needs dim=N (the output dimension)")
            if self.proj_weights is None and self.seed is None:
                raise ConfigError(
                    f"a {kind} projection needs trained weights",
                    hint="pass proj_weights=FILE, or seed=N to use a random (untrained) projection on purpose",
                )
        elif self.proj_weights is not None:
            raise ConfigError("proj_weights=FILE needs a projection type: proj=linear or proj=mlp")
        if self.side not in (None, "query", "document"):
            raise UnknownChoiceError("side", self.side, ("query", "document"))
        if self.max_active_dims is not None and (isinstance(self.max_active_dims, bool) or self.max_active_dims < 1):
            raise ConfigError(f"max_active_dims={self.max_active_dims} must be a positive number")
        if self.prompt is not None and self.prompt_name is not None:
            raise ConfigError("give --prompt TEXT or --prompt-name NAME, not both")
        if self.proj_weights is not None and not Path(self.proj_weights).is_file():
            raise ConfigError(f"projection weights file {self.proj_weights} does not exist")


def _init_pooling_layer(pooler: Any, config: Any, seed: int) -> None:
    """BERT's own init for its pooling layer (normal(0, initializer_range), zero bias), seeded."""
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, param in pooler.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * std)


class Embedder:
    """A model ready to embed, with its options fixed. Reuse it across calls."""

    def __init__(self, model: str | ModelSpec = DEFAULT_MODEL, **options: Any) -> None:
        """`options` are EmbedOptions' fields (pooler, proj, dim, ..., batch_tokens)."""
        o = self.options = EmbedOptions(**options)
        o.check()
        self.device = o.device_for_backend()
        compute_dtype = resolve_dtype(o.dtype, self.device)
        # torch's threads (process-wide, as OMP_NUM_THREADS would be): --threads, else the cores
        # free now, re-counted between batches; the first count is made over the model's load
        self.threads = ThreadPolicy(o.threads)
        self.notes: list[str] = []  # things the user should hear about (the CLI prints them)
        if o.backend == "openvino" and compute_dtype in (torch.bfloat16, torch.float16):
            if not openvino_backend.native(compute_dtype):
                name = str(compute_dtype).removeprefix("torch.")
                self.notes.append(f"OpenVINO computes no native {name} on this CPU; computing in float32")
                compute_dtype = torch.float32
        elif self.device.type == "cpu" and compute_dtype == torch.bfloat16 and not cpu_has_native_bf16():
            # Issue 5: bf16 where the CPU supports it; emulated bf16 is ~6x slower than float32.
            self.notes.append("this CPU has no native bfloat16 (AVX512-BF16/AMX); computing in float32")
            compute_dtype = torch.float32
        spec = self.spec = load_spec(model)
        if spec.resolved is None:
            raise ModelLoadError(f"model {model!r} has no weights on this machine (only its bundled config)")
        self.resolved, layout = spec.resolved, spec.layout
        self.layout = layout
        self.notes.extend(layout.notes)
        self.model_name = str(model if isinstance(model, str) else spec.name)
        self.sparse = sparse_model(layout, o.pooler)
        if self.sparse:
            self._init_sparse(compute_dtype)
            return
        if o.side is not None or o.max_active_dims is not None:
            raise ConfigError(f"side and max_active_dims are for sparse (SPLADE) models; {spec.name} makes dense "
                              "embeddings", hint="for a dense model's query prompt, use prompt_name=query")
        proj_kind = None if o.proj in (None, "none") else o.proj
        if proj_kind is not None and layout.head:
            raise ConfigError("this model has its own modules after pooling; proj=linear|mlp cannot be added to it")
        # Issue 14: loaded in float32; bf16/fp16 are applied below to the Linear weights only
        # (hfenc.compute.precision), so norms, buffers and transformers' float32 modules stay float32.
        self.encoder = HFTextEncoder(spec, pooler_type=o.pooler or layout.pooler,
                                     dtype=precision.load_dtype(compute_dtype))
        init_seed = None
        if any(k.startswith("pooler.") for k in self.encoder.missing_keys):
            # Issue 10: the checkpoint has no trained pooling layer; make the random one the same
            # in every run (and every resumed run), seeded by --seed (default 0).
            init_seed = 0 if o.seed is None else o.seed
            _init_pooling_layer(self.encoder.transformer.pooler, self.encoder.config, init_seed)
        width = self.encoder.pooled_width
        if proj_kind is not None:
            assert o.dim is not None  # EmbedOptions.check
            if o.seed is not None:
                torch.manual_seed(o.seed)
            self.encoder.proj = build_projection(width, o.dim, proj_kind)
            self.encoder.proj_type, self.encoder.output_dim = proj_kind, o.dim
            if o.proj_weights is not None:
                state = {k.removeprefix("proj."): v for k, v in load_state(Path(o.proj_weights)).items()
                         if not k.startswith("transformer.")}
                try:
                    self.encoder.proj.load_state_dict(state)
                except RuntimeError as exc:
                    raise ConfigError(
                        f"{o.proj_weights} does not fit a {proj_kind} projection {width} -> {o.dim}: "
                        f"{str(exc).splitlines()[0]}"
                    ) from exc
        out_dim = head_out_dim(layout, self.encoder.output_dim)
        if proj_kind is None and o.dim is not None and o.dim != out_dim:
            raise ConfigError(
                f"dim={o.dim} differs from the model's output width {out_dim} and there is no projection",
                hint="use truncate_dim=N for Matryoshka models, or proj=linear|mlp with proj_weights=FILE",
            )
        if o.truncate_dim is not None and not 1 <= o.truncate_dim <= out_dim:
            raise ConfigError(f"truncate_dim={o.truncate_dim} must be between 1 and the output width {out_dim}")
        self.dim = o.truncate_dim or out_dim
        self.normalize = bool(layout.normalize if o.normalize is None else o.normalize)

        context = self.encoder.context_length
        hf_tok = self._load_tokenizer(spec.transformer_path)
        self.max_length = self._max_length(hf_tok, layout.max_seq_length, context)
        prompt_name, prompt_text = self._prompt(layout)
        self.tokenizer = TextTokenizer(hf_tok, self.max_length, prompt_text, layout.do_lower_case)
        include_prompt = layout.pooling.include_prompt if layout.pooling else True
        skip = 0 if include_prompt or not prompt_text else self.tokenizer.prompt_length()
        self.pipeline = Pipeline(self.encoder, build_head(layout), build_token_stage(layout),
                                 o.truncate_dim, self.normalize, skip)
        self.probe_min_cosine: float | None = None
        self.conversion_min_cosine: float | None = None  # OpenVINO float32 vs torch float32
        self._int8_group: int | None = None
        self.threads.count()  # the free cores, counted over the model's load: the probes run with them
        if o.backend == "openvino":
            compute_dtype = self._openvino(compute_dtype)
            # the pipeline's torch parts (head, pooling) run float32; the budget is the precision's
            budget = o.batch_tokens or openvino_backend.BATCH_TOKENS[compute_dtype]
            self.engine = Engine(self.pipeline, self.tokenizer, self.device, torch.float32, budget)
        else:
            compute_dtype = self._precision(compute_dtype)
            self.engine = Engine(self.pipeline, self.tokenizer, self.device, compute_dtype, o.batch_tokens,
                                 threads=self.threads)
        self.settings = EmbedSettings(
            model=self.model_name, pooler=self.encoder.pooler_type,
            proj=proj_kind or "none",
            proj_weights=str(o.proj_weights) if o.proj_weights is not None else None,
            proj_untrained=proj_kind is not None and o.proj_weights is None, seed=o.seed,
            normalize=self.normalize, dim=self.dim, truncate_dim=o.truncate_dim,
            max_length=self.max_length, prompt=prompt_text or None, prompt_name=prompt_name,
            include_prompt=include_prompt, lowercase=layout.do_lower_case,
            padding_side="left" if self.tokenizer.left_pad else "right", init_seed=init_seed,
            dtype=str(compute_dtype).removeprefix("torch."),
            device=str(self.device), batch_tokens=self.engine.batch_tokens, backend=o.backend,
            int8_group_size=self._int8_group,
        )
        self._weights_hash: str | None = None

    def _load_tokenizer(self, folder: Path) -> Any:
        """The tokenizer in `folder` (a module folder without one: the model's root)."""
        if not ((folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()):
            folder = self.resolved.path
        self.tokenizer_path = folder
        try:
            return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                              trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from exc

    def _max_length(self, hf_tok: Any, configured: int | None, context: int | None) -> int:
        """max_length, else the smallest of the module's max_seq_length, the tokenizer's and the
        model's positions."""
        o = self.options
        limits = [x for x in (configured, hf_tok.model_max_length, context) if x and x < 1_000_000]
        if o.max_length is not None and context is not None and o.max_length > context:
            raise ConfigError(f"max_length={o.max_length} exceeds the model's {context} positions")
        return int(o.max_length or (min(limits) if limits else 512))

    def _init_sparse(self, compute_dtype: torch.dtype) -> None:
        """A sparse model's side (hfenc.compute.sparse): its route, tokenizer, pipeline and engine."""
        o, spec, layout = self.options, self.spec, self.layout
        refuse_dense_options(o)
        route, pooler = sparse_route(layout, o, spec.name)
        k = o.max_active_dims if o.max_active_dims is not None else (layout.sparse.max_active_dims
                                                                     if layout.sparse is not None else None)
        prompt_name, prompt_text = sparse_prompt(layout, o) if o.side is not None else self._prompt(layout)
        self.normalize, self._int8_group = False, None
        self.probe_min_cosine = self.conversion_min_cosine = None
        if route.kind == "static":
            self.encoder = None
            hf_tok = self._load_tokenizer(route.static_path)
            self.max_length = self._max_length(hf_tok, None, None)
            self.pipeline = StaticPipeline(load_static(route.static_path, len(hf_tok.get_vocab())), k)
            self.tokenizer = TextTokenizer(hf_tok, self.max_length, prompt_text, special_tokens=False)
            compute_dtype = torch.float32  # a lookup: nothing to compute in another dtype
            self.dim = int(self.pipeline.weight.shape[0])
        else:
            self.encoder = HFTextEncoder(spec, pooler_type=pooler, dtype=precision.load_dtype(compute_dtype))
            self.encoder.pooler.activation = route.splade.activation if route.splade else "relu"
            if self.encoder.missing_keys:
                raise ModelLoadError(f"{spec.name}: the checkpoint lacks {self.encoder.missing_keys[0]}; a sparse "
                                     "model needs its masked-language head's trained weights")
            hf_tok = self._load_tokenizer(route.transformer_path)
            self.max_length = self._max_length(hf_tok, route.max_seq_length, self.encoder.context_length)
            self.tokenizer = TextTokenizer(hf_tok, self.max_length, prompt_text, route.do_lower_case)
            self.pipeline = SpladePipeline(self.encoder, k)
            self.dim = self.encoder.pooled_width
            if o.dtype == "auto" and self.device.type == "cpu":
                compute_dtype = torch.float32  # the bf16 probe compares dense vectors; sparse ones stay exact
            compute_dtype, _ = precision.prepare(self.encoder.transformer, compute_dtype, self.device)
        self.threads.count()
        self.engine = Engine(self.pipeline, self.tokenizer, self.device, compute_dtype,
                             o.batch_tokens or sparse_batch_tokens(self.device), threads=self.threads)
        self.sparse_info = {"vocab_size": self.dim, "route": route.kind, "side": o.side,
                            "pooling": route.splade.strategy if route.splade else None,
                            "activation": self.encoder.pooler.activation if self.encoder is not None else None,
                            "max_active_dims": k, "similarity": "dot",
                            "asymmetric": bool(layout.sparse is not None and layout.sparse.asymmetric)}
        self.settings = EmbedSettings(
            model=self.model_name, pooler=pooler, proj="none", proj_weights=None, proj_untrained=False,
            seed=o.seed, normalize=False, dim=self.dim, truncate_dim=None, max_length=self.max_length,
            prompt=prompt_text or None, prompt_name=prompt_name, include_prompt=True, lowercase=self.tokenizer.lowercase,
            padding_side="left" if self.tokenizer.left_pad else "right", init_seed=None,
            dtype=str(compute_dtype).removeprefix("torch."), device=str(self.device),
            batch_tokens=self.engine.batch_tokens, backend="torch", side=o.side, max_active_dims=k)
        self._weights_hash = None

    def _precision(self, dtype: torch.dtype) -> torch.dtype:
        """Apply the compute dtype's scheme (hfenc.compute.precision). `auto` bf16 on a CPU is kept only
        if it holds the min cosine to float32 on the probe texts, measured here (issue 14)."""
        o = self.options
        guard = None
        if o.dtype == "auto" and dtype == torch.bfloat16 and self.device.type == "cpu":
            guard = precision.AUTO_BF16_MIN_COSINE

        used, cos = precision.prepare(self.encoder.transformer, dtype, self.device, self._probe, guard)
        self.probe_min_cosine = cos
        return used

    def _probe(self, dtype: torch.dtype = torch.float32, texts: Sequence[str] = precision.PROBE_TEXTS) -> np.ndarray:
        """`texts` embedded by the pipeline as it stands, computing in `dtype`."""
        tok = self.tokenizer(list(texts))
        out = np.empty((len(tok.lengths), self.dim), np.float32)
        Engine(self.pipeline, self.tokenizer, self.device, dtype, self.options.batch_tokens).embed_tokenized(tok, out)
        return out

    def _openvino(self, dtype: torch.dtype) -> torch.dtype:
        """Swap the transformer for its OpenVINO conversion (hfenc.compute.openvino), checked on
        PROBE_TEXTS against torch float32: the conversion must reproduce it, int8 must keep
        INT8_MIN_COSINE (else refused, with the figure), `auto` bf16 AUTO_BF16_MIN_COSINE (else
        float32). Returns the dtype computed in."""
        ov = openvino_backend
        if self.pipeline.token_stage is not None:
            raise ConfigError("backend=openvino: this model pools over every layer's hidden states "
                              "(WeightedLayerPooling), which the OpenVINO backend does not return",
                              hint="use backend=torch")
        # the probe texts and one row of max_length tokens (a traced branch on length shows there)
        texts = (*precision.PROBE_TEXTS, " ".join(precision.PROBE_TEXTS * 20))
        reference = self._probe(texts=texts)
        torch_transformer = self.encoder.transformer
        tok = self.tokenizer(list(precision.PROBE_TEXTS[:2]))
        ids, mask = pad_rows(tok, np.arange(2), self.tokenizer.pad_id, self.tokenizer.left_pad)
        with_pooler = self.encoder.uses_pooling_layer
        model = ov.convert(torch_transformer, ids, mask, with_pooler)
        threads = self.threads.current  # OpenVINO's threads are fixed when it compiles

        def use(dt: torch.dtype, compiled_from: Any = model, group: int | None = None) -> float:
            compiled = ov.compile_model(compiled_from, dt, threads, group)
            self.encoder.transformer = ov.OpenVINOTransformer(compiled, self.encoder.config, with_pooler)
            return precision.min_cosine(self._probe(texts=texts), reference)

        self.conversion_min_cosine = use(torch.float32)
        float32_transformer = self.encoder.transformer
        if self.conversion_min_cosine < ov.CONVERSION_MIN_COSINE:
            self.encoder.transformer = torch_transformer
            raise ModelLoadError(f"OpenVINO's conversion of this {self.encoder.config.model_type} model does not "
                                 f"reproduce torch: min cosine {self.conversion_min_cosine:.6f} on hfenc's probe "
                                 f"texts (needs {ov.CONVERSION_MIN_COSINE})", hint="use backend=torch")
        if dtype == torch.float32:
            return dtype
        if dtype == torch.int8:
            compressed = ov.compress(model)
            groups = (self.options.int8_group_size,) if self.options.int8_group_size else ov.INT8_GROUPS
            for group in groups:  # the largest (fastest) group of channels that holds
                cos = self.probe_min_cosine = use(dtype, compressed, group)
                if cos >= precision.INT8_MIN_COSINE:
                    self._int8_group = group
                    return dtype
            raise ConfigError(f"int8 keeps only min cosine {cos:.4f} to float32 on hfenc's probe texts with this "
                              f"model (needs {precision.INT8_MIN_COSINE})", hint="use dtype=bfloat16 or dtype=float32")
        cos = self.probe_min_cosine = use(dtype)
        if self.options.dtype == "auto" and cos < precision.AUTO_BF16_MIN_COSINE:
            self.encoder.transformer = float32_transformer
            return torch.float32
        return dtype

    def _prompt(self, layout) -> tuple[str | None, str]:
        """(name, text) of the prompt put before every text, as sentence-transformers resolves it:
        an explicit prompt, else a named one (which must exist), else the model's default."""
        o = self.options
        if o.prompt is not None:
            return None, o.prompt
        name = o.prompt_name if o.prompt_name is not None else layout.default_prompt_name
        if name is None:
            return None, ""
        if name not in layout.prompts:
            if not layout.prompts:
                raise ConfigError(f"prompt name {name!r}: this model defines no prompts",
                                  hint="give the text itself with prompt=TEXT")
            raise UnknownChoiceError("prompt name", name, layout.prompts)
        return name, layout.prompts[name]

    @property
    def weights_hash(self) -> str:
        if self._weights_hash is None:
            # Everything that holds weights: the transformer, sentence-transformers Dense layers
            # and a projection file, so --resume notices any of them changing.
            files = weight_files(self.layout.transformer_path)
            files += [f for path in self.layout.module_paths for f in weight_files(path)]
            if self.options.proj_weights is not None:
                files.append(Path(self.options.proj_weights))
            self._weights_hash = hash_files(files)
        return self._weights_hash

    @cached_property
    def config_hash(self) -> str:
        """The pipeline's configuration and tokenizer files (everything but weights), so --resume
        notices a changed tokenizer, module config or prompt file (issue 10)."""
        folders = {self.resolved.path, self.layout.transformer_path, self.tokenizer_path, *self.layout.module_paths}
        files = sorted({f for d in folders for f in d.iterdir()
                        if f.is_file() and f.suffix in _CONFIG_SUFFIXES and f not in set(weight_files(d))},
                       key=lambda f: (f.parent.name, f.name))
        return hash_files(files)

    def describe(self) -> dict[str, Any]:
        """How this embedder makes its numbers (the sidecar's model part)."""
        return {
            **asdict(self.settings),
            "model_path": self.resolved.shown,
            "model_source": self.resolved.source,
            "model_type": self.spec.config.model_type,
            "architecture_discovered": self.encoder.arch.discovered if self.encoder is not None else False,
            "weights_sha256": self.weights_hash,
            "config_sha256": self.config_hash,
            "threads": self.threads.current,
            "thread_policy": self.threads.record(),
            # the probe's min cosine to float32 of `--dtype auto`'s bf16 on a CPU, or of the OpenVINO
            # backend's bf16/int8 (None: not probed); and of OpenVINO's float32 conversion
            "probe_min_cosine": None if self.probe_min_cosine is None else round(self.probe_min_cosine, 6),
            **({"conversion_min_cosine": round(self.conversion_min_cosine, 6)}
               if self.conversion_min_cosine is not None else {}),
            "versions": library_versions(self.options.backend),
            **({"sparse": self.sparse_info} if self.sparse else {}),
        }

    def encode(self, texts: str | Iterable[str], progress: Callable[[Progress], None] | None = None,
               chunk_size: int = 16384, out_dtype: Any = np.float32) -> np.ndarray:
        """Embed `texts` (a list, or any iterable, streamed chunk by chunk); returns an (n, dim)
        array in input order, or one (dim,) vector for a single string (as sentence-transformers
        does); a sparse model returns SparseRows (CSR; one row for a single string). A non-string
        item is refused with its index."""
        if isinstance(texts, str):
            one = self.encode([texts], progress, chunk_size, out_dtype)
            return one if self.sparse else one[0]
        total = len(texts) if isinstance(texts, Sequence) else None

        def chunks() -> Iterator[tuple[int, list[str]]]:
            batch: list[str] = []
            seen = 0
            for text in texts:
                if not isinstance(text, str):
                    kind = ("a pair of texts (hfenc embeds single texts only)" if isinstance(text, (tuple, list))
                            else "None" if text is None else f"a {type(text).__name__}")
                    raise InputError(f"encode() takes strings; item {seen} is {kind}")
                batch.append(text)
                seen += 1
                if len(batch) == chunk_size:
                    yield seen - len(batch), batch
                    batch = []
            if batch:
                yield seen - len(batch), batch

        if self.sparse:  # a SparseBlock per chunk, joined at the end (CSR rows are small)
            blocks: list[SparseBlock] = []

            def block(start: int, n: int) -> SparseBlock:
                blocks.append(SparseBlock(n, self.dim))
                return blocks[-1]

            self.engine.run(chunks(), block, progress=progress, rows_total=total)
            return SparseRows.concat([b.rows() for b in blocks], self.dim)
        if total is not None:  # a sized input: rows go straight into one array
            out = np.empty((total, self.dim), dtype=out_dtype)
            self.engine.run(chunks(), lambda start, n: out[start : start + n], progress=progress, rows_total=total)
            return out
        parts: list[np.ndarray] = []  # a stream: one array per chunk, joined at the end

        def dest(start: int, n: int) -> np.ndarray:
            parts.append(np.empty((n, self.dim), dtype=out_dtype))
            return parts[-1]

        self.engine.run(chunks(), dest, progress=progress)
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=out_dtype)


_CONFIG_SUFFIXES = {".json", ".txt", ".model", ".vocab", ".tiktoken"}  # configs, vocabularies, merges
_CACHE: dict[tuple, Embedder] = {}


def encode(
    texts: str | Iterable[str],
    model: str = DEFAULT_MODEL,
    *,
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """Embed texts with `model`; returns an (n, d) float32 array in input order (a (d,) vector
    for one string).

    Options are Embedder's: pooler, proj, dim, proj_weights, seed, normalize, truncate_dim,
    max_length, prompt, prompt_name, device, dtype, batch_tokens. The last loaded model is kept
    for reuse."""
    key = (model, tuple(sorted(options.items())))
    embedder = _CACHE.get(key)
    if embedder is None:
        _CACHE.clear()  # hold one model at a time
        embedder = _CACHE[key] = Embedder(model, **options)
    return embedder.encode(texts, progress=progress)
