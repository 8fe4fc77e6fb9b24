"""Random-weight models with the production models' shapes, for timing the servers where the real
weights cannot be fetched. Speed and memory do not depend on the weights' values, so a pass over
these takes as long as over the real models. Their answers mean nothing.

    python build_shape_standins.py TOKENIZER_DIR OUT_DIR

TOKENIZER_DIR: a sentence-transformers folder whose tokenizer and config to use (all-MiniLM-L6-v2, as
support-services.sh extracts it). OUT_DIR gets four model folders:

    minilm-emb, minilm-rr   all-MiniLM-L6-v2's own shape: an embedding model and a cross-encoder
    m3-emb, m3-rr           XLM-RoBERTa large, as BGE-M3 and bge-reranker-v2-m3 (24 layers, hidden 1024,
                            16 heads, FFN 4096; CLS pooling and 1024-d vectors for the embedding model)

The m3 models keep MiniLM's WordPiece tokenizer, so their vocabulary is 30,522 tokens where the real
ones have 250,002. That leaves (250,002 - 30,522) x 1024 x 2 B = 428 MiB of fp16 embeddings out of any
GPU memory figure. The tokenizer's pairs carry token type 1, so type_vocab_size is 2 (XLM-R's is 1, and
its tokenizer makes no types). docs/support-load.md has what they measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, XLMRobertaConfig

try:  # sentence-transformers >= 6 (the old path warns)
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
except ImportError:
    from sentence_transformers.models import Normalize, Pooling, Transformer


def embedding_model(config, tokenizer, out: Path, pooling: str) -> None:
    body = out.with_name(out.name + "-body")
    AutoModel.from_config(config).save_pretrained(body)
    tokenizer.save_pretrained(body)
    modules = [Transformer(str(body), max_seq_length=512), Pooling(config.hidden_size, pooling), Normalize()]
    SentenceTransformer(modules=modules).save(str(out))


def cross_encoder(config, tokenizer, out: Path) -> None:
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    embedding_model(AutoConfig.from_pretrained(source), tokenizer, out / "minilm-emb", "mean")
    cross_encoder(AutoConfig.from_pretrained(source), tokenizer, out / "minilm-rr")

    def m3() -> XLMRobertaConfig:
        return XLMRobertaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=8194,
            type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id,
        )

    embedding_model(m3(), tokenizer, out / "m3-emb", "cls")
    cross_encoder(m3(), tokenizer, out / "m3-rr")
    print("built:", ", ".join(sorted(p.name for p in out.iterdir() if not p.name.endswith("-body"))))


if __name__ == "__main__":
    main()
