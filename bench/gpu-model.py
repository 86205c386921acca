"""The GPU benchmark's model: a Llama-architecture model with seeded random weights, in the shape
of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192; untied output, no RoPE
scaling) with SmolLM2's real tokenizer (vocabulary 49,152, ChatML template), so prompts and answers
are real text and no weights have to travel. Needs numpy and llama.cpp's gguf-py (the kit carries
it); no torch, no network.

  python3 gpu-model.py --tokenizer-from SMOLLM2.gguf TOKDIR
      (here, by bench/gpu-kit.sh) SmolLM2's tokenizer from its GGUF: tokenizer.json,
      tokenizer_config.json, generation_config.json, and the GGUF tokenizer fields
      (gguf-tokenizer.json)
  python3 gpu-model.py [--tiny] TOKDIR OUT
      OUT/st/    config.json, tokenizer files, model.safetensors (BF16)   -> --format safetensors
      OUT/gguf/  model-f16.gguf (the same numbers as F16)               -> llama-quantize, both servers
      --tiny: 2 layers, hidden 256 (the CPU rehearsal)

The weights are draws from N(0, 0.02) (norms 1): a pool of 2^24 draws rounded to BF16, each tensor
cut from it at seeded offsets, so a 1.2B model is written in seconds. BF16 values are exact in F16
(the pool avoids F16's subnormal range), so both formats hold the same numbers (norms, all ones,
are F32 in the GGUF as llama.cpp's converter writes them).
"""

import json
import os
import struct
import sys
import time

import numpy as np

FULL = dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, ctx=8192, rope_theta=500000.0)
TINY = dict(hidden=256, layers=2, heads=4, kv_heads=2, ffn=768, ctx=2048, rope_theta=500000.0)


def import_gguf():
    # FERRY_GGUF_PY: the kit's copy of llama.cpp's gguf-py (bench/gpu-run.sh unpacks it), used
    # before any installed gguf package.
    if os.environ.get("FERRY_GGUF_PY"):
        sys.path.insert(0, os.environ["FERRY_GGUF_PY"])
    import gguf

    return gguf


