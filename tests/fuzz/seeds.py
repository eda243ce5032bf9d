"""Valid inputs the mutators start from: small hand-built graphs saved as .kiln, and a tiny llama GGUF
(numpy + gguf only: no torch needed to make it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.ir.graph import Graph


def _mlp() -> Graph:
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    w1 = g.add_const("w1", rng.standard_normal((8, 16)).astype(np.float32))
    b1 = g.add_const("b1", rng.standard_normal((16,)).astype(np.float32))
    w2 = g.add_const("w2", rng.standard_normal((8, 16)).astype(np.float32))
    ln = g.add_const("ln", np.ones(8, np.float32))
    h = g.add_node("layer_norm", [x, ln], {"eps": 1e-5})
    h = g.add_node("matmul", [h, w1, b1])
    h = g.add_node("gelu", [h])
    h = g.add_node("matmul", [h, w2], {"transpose_b": True})
    h = g.add_node("add", [h, x])
    g.outputs = [g.add_node("rms_norm", [h, ln], {"eps": 1e-6}), g.add_node("log_softmax", [h], {"axis": 1})]
    return g


def _attention() -> Graph:
    rng = np.random.default_rng(2)
    g = Graph()
    x = g.add_input("x", (1, 5, 16), "float32")
    wqkv = g.add_const("wqkv", rng.standard_normal((16, 48)).astype(np.float32) * 0.3)
    heads = []
    qkv = g.add_node("matmul", [x, wqkv])
    for i, nm in enumerate("qkv"):
        t = g.add_node("slice", [qkv], {"axis": 2, "start": 16 * i, "end": 16 * (i + 1)}, name=nm)
        t = g.add_node("reshape", [t], {"shape": (1, 5, 4, 4)})
        heads.append(g.add_node("permute", [t], {"perm": (0, 2, 1, 3)}))
    att = g.add_node("attention", heads, {"causal": True})
    att = g.add_node("permute", [att], {"perm": (0, 2, 1, 3)})
    g.outputs = [g.add_node("reshape", [att], {"shape": (1, 5, 16)})]
    return g


def _indexed() -> Graph:
    rng = np.random.default_rng(3)
    g = Graph()
    ids = g.add_input("ids", (4,), "int64")
    table = g.add_const("table", rng.standard_normal((10, 6)).astype(np.float32))
    sel = g.add_const("sel", np.array([5, 0, 2], np.int64))
    gidx = g.add_const("gidx", np.array([[1, 0, 3], [2, 2, 0], [0, 1, 1], [3, 3, 2]], np.int64))
    e = g.add_node("embedding", [table, ids])                       # [4, 6]
    s = g.add_node("index_select", [e, sel], {"axis": 1})           # [4, 3]
    t = g.add_node("gather", [e, gidx], {"axis": 1})                # [4, 3]
    c = g.add_node("concat", [s, t], {"axis": 1})                   # [4, 6]
    m = g.add_node("softmax", [c], {"axis": 0})
    r = g.add_node("sum", [m], {"axes": (1,), "keepdim": False})
    g.outputs = [m, r, g.add_node("cast", [ids], {"dtype": "float32"})]
    return g


GRAPHS = {"mlp": _mlp, "attention": _attention, "indexed": _indexed}


def kiln_seeds(folder: Path) -> list[Path]:
    """Every seed graph saved as a .kiln file in `folder` (created once per fuzz run)."""
    from kiln.session import Session
    out = []
    for name, make in GRAPHS.items():
        path = folder / f"{name}.kiln"
        if not path.exists():
            Session(make(), executor="reference").save(path)
        out.append(path)
    return out


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map above U+0100."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    extra = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [table[b] for b in range(256)]


def gguf_seed(folder: Path) -> Path:
    """A 2-layer llama (hidden 16, 2 heads, 1 KV head) with a byte-level GPT-2 tokenizer, all F32."""
    import gguf
    path = folder / "tiny-llama.gguf"
    if path.exists():
        return path
    rng = np.random.default_rng(4)
    tokens = _byte_alphabet() + ["Hi", "Th", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    h, heads, kv, hd, ff, n_layer, v = 16, 2, 1, 8, 32, 2, len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_context_length(64)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["H i", "T h"])
    w.add_bos_token_id(v - 3)
    w.add_eos_token_id(v - 1)
    w.add_chat_template(CHATML)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))
    t("token_embd.weight", v, h)
    t("output_norm.weight", h)
    t("output.weight", v, h)
    for i in range(n_layer):
        for name, shape in (("attn_norm", (h,)), ("ffn_norm", (h,)), ("attn_q", (heads * hd, h)),
                            ("attn_k", (kv * hd, h)), ("attn_v", (kv * hd, h)), ("attn_output", (h, heads * hd)),
                            ("ffn_gate", (ff, h)), ("ffn_up", (ff, h)), ("ffn_down", (h, ff))):
            t(f"blk.{i}.{name}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
