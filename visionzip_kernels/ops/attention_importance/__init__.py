"""``attention_importance``: the attention each key receives, without the ``N x N`` map."""
from .op import attention_importance, available_backends

__all__ = ["attention_importance", "available_backends"]
