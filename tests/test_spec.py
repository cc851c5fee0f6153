"""A model resolved once (hfenc.model.spec): embed, info and lock-plan agree on its pipeline; the
library's input contract (one string, non-strings); prompts resolved as sentence-transformers
does; --dim checked against the real output width (issue 9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hfenc
from hfenc.cli import app
from hfenc.model.describe import describe_model
from hfenc.errors import ConfigError, InputError, UnknownChoiceError
from hfenc.model.poolers import get_pooler, pooler_names

MINILM_PARAMS = 22_565_376  # BertModel without its pooling layer: all-MiniLM-L6-v2 pools by mean


@pytest.fixture(scope="module")
def st_dense(tiny_model_dir, tmp_path_factory) -> Path:
    """A sentence-transformers folder written by sentence-transformers: bert -> mean -> Dense(32->16)
    -> Normalize, with prompts and no default prompt."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    torch.manual_seed(1)
    t = models.Transformer(str(tiny_model_dir("bert")), max_seq_length=24)
    modules = [t, models.Pooling(32, pooling_mode="mean"),
               models.Dense(32, 16, activation_function=torch.nn.Tanh()), models.Normalize()]
    out = tmp_path_factory.mktemp("st") / "dense"
    SentenceTransformer(modules=modules, prompts={"query": "query: ", "passage": "passage: "}).save(str(out))
    return out


@pytest.fixture(scope="module")
def st_old_layout(st_dense, tmp_path_factory) -> Path:
    """The same model in the older layout: the transformer in 0_Transformer/."""
    out = tmp_path_factory.mktemp("st") / "old"
    shutil.copytree(st_dense, out)
    (out / "0_Transformer").mkdir()
    for f in list(out.iterdir()):
        if f.is_file() and f.name not in ("modules.json", "config_sentence_transformers.json", "README.md"):
            f.rename(out / "0_Transformer" / f.name)
    modules = json.loads((out / "modules.json").read_text())
    modules[0].update(path="0_Transformer", type="sentence_transformers.models.Transformer")
    (out / "modules.json").write_text(json.dumps(modules))
    return out


def _pipeline_params(embedder) -> int:
    return sum(p.numel() for p in embedder.pipeline.parameters())


def test_minilm_lock_plan_info_and_embed_agree(minilm_dir):
    runner = CliRunner()
    plan = runner.invoke(app, ["lock-plan", "sentence-transformers/all-MiniLM-L6-v2", "--unlocked", "2", "--json"])
    assert plan.exit_code == 0, plan.stderr
    data = json.loads(plan.stdout)
    info = json.loads(runner.invoke(app, ["info", "sentence-transformers/all-MiniLM-L6-v2", "--json"]).stdout)
    embedder = hfenc.Embedder(str(minilm_dir), device="cpu")
    assert data["total_params"] == info["parameters"] == _pipeline_params(embedder) == MINILM_PARAMS
    assert data["pooler"] == info["default_pooler"] == embedder.settings.pooler == "mean"
    assert not any(g["kind"] == "pooling_layer" for g in data["groups"])


@pytest.mark.parametrize("layout", ["st_dense", "st_old_layout"])
def test_sentence_transformers_folders_plan_with_their_own_modules(layout, request):
    folder = request.getfixturevalue(layout)
    embedder = hfenc.Embedder(str(folder), device="cpu")
    plan = hfenc.plan_lock(str(folder), 1)
    assert plan.total == describe_model(str(folder))["parameters"] == _pipeline_params(embedder)
    head = [g for g in plan.groups if g.kind == "head"]
    assert len(head) == 1 and head[0].numel == 32 * 16 + 16  # the Dense layer, always trainable
    assert plan.group_trainable(head[0]) == head[0].numel
    assert plan.pooler == "mean"


def test_old_and_new_layouts_embed_alike(st_dense, st_old_layout):
    texts = ["hello world", "the big red dog and a small cat", ""]
    np.testing.assert_array_equal(hfenc.encode(texts, model=str(st_dense), device="cpu"),
                                  hfenc.encode(texts, model=str(st_old_layout), device="cpu"))


def test_dim_is_checked_against_the_dense_output(st_dense):
    assert hfenc.Embedder(str(st_dense), device="cpu", dim=16).dim == 16
    with pytest.raises(ConfigError, match="output width 16"):
        hfenc.Embedder(str(st_dense), device="cpu", dim=32)  # the transformer's width, not the output's


def test_encode_one_string_gives_one_vector(st_dense):
    one = hfenc.encode("hello world", model=str(st_dense), device="cpu")
    assert one.shape == (16,) and one.dtype == np.float32
    np.testing.assert_array_equal(one, hfenc.encode(["hello world"], model=str(st_dense), device="cpu")[0])


@pytest.mark.parametrize("item, needle", [(None, "item 1 is None"), (("a", "b"), "pair"), (3, "item 1 is a int")])
def test_encode_refuses_non_strings(st_dense, item, needle):
    with pytest.raises(InputError, match=needle):
        hfenc.encode(["fine", item], model=str(st_dense), device="cpu")


