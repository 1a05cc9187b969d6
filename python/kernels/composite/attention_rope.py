from .. import registry
from ..reference.attention_rope import new_token_slots, with_bad_rows


def paged_decode_attention_with_rope_(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, page_table,
                                      seq_lens, scale, window, soft_cap, is_neox):
    # The two ops in turn, each on its best backend, on copies: the op leaves q and k as they are.
    slots, bad = new_token_slots(slot_mapping, page_table, seq_lens, k_cache.shape[1])
    q, k = q.clone(), k.clone()
    registry.dispatch_best("rotary_embedding_and_store_kv_", positions, q, k, v, cos_sin_cache, k_cache, v_cache,
                           slots, is_neox)
    out, lse = registry.dispatch_best("paged_decode_attention", q, k_cache, v_cache, page_table, seq_lens, scale,
                                      window, soft_cap)
    return with_bad_rows(out, lse, bad)
