"""`hfenc poolers`, `hfenc archs`, `hfenc info` and `hfenc lock-plan`: the commands about models."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich import box
from rich.text import Text

from hfenc.cli.show import Sheet
from hfenc.cli.base import fail, print_json, print_table, model_spec, app, handles_errors, out, say



@app.command()
@handles_errors
def poolers(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the poolers: name, output (dense, or sparse: SPLADE over a masked-language model's
    logits), aliases, what each computes.

    [b]Examples[/b]

      hfenc poolers

      hfenc poolers --json
    """
    from hfenc.model.catalog import pooler_catalog

    infos = pooler_catalog()  # the built-in registry, without importing torch (a start in < 1 s)
    if json_out:
        print_json(infos)
        return
    table = Sheet(title="Poolers")
    for col in ("name", "output", "aliases", "description"):
        table.add_column(col)
    for p in infos:
        table.add_row(p["name"], p["output"], ", ".join(p["aliases"]), p["description"])
    print_table(table)


@app.command()
@handles_errors
def archs(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the architectures hfenc knows (alias: architectures): block list, embeddings, final
    norm, default pooler.

    [b]Examples[/b]

      hfenc archs

      hfenc architectures --json
    """
    from hfenc.model.archs import ARCHS, arch_names

    rows = [ARCHS[n] for n in arch_names()]
    if json_out:
        print_json([{
            "model_type": a.model_type, "blocks": a.blocks, "embeddings": a.embeddings, "final_norm": a.final_norm,
            "default_pooler": a.default_pooler, "pooling_layer": a.pooling_layer,
            "encoder_decoder": a.encoder_decoder, "model_class": a.model_class,
        } for a in rows])
        return
    # no vertical rules: 7 columns of module paths fit 100 columns (at 80 they are shown stacked)
    table = Sheet(title="Architectures (model types not listed are discovered from the module tree)",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("model type", "blocks", "embeddings", "final norm", "pooler", "enc-dec", "pooling layer"):
        table.add_column(col)
    for a in rows:
        table.add_row(a.model_type, a.blocks, a.embeddings, a.final_norm or "-", a.default_pooler,
                      "yes" if a.encoder_decoder else "no", "yes" if a.pooling_layer else "no")
    print_table(table)


app.command("architectures", hidden=True)(archs)  # the same command under its long name



@app.command()
@handles_errors
def info(
    model: str = typer.Argument("sentence-transformers/all-MiniLM-L6-v2", show_default=False,
                                help="Model name or directory (default: all-MiniLM-L6-v2, as embed)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Describe a model without reading its weights (default: the model embed uses).

    [b]Examples[/b]

      hfenc info sentence-transformers/all-MiniLM-L6-v2

      hfenc info ./my-model --json
    """
    spec = model_spec(model)
    from hfenc.model.describe import describe_model

    data = describe_model(spec)
    if json_out:
        print_json(data)
        return
    table = Sheet(show_header=False, title=f"Model {model}")
    table.add_column(style="bold")
    table.add_column()
    rows = [(k, v) for k, v in data.items() if k != "sparse"]
    sparse = data.get("sparse")
    if sparse:  # a row each: what the output is, its pruning and each side
        kind = "asymmetric" if sparse["asymmetric"] else "one side for queries and documents"
        rows += [("output", f"sparse over {sparse['vocabulary']:,} tokens, {sparse['similarity']} product; {kind}"),
                 ("max active dims", sparse["max_active_dims"]),
                 *((k, v) for k, v in sparse.items() if k.endswith("_side"))]
    for key, value in rows:
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    print_table(table)


# ---- lock-plan ------------------------------------------------------------------------------

_MEMORY = "Memory (with --memory)"


@app.command("lock-plan")
@handles_errors
def lock_plan(
    model: Optional[str] = typer.Argument(None, help="Model name or directory (configs of popular models are bundled)."),
    unlocked: Optional[int] = typer.Option(None, "--unlocked", "-n", help="Blocks left trainable, counted from the top."),
    list_bundled: bool = typer.Option(False, "--list", help="List the bundled model configs (planned offline) and exit."),
    freeze_layer_norm: bool = typer.Option(True, "--freeze-norms/--train-norms",
                                           help="Freeze norm layers in frozen groups too (--train-norms: keep them trainable)."),
    pooler: Optional[str] = typer.Option(None, help="Pooler (cls builds the HF pooling layer where the model has one)."),
    proj: str = typer.Option("none", help="Projection head: none, linear, mlp."),
    dim: Optional[int] = typer.Option(None, help="Output dimension of the projection."),
    style: str = typer.Option("hfenc", help="hfenc, or open_clip to see what open_clip's lock() really does."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
    params: bool = typer.Option(False, "--params", help="List every parameter with its state."),
    memory: bool = typer.Option(False, "--memory", rich_help_panel=_MEMORY,
                                help="Estimate the memory fine-tuning with this plan needs."),
    optimizer: Optional[str] = typer.Option(None, rich_help_panel=_MEMORY, help="adamw (default), adamw8bit, sgd, adafactor."),
    precision: Optional[str] = typer.Option(None, rich_help_panel=_MEMORY, help="fp32 (default), bf16-mixed, fp16-mixed, bf16."),
    batch: Optional[int] = typer.Option(None, rich_help_panel=_MEMORY, help="Sequences per step (default 1)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", rich_help_panel=_MEMORY, help="Tokens per sequence (default: the context length)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", rich_help_panel=_MEMORY, help="Checkpoint every block."),
    attention: Optional[str] = typer.Option(None, rich_help_panel=_MEMORY, help="sdpa (default, where transformers has it) or eager."),
    no_momentum: bool = typer.Option(False, "--no-momentum", rich_help_panel=_MEMORY, help="With --optimizer sgd: plain SGD (default: momentum 0.9)."),
) -> None:
    """Show exactly which parameters fine-tuning with N unlocked layers would freeze.

    Built from the config alone on the meta device: no weights are read. With --memory: the bytes of
    weights, gradients, optimizer states and activations that training with the plan needs, and its
    peak phase (the activation model is in the README).

    [b]Examples[/b]

      hfenc lock-plan bert-base-uncased --unlocked 3

      hfenc lock-plan bert-base-uncased --unlocked 3 --memory --batch 32 --seq-len 128

      hfenc lock-plan xlm-roberta-large --unlocked 2 --proj linear --dim 512

      hfenc lock-plan google/mt5-base --unlocked 0 --train-norms --style open_clip

      hfenc lock-plan --list
    """
    if list_bundled:
        from hfenc.model.resolve import bundled_config_names

        for name in bundled_config_names():
            out.print(name)
        return
    if model is None or unlocked is None:
        raise typer.BadParameter("give MODEL and --unlocked N (or --list for the bundled configs)")
    spec = model_spec(model)
    from hfenc.plans.lock import plan_lock
    from hfenc.plans.memory import estimate_memory

    given = [name for name, value in (("--optimizer", optimizer), ("--precision", precision), ("--batch", batch),
                                      ("--seq-len", seq_len), ("--attention", attention)) if value is not None]
    given += [name for name, on in (("--grad-checkpointing", grad_checkpointing), ("--no-momentum", no_momentum)) if on]
    if given and not memory:
        fail(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --memory", "add --memory", code=2)
    plan = plan_lock(spec, unlocked, freeze_layer_norm=freeze_layer_norm, style=style, pooler=pooler,
                     proj=proj, dim=dim)
    estimate = estimate_memory(
        plan, optimizer=optimizer or "adamw", precision=precision or "fp32", batch=1 if batch is None else batch,
        seq_len=seq_len, grad_checkpointing=grad_checkpointing, attention=attention or "sdpa",
        momentum=not no_momentum,
    ) if memory else None
    if json_out:
        data = plan.to_dict(params=params)
        if estimate is not None:
            data["memory"] = estimate.to_dict()
        print_json(data)
        return
    for warning in plan.warnings:
        say(f"Warning: {warning}", "yellow")
    if estimate is None:
        _render_plan(plan, params)
        return
    for note in estimate.notes:
        say(f"Note: {note}", "dim")
    _render_memory(plan, estimate)


def _render_plan(plan: Any, params: bool) -> None:
    largest = max(g.numel for g in plan.groups)
    table = Sheet(title=f"Lock plan: {plan.model} ({plan.model_type}, {plan.num_layers} blocks, pooler {plan.pooler}), "
                        f"unlocked={plan.unlocked}, style={plan.style}")
    table.add_column("group")
    table.add_column("params", justify="right")
    table.add_column("state")
    table.add_column("", no_wrap=True)
    for g in plan.groups:
        state = plan.state(g)
        style = {"trainable": "green", "frozen": "dim", "partly trainable": "yellow"}[state]
        bar = "█" * max(1, round(20 * g.numel / largest))
        table.add_row(g.name, f"{g.numel:,}", Text(state, style=style), Text(bar, style=style))
        norms_on = sum(s for p, s in zip(g.params, g.sizes) if p in g.norms and p in plan.trainable)
        if state != "trainable" and norms_on:
            table.add_row("  norms", f"{norms_on:,}", Text("trainable", style="green"), "")
        if params:
            for p, s in zip(g.params, g.sizes):
                on = p in plan.trainable
                table.add_row(Text(f"  {p}", style="dim"), f"{s:,}",
                              Text("trainable" if on else "frozen", style="green" if on else "dim"), "")
    table.add_section()
    share = plan.trainable_count / plan.total if plan.total else 0.0
    table.add_row("total", f"{plan.total:,}", f"{plan.trainable_count:,} trainable ({share:.1%})", "")
    print_table(table)


def _size(n: int) -> str:
    """Binary units, as GPU memory is reported (nvidia-smi's MiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} B"


_STATES = {
    "adamw": "exp_avg + exp_avg_sq + steps",
    "adamw8bit": "2 x uint8 + absmax (bnb)",
    "sgd": "momentum buffer (0.9)",
    "adafactor": "factored 2nd moments",
}


def _render_memory(plan: Any, m: Any) -> None:
    """The memory estimate of a lock plan, in 80 columns."""
    from hfenc.plans.memory import PRECISION

    b = PRECISION[m.precision].param
    ckpt = ", checkpointed" if m.grad_checkpointing else ""
    table = Sheet(title=f"Memory: {m.model}, unlocked={m.unlocked}\n{m.optimizer}, {m.precision}, "
                        f"batch {m.batch} x {m.seq_len} tokens, {m.attention} attention{ckpt}")
    table.add_column("part")
    table.add_column("size", justify="right")
    table.add_column("counted")
    table.add_row("weights", _size(m.weights), f"{m.params:,} params x {b} B")
    table.add_row("gradients", _size(m.gradients), f"{m.trainable_params:,} trainable x {b} B")
    states = "none (plain SGD)" if m.optimizer == "sgd" and not m.optimizer_states else _STATES[m.optimizer]
    table.add_row("optimizer states", _size(m.optimizer_states), states)
    table.add_row("master weights", _size(m.master_weights),
                  "none: fp32 weights are the master" if PRECISION[m.precision].copies else "none kept")
    if m.weight_copies:
        table.add_row("weight copies", _size(m.weight_copies), "autocast's 16-bit, for backward")
    if m.grad_checkpointing:
        where = f"inputs of all {plan.num_layers} blocks"
    elif m.lowest_block is None:
        where = "the head only"
    else:
        where = "embeddings and up" if m.lowest_block == 0 and m.unlocked > plan.num_layers else f"layer.{m.lowest_block} and up"
    table.add_row("activations", _size(m.activations), where)
    for name, value in sorted(m.activation_terms, key=lambda kv: -kv[1]):
        table.add_row(Text(f"  {name}", style="dim"), Text(_size(value), style="dim"), "")
    if m.recompute:
        table.add_row("recompute", _size(m.recompute), "one block, during backward")
    if m.step_temporaries:
        table.add_row("step temporaries", _size(m.step_temporaries), "the optimizer update's scratch")
    table.add_section()
    table.add_row("exact parts", _size(m.exact), "weights, gradients, states")
    table.add_row("total", _size(m.total), "every part at once")
    table.add_section()
    held = {"forward": "weights, states, activations", "backward": "+ gradients (upper bound)",
            "optimizer step": "weights, gradients, states"}
    for phase, value in m.phases.items():
        peak = phase == m.peak_phase
        table.add_row(Text(f"{phase}{' (peak)' if peak else ''}", style="bold" if peak else ""),
                      Text(_size(value), style="bold" if peak else ""), held[phase])
    print_table(table)
