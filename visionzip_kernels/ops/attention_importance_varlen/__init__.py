"""``attention_importance_varlen``: per-segment attention received on packed batches, and Qwen-VL's
2x2 merge-unit pooling back to raster order."""
from .merge_units import pool_merge_units
from .op import attention_importance_varlen, available_backends

__all__ = ["attention_importance_varlen", "available_backends", "pool_merge_units"]
