"""Plain-torch float32 references: the ground truth of every test, and the backend of last resort.

Written for clarity, not speed: upcast to float32, compute, round once to the input dtype.
"""

from .activation import gelu_and_mul, silu_and_mul
from .norm import fused_add_rms_norm_, rms_norm
from .rope import rotary_embedding_

OPS = {
    "rms_norm": rms_norm,
    "fused_add_rms_norm_": fused_add_rms_norm_,
    "rotary_embedding_": rotary_embedding_,
    "silu_and_mul": silu_and_mul,
    "gelu_and_mul": gelu_and_mul,
}
