"""The floating-point dtypes a model runs in, by name: the one parser of every ``--dtype`` and ``dtype=``.

``mcc generate`` / ``score`` / ``sweep``, the profiles (``generate.dtype``, ``localize.dtype``) and the model
classes (``FluxGenerator``, ``QwenLocalizer``, ``AnchorDiff.from_pretrained``) take a dtype as one of the
names in :data:`DTYPES` or as the torch dtype itself; :func:`torch_dtype` turns either into the torch dtype
and refuses anything else (integer dtypes, float64, float8, aliases such as ``"bf16"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
"""The dtypes the models run in, by their torch names."""


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for ``dtype``: one of :data:`DTYPES` by name (``"bfloat16"``) or as a torch dtype.

    Raises:
        ValueError: any other name or dtype, e.g. ``"int8"`` -> "dtype must be one of bfloat16, float16,
            float32, got 'int8'".
    """
    import torch  # here, so that importing manifests stays light

    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, name)
