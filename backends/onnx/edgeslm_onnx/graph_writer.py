"""Write the decoder as an ONNX graph directly from its description and weights (no torch).

Like onnxruntime-genai's model builder, one method per op family, each emitting onnxruntime
CPU contrib ops (domain ``com.microsoft``) with switches read from the
:class:`~edgeslm.arch.config.DecoderConfig`::

    input_ids (1,S) ─ embedding ─┬─────────────────────────────── residual ──────────────┐
                                 └ SimplifiedLayerNorm ─ qkv linear (packed)             │
        past_key_i ═╗              [qk-norm: Split, SLN per head]                        │
        past_value_i╬═ GroupQueryAttention (rotary inside: cos/sin caches; KV written    │
        seqlens_k, total_sequence_length    in place into the shared buffer) ═ present_* │
                                 ─ o linear ─ [post-norm] ─ SkipSimplifiedLayerNorm ◄────┤
                                 ─ gate_up linear (packed) ─ Split ─ act ─ Mul ─ down    │
                                 ─ [post-norm] ─ SkipSimplifiedLayerNorm (next layer) ◄──┘
    ... ─ final SkipSimplifiedLayerNorm ─ Gather(last position) ─ lm_head ─ [softcap] ─ logits (1,V)

Graph IO (the engine binds the KV buffers once and rebinds only ``input_ids``)::

    input_ids              int64   (1, S)
    seqlens_k              int32   (1,)            tokens in the cache after this call, minus 1
    total_sequence_length  int32   ()              tokens in the cache after this call
    past_key_{i}           float32 (1, kv, L, hd)  L = the export's context length; bound to the
    past_value_{i}                                 same OrtValue as present_key_{i}/present_value_{i}
 -> logits                 float32 (1, V)          after the last new token

Linear layers: float weights -> MatMul; GGUF blocks -> MatMulNBits 4- or 8-bit, block 32 or 16
(each type's exact mapping: :mod:`.gguf_blocks`) + for types with a minimum (Q4_1, Q5_1, Q4_K,
Q5_K) ``blocksum(x) @ offset.T`` (exact; the block sums of one input, ``x @ block-indicator``, are
computed once and shared by the packed projection reading it). A GGUF embedding is read with
GatherBlockQuantized from the same codes initializer the tied lm_head's MatMulNBits uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeslm.arch.config import DecoderConfig

from .weights import BLOCK, BlockLinear, FloatLinear, pack_groups

MS = "com.microsoft"
EDGESLM = "ai.edgeslm"  # edgeslm's own custom ops (edgeslm_onnx.kernels)
OPSET = 21


class Unsupported(Exception):
    """The writer cannot express this model; the exporter falls back to torch with the reason."""


class Graph:
    """Nodes and initializers with unique names."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._count: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        n = self._count.get(base, 0)
        self._count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.require(arr, requirements='C'), name))  # keeps 0-d
        return name

    def shared(self, key: tuple, arr: np.ndarray) -> str:
        """A small constant reused by value (shapes, axes)."""
        if key not in self._consts:
            self._consts[key] = self.const("c_" + "_".join(map(str, key)), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], base: str, outputs: int = 1, domain: str = "", **attrs):
        from onnx import helper

        name = self.name(base)
        outs = [f"{name}/out{i}" if i else f"{name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if outputs == 1 else outs


class DecoderWriter:
    """Emit one decoder: ``DecoderWriter(cfg, weights, max_len, accuracy_level).model()``."""

    #: how the exact Q4_1 offset ``blocksum(x) @ (m + 8d).T`` is computed (docs/performance.md;
    #: the export's default is "rows": 1-2% faster than "matmul" in quiet runs on two machines, and
    #: its block sums are those of the int8-quantized x the 4-bit term reads, as llama.cpp's Q8_1
    #: sums are, so it agrees more with llama.cpp: 97.7% vs 96.9%, AVX2 run of 2026-11-30):
    #: "reduce" Reshape + ReduceSum of x, then MatMul + Add; "matmul" x @ block-indicator (one
    #: MatMul) instead of Reshape + ReduceSum; "rows" the block sums as nb extra output rows of
    #: the projection's own MatMulNBits (code 1 in block b), then Split + MatMul + Add;
    #: "int8" the offsets (m + 8d) as an 8-bit MatMulNBits weight over the block sums (blocks of
    #: 16, absmax scales; NOT exact: per output row 40 instead of 72 bytes at K=576, 60 instead
    #: of 192 at K=1536; measured within noise of "matmul"); "none" drops the offset (NOT exact:
    #: a speed reference only, the bound of any exact form).
    #: "fused": not an offset form but edgeslm's own kernel: Q4_1 linears (d and m fp16, as a GGUF's)
    #: as one ``ai.edgeslm.Q41MatMul`` each, Q8_0 ones (the tied lm_head) as ``Q80MatMul``, on
    #: weights repacked into 16-row records (:mod:`.kernels`; exact on int8 activations like
    #: accuracy_level 4, the offset folded into the kernel); other block types as "rows". The
    #: bundle then needs the custom-op library (compiled with gcc at first load).
    OFFSETS = ("reduce", "matmul", "rows", "int8", "none", "fused")

    def __init__(self, cfg: DecoderConfig, weights, max_len: int, accuracy_level: int = 4, offsets: str = "rows"):
        self.cfg, self.w, self.max_len, self.accuracy_level = cfg, weights, int(max_len), int(accuracy_level)
        if offsets not in self.OFFSETS:
            raise ValueError(f"offsets={offsets!r}: expected one of {', '.join(self.OFFSETS)}")
        self.offsets = offsets
        self.g = Graph()
        self._blocksums: dict[tuple[str, int], str] = {}
        self._block_inits: dict[str, dict[str, str]] = {}  # shared quantized weights (tied embedding)
        self.counts: dict[str, int] = {}
        self.custom_ops: dict[str, int] = {}  # ai.edgeslm op -> nodes (offsets="fused")
        self.check()

    def check(self) -> None:
        """Raise :class:`Unsupported` for what the contrib ops cannot express."""
        for i, b in enumerate(self.cfg.blocks):
            a = b.attention
            if a.num_heads % a.num_kv_heads:
                raise Unsupported(f"layer {i}: {a.num_heads} heads do not group over {a.num_kv_heads} KV heads")
            rd = a.rope.rotary_dim or a.head_dim
            if a.rope.scaling != "none" and (a.head_dim % 16 or rd % 16 or rd > a.head_dim):
                raise Unsupported(f"layer {i}: head_dim {a.head_dim}, rotary dim {rd}: GroupQueryAttention's rotary "
                                  "needs multiples of 16")
            if b.mlp.activation not in ("silu", "gelu_tanh", "gelu"):
                raise Unsupported(f"layer {i}: activation {b.mlp.activation}")

    # -- the graph ------------------------------------------------------------------------

    def model(self):
        from onnx import TensorProto, helper

        cfg, g = self.cfg, self.g
        self.make_rotary_caches()
        x = self.make_embedding("input_ids")  # (1, S, hidden)
        residual, pending = x, None
        for i, block in enumerate(cfg.blocks):
            pre = f"model.layers.{i}"
            normed, residual = self.make_norm(pending, residual, f"{pre}.{block.norms['attn_pre']}", f"l{i}.attn_norm")
            attn = self.make_attention(i, normed)
            if "attn_post" in block.norms:
                attn = self.make_norm(attn, None, f"{pre}.{block.norms['attn_post']}", f"l{i}.attn_post")[0]
            normed, residual = self.make_norm(attn, residual, f"{pre}.{block.norms['mlp_pre']}", f"l{i}.mlp_norm")
            pending = self.make_mlp(i, normed)
            if "mlp_post" in block.norms:
                pending = self.make_norm(pending, None, f"{pre}.{block.norms['mlp_post']}", f"l{i}.mlp_post")[0]
        normed, _ = self.make_norm(pending, residual, "model.norm", "final_norm")
        logits = self.make_lm_head(normed)
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
        kv = []
        outs = []
        for i, b in enumerate(cfg.blocks):
            shape = [1, b.attention.num_kv_heads, self.max_len, b.attention.head_dim]
            for kind in ("key", "value"):
                kv.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, shape))
                outs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, shape))
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
                  helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
                  helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []), *kv]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, cfg.vocab_size]), *outs]
        inits = g.inits
        if self.custom_ops:  # a fused tied head leaves the embedding's 8-bit zero points unread
            used = {name for n in g.nodes for name in n.input}
            inits = [t for t in inits if t.name in used]
        graph = helper.make_graph(g.nodes, "edgeslm_decoder", inputs, outputs, initializer=inits)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
        if self.custom_ops:
            opsets.append(helper.make_opsetid(EDGESLM, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeslm graph writer")
        model.ir_version = 10
        return model

    # -- op families ----------------------------------------------------------------------

    def make_rotary_caches(self) -> None:
        """cos/sin (L, rotary_dim/2) per distinct RoPE, the attention factor folded in."""
        from edgeslm.arch.rope import inv_freq

        self.rope_caches: dict = {}
        pos = np.arange(self.max_len, dtype=np.float64)[:, None]
        for b in self.cfg.blocks:
            rope = b.attention.rope
            if rope.scaling == "none" or rope in self.rope_caches:
                continue
            inv, factor = inv_freq(rope, b.attention.head_dim, self.max_len)
            ang = pos * np.asarray(inv, np.float64)[None, :]  # (L, rd/2)
            idx = len(self.rope_caches)
            self.rope_caches[rope] = (self.g.const(f"cos_cache_{idx}", (np.cos(ang) * factor).astype(np.float32)),
                                      self.g.const(f"sin_cache_{idx}", (np.sin(ang) * factor).astype(np.float32)))

    def make_embedding(self, ids: str) -> str:
        g, emb = self.g, self.w.embedding("model.embed_tokens")
        if isinstance(emb, BlockLinear):  # the GGUF's blocks: GatherBlockQuantized (+ the per-block offset)
            x = self.make_block_gather(ids, emb, "model.embed_tokens")
        else:
            x = g.op("Gather", [g.const("embed.weight", emb.w), ids], "embed")
        if self.cfg.embed_scale is not None:
            x = g.op("Mul", [x, g.const("embed_scale", np.array(self.cfg.embed_scale, np.float32))], "embed_scale")
        return x  # (1, S, hidden)

    def make_block_gather(self, ids: str, emb: BlockLinear, key: str) -> str:
        """Rows of a block weight: GatherBlockQuantized on the codes (V, K/block, block bytes) that
        MatMulNBits reads too (one initializer for a tied lm_head); + the offset, gathered."""
        g = self.g
        v, k = emb.shape
        nb = k // emb.block
        names = self.block_inits(emb, "embed_tokens", key)
        scales = g.op("Reshape", [names["scales"], g.shared(("scales3", v, nb), np.array([v, nb, 1], np.int64))],
                      "embed.scales3")  # (V, nb, 1): GatherBlockQuantized wants the data's rank
        x = g.op("GatherBlockQuantized", [names["qweight"], ids, scales], "embed", domain=MS, gather_axis=0,
                 quantize_axis=2, block_size=emb.block, bits=emb.bits)  # (1, S, nb, block)
        self._count_kind(f"embedding GatherBlockQuantized {emb.bits}-bit ({emb.qtype})")
        if "offsetT" in names:  # w = scale*(code - zero) + offset per block of 32
            off = g.op("Gather", [names["offsetT"], ids], "embed.offset", axis=1)  # (nb, 1, S)
            off = g.op("Transpose", [off], "embed.offset_t", perm=[1, 2, 0])  # (1, S, nb)
            off = g.op("Unsqueeze", [off, g.shared(("axis", -1), np.array([-1], np.int64))], "embed.offset_u")
            x = g.op("Add", [x, off], "embed.add_offset")  # (1, S, nb, 32)
        return g.op("Reshape", [x, g.shared(("merge", k), np.array([0, 0, k], np.int64))], "embed.merge")  # (1, S, K)

    def block_inits(self, lin: BlockLinear, base: str, key: str | None = None) -> dict[str, str]:
        """Initializers of a block weight: ``qweight`` (N, K/block, block bytes) as MatMulNBits
        reads it, ``scales`` (N * K/block), ``zp`` (8-bit), ``offsetT`` (K/32, N); under ``key``
        written once and shared (embedding and tied lm_head)."""
        if key is not None and key in self._block_inits:
            return self._block_inits[key]
        g = self.g
        names = {"qweight": g.const(base + ".qweight", lin.codes if lin.bits == 8 else _pack4(lin.codes)),
                 "scales": g.const(base + ".scales", lin.scales.reshape(-1))}
        if lin.bits == 8:
            names["zp"] = g.const(base + ".zp", np.full(lin.scales.size, 128, np.uint8))
        if lin.offset is not None and (key is not None or self.offsets not in ("int8", "none")):
            # (int8 writes its own 8-bit offsets, none drops them; a shared embedding reads offsetT)
            names["offsetT"] = g.const(base + ".offsetT", np.ascontiguousarray(lin.offset.T))
        if key is not None:
            self._block_inits[key] = names
        return names

    def norm_weight(self, name: str) -> np.ndarray:
        return (self.w.vector(name + ".weight") + np.float32(self.cfg.norm.offset)).astype(np.float32)

    def make_norm(self, x: str | None, residual: str | None, weight: str, base: str) -> tuple[str, str | None]:
        """RMSNorm of ``x + residual`` (one SkipSimplifiedLayerNormalization) -> (normed, sum);
        of ``x`` alone (or of ``residual`` alone when ``x`` is None) -> (normed, residual)."""
        g, eps = self.g, float(self.cfg.norm.eps)
        gamma = g.const(weight + ".gamma", self.norm_weight(weight))
        if x is not None and residual is not None:
            out, _, _, total = g.op("SkipSimplifiedLayerNormalization", [x, residual, gamma], base, outputs=4,
                                    domain=MS, epsilon=eps)
            return out, total
        src = x if x is not None else residual
        return g.op("SimplifiedLayerNormalization", [src, gamma], base, axis=-1, epsilon=eps,
                    stash_type=1), residual

    def make_linears(self, x: str, parts: list, base: str, k_dim: int) -> str:
        """Projections reading one input (q/k/v, gate/up): packed into one kernel when their blocks
        share a layout, else one kernel per run of equal layout and a Concat of the outputs."""
        groups = pack_groups(parts)
        if len(groups) == 1:
            return self.make_linear(x, groups[0], base, k_dim)
        ys = [self.make_linear(x, p, f"{base}.{j}", k_dim) for j, p in enumerate(groups)]
        return self.g.op("Concat", ys, base + ".concat", axis=-1)

    def make_linear(self, x: str, lin, base: str, k_dim: int, share: str | None = None) -> str:
        """y = x @ W.T (+ bias) for a float or GGUF-block weight; x (..., K) -> (..., N).
        ``share``: the key of a block weight written once for the embedding and this head."""
        g = self.g
        n = lin.shape[0]
        if isinstance(lin, FloatLinear):
            y = g.op("MatMul", [x, g.const(base + ".weightT", np.ascontiguousarray(lin.w.T))], base)
            self._count_kind("MatMul fp32")
        elif self.offsets == "fused" and (fused := self.make_fused(x, lin, base, k_dim)) is not None:
            y = fused
        else:
            form = "rows" if self.offsets == "fused" else self.offsets  # what the kernel does not take
            rows = lin.offset is not None and form == "rows" and (x, k_dim) not in self._blocksums
            if rows:
                lin, share = _with_blocksum_rows(lin, k_dim), None
            names = self.block_inits(lin, base, share)
            ins = [x, names["qweight"], names["scales"]] + ([names["zp"]] if "zp" in names else [])
            y = g.op("MatMulNBits", ins, base, domain=MS, K=k_dim, N=lin.codes.shape[0], bits=lin.bits,
                     block_size=lin.block, accuracy_level=self.accuracy_level)
            self._count_kind(f"MatMulNBits {lin.bits}-bit ({lin.qtype})")
            if rows:
                y, self._blocksums[(x, k_dim)] = g.op(
                    "Split", [y, g.shared(("split", n, k_dim // BLOCK), np.array([n, k_dim // BLOCK], np.int64))],
                    base + ".split_blocksums", outputs=2, axis=-1)  # (..., N), (..., K/32)
            if lin.offset is not None and form == "int8":
                y = g.op("Add", [y, self.offset_int8(x, lin.offset, base, k_dim)], base + ".add_offset")
            elif lin.offset is not None and form != "none":  # exact: + blocksum(x) @ offset.T
                off = g.op("MatMul", [self.blocksum(x, k_dim), names["offsetT"]], base + ".offset")  # (..., N)
                y = g.op("Add", [y, off], base + ".add_offset")
        if lin.bias is not None:
            y = g.op("Add", [y, g.const(base + ".bias", lin.bias)], base + ".bias")
        return y

    def make_fused(self, x: str, lin: BlockLinear, base: str, k_dim: int) -> str | None:
        """``lin`` as one ``ai.edgeslm`` op (offsets="fused"), or None when the kernel cannot read it
        exactly: 4-bit Q4_1 (d, m fp16) or 8-bit Q8_0 (d fp16) blocks of 32, N a multiple of 16."""
        from . import kernels

        n, k = lin.shape
        if lin.block != BLOCK or n % kernels.ROWS or k != k_dim:
            return None
        d = lin.scales
        if lin.bits == 4 and lin.offset is not None:  # Q4_1: w = d*q + m, offset = m + 8d
            m32 = (lin.offset - np.float32(8) * d).astype(np.float32)
            m = m32.astype(np.float16).astype(np.float32)
            # the transcoder's offset is m + 8d within a few float32 ulps; a genuine fp16 m rounds back
            tol = np.float32(16) * np.spacing(np.abs(lin.offset) + np.float32(8) * np.abs(d))
            if not (kernels.fp16_exact(d) and np.all(np.abs(m32 - m) <= tol)):
                return None
            packed, op, kind = kernels.pack_q4_1(lin.codes, d, m), "Q41MatMul", "Q4_1"
        elif lin.bits == 8 and lin.offset is None:  # Q8_0: w = d * (code - 128)
            if not kernels.fp16_exact(d):
                return None
            codes = (lin.codes.astype(np.int16) - 128).astype(np.int8)
            packed, op, kind = kernels.pack_q8_0(codes, d), "Q80MatMul", "Q8_0"
        else:
            return None
        y = self.g.op(op, [x, self.g.const(base + ".records", packed)], base, domain=EDGESLM, K=k_dim, N=n)
        self.custom_ops[op] = self.custom_ops.get(op, 0) + 1
        self._count_kind(f"{op} ({kind}, fused)")
        return y

    def blocksum(self, x: str, k_dim: int) -> str:
        """Sum of ``x`` over each block of 32 input features, computed once per input: (..., K/32)."""
        key = (x, k_dim)
        if key not in self._blocksums and self.offsets == "matmul":
            nb = k_dim // BLOCK
            indicator = np.repeat(np.eye(nb, dtype=np.float32), BLOCK, axis=0)  # (K, K/32)
            self._blocksums[key] = self.g.op("MatMul", [x, self.g.shared(("blockind", k_dim), indicator)], "blocksum")
        if key not in self._blocksums:
            g = self.g
            # rows of x whatever its rank (the lm_head reads (1, K)); the offset (S, N) broadcasts over batch 1
            blocks = g.op("Reshape", [x, g.shared(("blocks", k_dim), np.array([-1, k_dim // BLOCK, BLOCK], np.int64))],
                          "blocksum.reshape")  # (S, K/32, 32)
            self._blocksums[key] = g.op("ReduceSum", [blocks, g.shared(("axis", -1), np.array([-1], np.int64))],
                                        "blocksum", keepdims=0)  # (S, K/32)
        return self._blocksums[key]

    def offset_int8(self, x: str, offset: np.ndarray, base: str, k_dim: int) -> str:
        """blocksum(x) @ offset.T with ``offset`` (N, K/32) as an 8-bit MatMulNBits weight: the
        block sums come zero-padded to a multiple of 16 from one ``x @ indicator`` MatMul."""
        g, nb = self.g, k_dim // BLOCK
        kp = -(-nb // 16) * 16
        key = (x, k_dim, "padded")
        if key not in self._blocksums:
            indicator = np.zeros((k_dim, kp), np.float32)
            indicator[:, :nb] = np.repeat(np.eye(nb, dtype=np.float32), BLOCK, axis=0)
            self._blocksums[key] = g.op("MatMul", [x, g.shared(("blockind_padded", k_dim), indicator)], "blocksum")
        n = offset.shape[0]
        w = np.zeros((n, kp), np.float32)
        w[:, :nb] = offset
        blocks = w.reshape(n, kp // 16, 16)
        scales = (np.abs(blocks).max(-1) / 127).astype(np.float32)
        scales[scales == 0] = 1.0
        codes = (np.clip(np.round(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8)  # zero point 128
        self._count_kind("Q4_1 offsets as MatMulNBits 8-bit")
        return g.op("MatMulNBits", [self._blocksums[key], g.const(base + ".offset_q8", codes),
                                    g.const(base + ".offset_scales", scales.reshape(-1))], base + ".offset",
                    domain=MS, K=kp, N=n, bits=8, block_size=16, accuracy_level=self.accuracy_level)

    def make_attention(self, i: int, x: str) -> str:
        g, a = self.g, self.cfg.blocks[i].attention
        pre = f"model.layers.{i}.self_attn"
        hidden = self.cfg.hidden_size
        if a.fused_qkv:
            qkv = [self.w.linear(f"{pre}.qkv_proj")]
        else:
            qkv = [self.w.linear(f"{pre}.{p}_proj") for p in ("q", "k", "v")]
        y = self.make_linears(x, qkv, f"l{i}.qkv", hidden)  # (1, S, (h + 2 kv) * hd)
        q_size, kv_size = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        if a.qk_norm:  # RMSNorm per head of q and k, before rotary
            q, k, v = g.op("Split", [y, g.shared(("split", q_size, kv_size, kv_size),
                                                  np.array([q_size, kv_size, kv_size], np.int64))],
                           f"l{i}.qkv_split", outputs=3, axis=-1)
            q = self.make_head_norm(q, a.num_heads, a.head_dim, f"{pre}.q_norm", f"l{i}.q_norm")
            k = self.make_head_norm(k, a.num_kv_heads, a.head_dim, f"{pre}.k_norm", f"l{i}.k_norm")
            qkv_inputs = [q, k, v]
        else:
            qkv_inputs = [y, "", ""]  # packed: GroupQueryAttention splits it
        rope = a.rope
        attrs = dict(num_heads=a.num_heads, kv_num_heads=a.num_kv_heads,
                     scale=float(a.scale if a.scale is not None else a.head_dim ** -0.5))
        cos_sin = ["", ""]
        if rope.scaling != "none":
            attrs.update(do_rotary=1, rotary_interleaved=0)
            cos_sin = list(self.rope_caches[rope])
        if a.logit_softcap:
            attrs["softcap"] = float(a.logit_softcap)
        if a.sliding_window:
            attrs["local_window_size"] = int(a.sliding_window)
        out = g.op("GroupQueryAttention",
                   [*qkv_inputs, f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length", *cos_sin],
                   f"l{i}.gqa", outputs=3, domain=MS, **attrs)
        # GroupQueryAttention's present outputs are the past buffers, written in place
        self.g.nodes[-1].output[1] = f"present_key_{i}"
        self.g.nodes[-1].output[2] = f"present_value_{i}"
        return self.make_linear(out[0], self.w.linear(f"{pre}.o_proj"), f"l{i}.o_proj", q_size)

    def make_head_norm(self, x: str, heads: int, head_dim: int, weight: str, base: str) -> str:
        g = self.g
        per_head = g.op("Reshape", [x, g.shared(("heads", heads, head_dim), np.array([0, 0, heads, head_dim], np.int64))],
                        base + ".split_heads")  # (1, S, heads, hd)
        normed = self.make_norm(per_head, None, weight, base)[0]
        return g.op("Reshape", [normed, g.shared(("merge", heads * head_dim), np.array([0, 0, heads * head_dim], np.int64))],
                    base + ".merge_heads")  # (1, S, heads * hd)

    def make_mlp(self, i: int, x: str) -> str:
        g, m = self.g, self.cfg.blocks[i].mlp
        pre = f"model.layers.{i}.mlp"
        inter = m.intermediate_size
        if m.fused_gate_up:
            up = [self.w.linear(f"{pre}.gate_up_proj")]
        elif m.gated:
            up = [self.w.linear(f"{pre}.gate_proj"), self.w.linear(f"{pre}.up_proj")]
        else:
            up = [self.w.linear(f"{pre}.up_proj")]
        y = self.make_linears(x, up, f"l{i}.gate_up" if m.gated else f"l{i}.up", self.cfg.hidden_size)
        if m.gated:
            gate, up_out = g.op("Split", [y, g.shared(("split", inter, inter), np.array([inter, inter], np.int64))],
                                f"l{i}.gate_up_split", outputs=2, axis=-1)  # (1, S, I) each
            h = g.op("Mul", [self.make_activation(gate, m.activation, f"l{i}.act"), up_out], f"l{i}.gate_mul")
        else:
            h = self.make_activation(y, m.activation, f"l{i}.act")
        return self.make_linear(h, self.w.linear(f"{pre}.down_proj"), f"l{i}.down_proj", inter)

    def make_activation(self, x: str, kind: str, base: str) -> str:
        g = self.g
        if kind == "silu":  # x * sigmoid(x): QuickGelu with alpha 1 is exactly SiLU, one kernel
            return g.op("QuickGelu", [x], base, domain=MS, alpha=1.0)
        if kind == "gelu_tanh":
            return g.op("FastGelu", [x], base, domain=MS)
        return g.op("Gelu", [x], base, domain=MS)

    def make_lm_head(self, x: str) -> str:
        g, cfg = self.g, self.cfg
        last = g.op("Gather", [x, g.shared(("last",), np.array(-1, np.int64))], "last_position", axis=1)  # (1, hidden)
        name = "model.embed_tokens" if cfg.tie_word_embeddings else "lm_head"
        head = self.w.linear(name) if not cfg.tie_word_embeddings else self.w.embedding(name)
        head = dataclasses.replace(head, bias=self.w.vector("lm_head.bias") if cfg.lm_head_bias else None)
        share = name if cfg.tie_word_embeddings and isinstance(head, BlockLinear) else None
        logits = self.make_linear(last, head, "lm_head", cfg.hidden_size, share)  # (1, V)
        cap = cfg.final_logit_softcap
        if cap:
            c = g.const("final_softcap", np.array(cap, np.float32))
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, c], "softcap_div")], "softcap_tanh"), c], "softcap")
        return logits

    def _count_kind(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


def _with_blocksum_rows(lin: BlockLinear, k_dim: int) -> BlockLinear:
    """``lin`` + K/32 extra rows computing the block sums of x (offsets="rows"): code zero+1 in
    block b of row b, zero elsewhere (block 32: only types with an offset come here); the
    offset stays (N, K/32): it is added after the Split."""
    nb = k_dim // BLOCK
    extra = np.full((nb, nb, BLOCK), lin.zero, np.uint8)
    extra[np.arange(nb), np.arange(nb)] = lin.zero + 1
    return dataclasses.replace(lin, codes=np.concatenate([lin.codes, extra]),
                               scales=np.concatenate([lin.scales, np.ones((nb, nb), np.float32)]))


def _pack4(codes: np.ndarray) -> np.ndarray:
    """(N, blocks, 32) codes 0..15 -> (N, blocks, 16) bytes, element 2i in the low nibble."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
