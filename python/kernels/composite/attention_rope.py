from functools import partial

from .. import registry
from ..reference.attention_rope import two_steps


def paged_decode_attention_with_rope_(*args):
    # The two ops in turn, each on its best backend.
    return two_steps(partial(registry.dispatch_best, "rotary_embedding_and_store_kv_"),
                     partial(registry.dispatch_best, "paged_decode_attention"), *args)
