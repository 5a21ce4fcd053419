"""torch.jit trace -> ct.convert (ML Program, iOS 18, fp16, KV cache as state) -> weight compression.

::

    CoreMLDecoder (torch, fp32) --jit.trace--> ScriptModule --ct.convert--> MLModel (fp16 compute)
        inputs   input_ids int32 (1, S), causal_mask fp16 (1, 1, S, E)     S, E: RangeDim(1, C)
        states   key_cache, value_cache fp16 (L, 1, kv, C, hd)
        outputs  logits fp16 (1, V)
                        --coremltools.optimize.coreml--> constexpr_* weight ops
    int8        linear_quantize_weights   linear_symmetric int8 per output channel
    int4        linear_quantize_weights   linear_symmetric int4 per block of 32 input values
    palettized  palettize_weights         4-bit k-means look-up table per group of 16 channels

Only weights that feed ``linear`` and ``gather`` (the embedding, tied with the head) are
compressed: the rotary cos/sin tables stay fp16.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, fields
from typing import Any

from edgeslm.errors import ExportError

#: the names the engine and the Swift runner rely on
INPUT_IDS, CAUSAL_MASK, LOGITS = "input_ids", "causal_mask", "logits"
KEY_CACHE, VALUE_CACHE = "key_cache", "value_cache"
#: coremltools specification version of iOS 18 / macOS 15 (the first with states)
IOS18_SPEC_VERSION = 9


@dataclass
class CompressionConfig:
    """Weight compression knobs (``ExportSpec.options`` keys of the same names)."""

    block_size: int = 32  # int4: input values sharing one scale (FINDINGS: block 32 -> 77 MB for SmolLM2)
    palette_bits: int = 4  # palettized: bits per index (16 centroids)
    palette_group_size: int = 16  # palettized: output channels sharing one look-up table
    weight_threshold: int = 2048  # coremltools' default: smaller tensors (norm weights) stay fp16

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "CompressionConfig":
        known = {f.name: f.type for f in fields(cls)}
        return cls(**{k: int(v) for k, v in options.items() if k in known})


def quiet_coremltools():
    """Import coremltools without its Linux 'Failed to load _MLModelProxy' and version warnings."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    from edgeslm._deps import require

    return require("coremltools", "coreml", "Core ML export")


@contextlib.contextmanager
def _captured(what: str):
    """coremltools draws tqdm bars on stderr for every pass; keep them for an error message only."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
            yield
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{what} failed: {type(exc).__name__}: {exc}\n{log.getvalue()[-1500:]}") from exc


def convert(traced, spec, context_length: int):
    """ct.convert the traced :class:`~edgeslm_coreml.model.CoreMLDecoder` to an iOS 18 ML Program."""
    ct = quiet_coremltools()
    import numpy as np

    cache = (spec.num_layers, 1, spec.num_kv_heads, context_length, spec.head_dim)  # (L, 1, kv, C, hd)
    seq = ct.RangeDim(lower_bound=1, upper_bound=context_length, default=1, symbol="seq")
    end = ct.RangeDim(lower_bound=1, upper_bound=context_length, default=1, symbol="end")
    with _captured("ct.convert"):
        return ct.convert(
            traced,
            inputs=[ct.TensorType(INPUT_IDS, shape=(1, seq), dtype=np.int32),
                    ct.TensorType(CAUSAL_MASK, shape=(1, 1, seq, end), dtype=np.float16)],
            outputs=[ct.TensorType(LOGITS, dtype=np.float16)],
            states=[ct.StateType(ct.TensorType(shape=cache, dtype=np.float16), name=KEY_CACHE),
                    ct.StateType(ct.TensorType(shape=cache, dtype=np.float16), name=VALUE_CACHE)],
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16,
            convert_to="mlprogram",
            skip_model_load=True,  # Linux cannot load it; macOS compiles it on first use
        )


def compress(mlmodel, precision: str, cfg: CompressionConfig):
    """Apply the precision's coremltools.optimize pass; return (model, what was done)."""
    if precision == "fp16":
        return mlmodel, {"method": "none", "weights": "fp16"}
    quiet_coremltools()
    import coremltools.optimize.coreml as cto

    if precision == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=cfg.weight_threshold)
        record = {"method": "linear_quantize_weights", "mode": "linear_symmetric", "dtype": "int8",
                  "granularity": "per_channel"}
        run = cto.linear_quantize_weights
    elif precision == "int4":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=cfg.block_size, weight_threshold=cfg.weight_threshold)
        record = {"method": "linear_quantize_weights", "mode": "linear_symmetric", "dtype": "int4",
                  "granularity": "per_block", "block_size": cfg.block_size}
        run = cto.linear_quantize_weights
    elif precision == "palettized":
        op = cto.OpPalettizerConfig(nbits=cfg.palette_bits, mode="kmeans", granularity="per_grouped_channel",
                                    group_size=cfg.palette_group_size, weight_threshold=cfg.weight_threshold)
        record = {"method": "palettize_weights", "mode": "kmeans", "nbits": cfg.palette_bits,
                  "granularity": "per_grouped_channel", "group_size": cfg.palette_group_size}
        run = cto.palettize_weights
    else:
        raise ExportError(f"no Core ML compression for precision '{precision}'")
    config = cto.OptimizationConfig(op_type_configs={"linear": op, "gather": op})
    with _captured(f"coremltools.optimize ({precision})"):
        out = run(mlmodel, config)
    record["op_types"] = ["linear", "gather"]
    record["weight_threshold"] = cfg.weight_threshold
    return out, record
