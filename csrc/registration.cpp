// The op table of the project: every schema, in one place. Backends register implementations
// against these names in csrc/cpu/bindings.cpp and csrc/cuda/bindings.cpp; the fake (meta)
// implementations live in python/kernels/native/fakes.py. Argument validation with
// user-facing messages happens in python/kernels/ops/; the C++ checks are a last line of defence.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(kernels, m) {
  // norms
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  // positional encoding
  m.def(
      "rotary_embedding_(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos_sin_cache, "
      "bool is_neox) -> ()");
  // activations
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("gelu_and_mul(Tensor x, bool tanh) -> Tensor");
  // paged attention (docs/dev/op-semantics.md): window -1 = none, soft_cap 0 = none; the second
  // result is the float32 log-sum-exp of each (query, head), natural log.
  m.def(
      "store_kv_cache(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor slot_mapping) -> ()");
  // rotary_embedding_ on q and k, then store_kv_cache of the rotated k and v: one launch on CUDA.
  m.def(
      "rotary_embedding_and_store_kv_(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor v, "
      "Tensor cos_sin_cache, Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor slot_mapping, "
      "bool is_neox) -> ()");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
      "Tensor seq_lens, float scale, int window, float soft_cap) -> (Tensor, Tensor)");
  // paged_decode_attention after rotating q / k and storing the new K / V (q and k not written).
  m.def(
      "paged_decode_attention_with_rope_(Tensor positions, Tensor q, Tensor k, Tensor v, Tensor cos_sin_cache, "
      "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping, Tensor page_table, Tensor seq_lens, "
      "float scale, int window, float soft_cap, bool is_neox) -> (Tensor, Tensor)");
  m.def(
      "paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
      "Tensor qo_indptr, Tensor kv_lens, float scale, bool causal, int window, float soft_cap) "
      "-> (Tensor, Tensor)");
  m.def(
      "merge_attention_states(Tensor v_a, Tensor lse_a, Tensor v_b, Tensor lse_b) "
      "-> (Tensor, Tensor)");
  // INT4 weight-only GEMM (docs/dev/op-semantics.md): a [M, K] @ W^T -> [M, N] in a's dtype, W
  // from qweight int32 [N, K / 8] (eight 4-bit values per word, low nibble first) and per-group
  // scales [N, K / group_size]; w = (q - zero_point) * scale, or q * scale + min, or
  // (q - 8) * scale.
  m.def(
      "w4a16_gemm(Tensor a, Tensor qweight, Tensor scales, Tensor? zero_points, Tensor? mins, "
      "int group_size) -> Tensor");
  // INT8 weight-only GEMM (python/kernels/ops/quant_int8.py): a [M, K] @ W^T -> [M, N] in a's
  // dtype, W = qweight int8 [N, K] times scales [N, K / group_size] (symmetric; GGUF Q8_0).
  m.def("w8a16_gemm(Tensor a, Tensor qweight, Tensor scales, int group_size) -> Tensor");
  // FP8 e4m3 quantisation (python/kernels/ops/fp8.py): granularity 0 per tensor (dynamic, or
  // the static scale given), 1 per token, 2 per 1 x 128 group (column_major_scales: the scales'
  // strides are (1, M)); returns the e4m3 values and the float32 scales.
  m.def(
      "quantize_fp8(Tensor x, int granularity, Tensor? scale, bool column_major_scales) "
      "-> (Tensor, Tensor)");
  // Scaled FP8 GEMM (python/kernels/ops/fp8.py): (a * scale_a) @ (b * scale_b)^T (+ bias), a
  // e4m3 [M, K], b e4m3 [N, K]; the granularity is read from the scales' shapes; use_fast_accum
  // allows FP8 fast accumulation (per-tensor / row-wise scales).
  m.def(
      "fp8_gemm(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, ScalarType out_dtype, "
      "Tensor? bias, bool use_fast_accum) -> Tensor");
}