def tokenizer_from(gguf_path, out):
    gguf = import_gguf()
    r = gguf.GGUFReader(gguf_path)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    tokens, types, merges = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"], f["tokenizer.ggml.merges"]
    assert f["tokenizer.ggml.model"] == "gpt2", f["tokenizer.ggml.model"]
    os.makedirs(out, exist_ok=True)
    json.dump(f, open(os.path.join(out, "gguf-tokenizer.json"), "w"))
    control = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    # Hugging Face's layout of SmolLM2's tokenizer: byte-level BPE, digits split one by one.
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i in control
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    json.dump(tj, open(os.path.join(out, "tokenizer.json"), "w"), ensure_ascii=False)
    tok = lambda key: tokens[f[key]]  # noqa: E731
    json.dump({
        "bos_token": tok("tokenizer.ggml.bos_token_id"), "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "unk_token": tok("tokenizer.ggml.unknown_token_id"), "pad_token": tok("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(f.get("tokenizer.ggml.add_bos_token", False)), "add_eos_token": False,
        "model_max_length": FULL["ctx"], "tokenizer_class": "GPT2Tokenizer",
        "chat_template": f["tokenizer.chat_template"],
    }, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    json.dump({"bos_token_id": f["tokenizer.ggml.bos_token_id"], "eos_token_id": f["tokenizer.ggml.eos_token_id"]},
              open(os.path.join(out, "generation_config.json"), "w"), indent=1)
    print(f"tokenizer: {len(tokens)} tokens, {len(merges)} merges, {len(control)} control tokens -> {out}")


def pool(rng):
    """2^24 draws of N(0, 0.02) as BF16 bit patterns and as the same values in F16."""
    x = rng.standard_normal(1 << 24, dtype=np.float32) * np.float32(0.02)
    x[np.abs(x) < 1e-4] = np.float32(1e-4)  # keep clear of F16's subnormals
    u = x.view(np.uint32)
    bf16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    f16 = (bf16.astype(np.uint32) << 16).view(np.float32).astype(np.float16)
    return bf16, f16


def tensors(s, vocab):
    h, hd = s["hidden"], s["hidden"] // s["heads"]
    yield "model.embed_tokens.weight", (vocab, h)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (vocab, h)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (s["heads"] * hd, h)
        yield p + "self_attn.k_proj.weight", (s["kv_heads"] * hd, h)
        yield p + "self_attn.v_proj.weight", (s["kv_heads"] * hd, h)
        yield p + "self_attn.o_proj.weight", (h, s["heads"] * hd)
        yield p + "mlp.gate_proj.weight", (s["ffn"], h)
        yield p + "mlp.up_proj.weight", (s["ffn"], h)
        yield p + "mlp.down_proj.weight", (h, s["ffn"])


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name):
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    _, _, i, rest = name.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def permute(x, n_head):
    """llama.cpp's Q/K row order for its RoPE (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def make(tokdir, out, s, name):
    gguf = import_gguf()
    t0 = time.time()
    tok = json.load(open(os.path.join(tokdir, "gguf-tokenizer.json")))
    vocab = len(tok["tokenizer.ggml.tokens"])
    st, gg = os.path.join(out, "st"), os.path.join(out, "gguf")
    os.makedirs(st, exist_ok=True)
    os.makedirs(gg, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        with open(os.path.join(tokdir, f), "rb") as src, open(os.path.join(st, f), "wb") as dst:
            dst.write(src.read())
    bos, eos = tok["tokenizer.ggml.bos_token_id"], tok["tokenizer.ggml.eos_token_id"]
    json.dump({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": s["hidden"], "intermediate_size": s["ffn"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "head_dim": s["hidden"] // s["heads"],
        "vocab_size": vocab, "max_position_embeddings": s["ctx"], "rms_norm_eps": 1e-5,
        "rope_theta": s["rope_theta"], "rope_scaling": None, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
        "bos_token_id": bos, "eos_token_id": eos,
    }, open(os.path.join(st, "config.json"), "w"), indent=1)

    rng = np.random.default_rng(20261204)
    bf16, f16 = pool(rng)
    n_pool = bf16.size
    shapes = list(tensors(s, vocab))

    def values(shape):
        n = int(np.prod(shape))
        if len(shape) == 1:  # norms: F32 in the GGUF, as llama.cpp's converter writes them
            return np.full(n, 0x3F80, np.uint16).reshape(shape), np.ones(n, np.float32).reshape(shape)
        parts_b, parts_f, left = [], [], n
        while left:
            o = int(rng.integers(n_pool))
            k = min(left, n_pool - o)
            parts_b.append(bf16[o:o + k])
            parts_f.append(f16[o:o + k])
            left -= k
        return np.concatenate(parts_b).reshape(shape), np.concatenate(parts_f).reshape(shape)

    # GGUF (F16), through llama.cpp's own writer; the tokenizer fields copied from SmolLM2's GGUF.
    w = gguf.GGUFWriter(os.path.join(gg, "model-f16.gguf"), "llama")
    w.add_name(name)
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok.get("tokenizer.ggml.pre", "default"))
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    w.add_token_merges(tok["tokenizer.ggml.merges"])
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(bool(tok.get("tokenizer.ggml.add_bos_token", False)))
    w.add_chat_template(tok["tokenizer.chat_template"])

    # safetensors (BF16), written directly: numpy has no bfloat16.
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for n, shape in shapes:
        size = int(np.prod(shape)) * 2
        header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    params = 0
    with open(os.path.join(st, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n, shape in shapes:
            b, h = values(shape)
            params += b.size
            f.write(b.tobytes())
            if n.endswith("q_proj.weight"):
                h = permute(h, s["heads"])
            elif n.endswith("k_proj.weight"):
                h = permute(h, s["kv_heads"])
            w.add_tensor(gguf_name(n), h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"model {name}: {params / 1e9:.3f} B parameters, vocabulary {vocab}, "
          f"{s['layers']} layers x hidden {s['hidden']} -> {st} (BF16), {gg}/model-f16.gguf "
          f"in {time.time() - t0:.1f} s")


def main(argv):
    if argv[:1] == ["--tokenizer-from"] and len(argv) == 3:
        return tokenizer_from(argv[1], argv[2])
    tiny = "--tiny" in argv
    rest = [a for a in argv if a != "--tiny"]
    if len(rest) != 2:
        sys.exit(__doc__)
    make(rest[0], rest[1], TINY if tiny else FULL, "ferry-bench-llama-tiny" if tiny else "ferry-bench-llama-1b")


if __name__ == "__main__":
    main(sys.argv[1:])