def test_prompt_names_are_checked(st_dense, tiny_model_dir):
    with pytest.raises(UnknownChoiceError, match="passage, query"):
        hfenc.Embedder(str(st_dense), device="cpu", prompt_name="qurey")
    with pytest.raises(ConfigError, match="not both"):
        hfenc.Embedder(str(st_dense), device="cpu", prompt_name="query", prompt="x: ")
    with pytest.raises(ConfigError, match="defines no prompts"):
        hfenc.Embedder(str(tiny_model_dir("bert")), device="cpu", prompt_name="query")
    named = hfenc.Embedder(str(st_dense), device="cpu", prompt_name="query")
    literal = hfenc.Embedder(str(st_dense), device="cpu", prompt="query: ")
    assert named.settings.prompt == literal.settings.prompt == "query: "
    assert named.settings.prompt_name == "query" and literal.settings.prompt_name is None
    np.testing.assert_array_equal(named.encode(["a dog"]), literal.encode(["a dog"]))
    assert not np.array_equal(named.encode(["a dog"]), hfenc.Embedder(str(st_dense), device="cpu").encode(["a dog"]))


def test_cli_prompt_name_is_recorded_in_the_sidecar(st_dense, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello world\nthe cat\n")
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(app, ["embed", str(src), "-m", str(st_dense), "-o", str(out),
                                      "--prompt-name", "passage", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["prompt"] == "passage: " and side["prompt_name"] == "passage"
    bad = CliRunner().invoke(app, ["embed", str(src), "-m", str(st_dense), "-o", str(tmp_path / "b.npy"),
                                   "--prompt-name", "nope", "--device", "cpu"])
    assert bad.exit_code == 1 and "choose one of: document, passage, query" in bad.stderr  # ST adds document: ""
    assert not (tmp_path / "b.npy").exists()


@pytest.mark.parametrize("name", [n for n in pooler_names() if n != "cls"])  # cls: below
def test_every_pooler_gives_zeros_for_a_row_with_nothing_to_pool(name):
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = get_pooler(name)(type("Out", (), {"last_hidden_state": hidden})(), mask)
    assert torch.equal(out[1], torch.zeros(4))
    other = get_pooler(name)(type("Out", (), {"last_hidden_state": hidden * 7})(), mask)
    assert torch.equal(other[1], torch.zeros(4))  # not a pad's state: independent of the batch


def test_cls_without_a_pooling_layer_gives_zeros_for_an_empty_row():
    hidden = torch.randn(1, 3, 4)
    out = get_pooler("cls")(type("Out", (), {"last_hidden_state": hidden})(), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(out[0], torch.zeros(4))


def test_skipped_prompt_tokens_are_not_pooled():
    hidden = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    x = type("Out", (), {"last_hidden_state": hidden})()
    assert torch.equal(get_pooler("mean")(x, mask, skip=2), hidden[0, 2:4].mean(0, keepdim=True))
    assert torch.equal(get_pooler("cls_last_hidden_state")(x, mask, skip=2), hidden[:, 2])
    # weighted mean keeps the original positions' weights (3 and 4), as sentence-transformers does
    expected = (hidden[0, 2] * 3 + hidden[0, 3] * 4) / 7
    torch.testing.assert_close(get_pooler("weighted_mean")(x, mask, skip=2)[0], expected)


def test_combined_poolers_concatenate_in_order():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    x = type("Out", (), {"last_hidden_state": hidden})()
    both = get_pooler("mean+max")(x, mask)
    assert torch.equal(both, torch.cat([get_pooler("mean")(x, mask), get_pooler("max")(x, mask)], dim=-1))
    with pytest.raises(UnknownChoiceError):
        get_pooler("cls+mean")  # the model's pooling layer output cannot be combined


def _edited_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_model_that_needs_its_own_code_is_refused(tiny_model_dir, tmp_path):
    folder = _edited_copy(tiny_model_dir("bert"), tmp_path / "custom", model_type="my_custom_bert",
                          auto_map={"AutoModel": "modeling_custom.CustomModel"})
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    result = CliRunner().invoke(app, ["embed", str(src), "-m", str(folder), "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 1 and "never runs a model's own code" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.npy").exists()


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(tiny_model_dir, tmp_path):
    # transformers knows this type, but the BERT weights do not fit it: it would fill them at random
    folder = _edited_copy(tiny_model_dir("bert"), tmp_path / "wrong", model_type="nomic_bert")
    with pytest.raises(hfenc.HfencError, match="lacks .* weight"):
        hfenc.Embedder(str(folder), device="cpu")


def test_a_folder_whose_texts_go_through_a_chat_template_is_refused(tiny_model_dir, tmp_path):
    """sentence-transformers 6 saves `modality_config` with 'message' for a tokenizer with a chat
    template and then wraps every plain text in that template; hfenc does not, so it refuses."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    base = tmp_path / "qwen3"
    shutil.copytree(tiny_model_dir("qwen3"), base)
    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    tok.save_pretrained(str(base))
    st = SentenceTransformer(modules=[models.Transformer(str(base)), models.Pooling(32, pooling_mode="lasttoken")])
    assert st.preprocess(["hello"])["input_ids"].shape[1] > 2  # the template really is applied
    st.save(str(tmp_path / "st"))
    with pytest.raises(hfenc.HfencError, match="chat template"):
        hfenc.Embedder(str(tmp_path / "st"), device="cpu")
