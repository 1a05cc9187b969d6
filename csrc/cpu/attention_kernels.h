// Paged attention (decode and ragged prefill) and the merge of partial attention results, written
// once over the vector layer.
//
// One work item is a tile: up to MAX_ROWS (query token, query head) rows of one sequence that
// share a KV head, over a range of its keys. The keys are walked in blocks of BK, flash-style
// (online softmax): the block's K rows are converted to float32 once (16-bit caches) and dotted
// with every row of the tile, N keys at a time so that one transposing reduction (hsum_lanes)
// yields N scores; the scores go through a vectorised exp; each V row is converted once per RB
// rows while the accumulators of those rows stay in registers. Everything accumulates in
// float32; the output is rounded once at the end.
//
// Rows of q, K, V and the accumulators are kept in Vec::load2 order (for bfloat16 the even and
// the odd elements of each 2N chunk apart, which saves a conversion step per vector); dot
// products do not care, and the output goes back through Vec::store2.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "cpu/kernel_table.h"
#include "cpu/vec_math.h"
#include "cpu/vec_tail.h"

namespace kernels::cpu {

// Keys per block, also the alignment of decode's context chunks.
constexpr int64_t kAttentionKeyBlock = 64;

template <class Vec, class T, int D>
struct PagedAttention {
  static constexpr int N = Vec::N;
  static constexpr int NV = D / N;  // vectors per row: 4 .. 32, even
  static constexpr int BK = int(kAttentionKeyBlock);
  static constexpr int MAX_ROWS = int(attention_max_rows(D));
  // P.V register tile: RB rows x CV vectors of accumulators, plus CV vectors of V.
  static constexpr int CV = NV < 4 ? NV : 4;
  static constexpr int RB = (N >= 16 ? 24 : 12) / CV;
  static_assert(D % N == 0 && NV % 2 == 0 && NV % CV == 0, "head_dim must be a multiple of 2N");

  struct Workspace {
    alignas(64) float q[MAX_ROWS * D];
    alignas(64) float acc[MAX_ROWS * D];
    alignas(64) float s[MAX_ROWS * BK];  // scores, then probabilities, of the current block
    alignas(64) float k[BK * D];         // the block's K rows in float32 (16-bit caches)
    float m[MAX_ROWS];                   // running max
    float l[MAX_ROWS];                   // running sum of e^(score - m)
    int64_t lo[MAX_ROWS], hi[MAX_ROWS];  // per query token: its keys [lo, hi)
    int a[MAX_ROWS], b[MAX_ROWS];        // per query token: its keys within the current block
    int active[MAX_ROWS];                // query tokens with keys in the current block
    int rows[MAX_ROWS];                  // their rows
    const T* kp[2][BK];  // K and V rows of the current block and of the next one
    const T* vp[2][BK];
    const float* kf[BK];
  };

  struct Tile {
    int64_t seq;        // page-table row
    int64_t first_q;    // q row of the first query token
    int64_t first_pos;  // its absolute position
    int64_t n_tokens;
    int64_t kv_head;
    int64_t head_begin;  // first query head, within the group
    int64_t n_heads;
    int64_t key_begin, key_end;  // keys considered at all
  };

  static float dot(const float* k, const float* q) {
    Vec s0 = Vec::load(k) * Vec::load(q), s1 = Vec::load(k + N) * Vec::load(q + N);
    for (int c = 2; c < NV; c += 2) {
      s0 = fmadd(Vec::load(k + c * N), Vec::load(q + c * N), s0);
      s1 = fmadd(Vec::load(k + (c + 1) * N), Vec::load(q + (c + 1) * N), s1);
    }
    return hsum(s0 + s1);
  }

  // Scores of one row against keys [a, b) of the block, N keys per reduction.
  static void scores(const float* const* kf, const float* q, float* s, int a, int b) {
    int j = a;
    for (; j + N <= b; j += N) {
      Vec acc[N];
      const Vec q0 = Vec::load(q);
      for (int i = 0; i < N; ++i) acc[i] = Vec::load(kf[j + i]) * q0;
      for (int c = 1; c < NV; ++c) {
        const Vec qc = Vec::load(q + c * N);
        for (int i = 0; i < N; ++i) acc[i] = fmadd(Vec::load(kf[j + i] + c * N), qc, acc[i]);
      }
      hsum_lanes(acc).store(s + j);
    }
    for (; j < b; ++j) s[j] = dot(kf[j], q);
  }

  // acc[r] += sum_j p[r][j] V_j for R rows, j in [j0, j1).
  template <int R>
  static void pv(float* const* acc, const float* const* p, const T* const* vp, int j0, int j1) {
    for (int seg = 0; seg < NV; seg += CV) {
      Vec o[R][CV];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < CV; ++c) o[r][c] = Vec::load(acc[r] + (seg + c) * N);
      for (int j = j0; j < j1; ++j) {
        Vec v[CV];
        for (int c = 0; c < CV; c += 2) Vec::load2(vp[j] + (seg + c) * N, v[c], v[c + 1]);
        for (int r = 0; r < R; ++r) {
          const Vec pr = Vec::set1(p[r][j]);
          for (int c = 0; c < CV; ++c) o[r][c] = fmadd(pr, v[c], o[r][c]);
        }
      }
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < CV; ++c) o[r][c].store(acc[r] + (seg + c) * N);
    }
  }

  template <int R = RB>
  static void pv_rows(int count, float* const* acc, const float* const* p, const T* const* vp,
                      int j0, int j1) {
    if constexpr (R > 1) {
      if (count < R) return pv_rows<R - 1>(count, acc, p, vp, j0, j1);
    }
    pv<R>(acc, p, vp, j0, j1);
  }

  // Attention of one tile. Final results go to args.out / args.lse; with part_out, float32
  // [n_heads, D] and [n_heads] partial results of a one-token tile go there instead.
  static void run_tile(const AttentionArgs& args, const Tile& tile, Workspace& w, float* part_out,
                       float* part_lse) {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const int64_t H = args.num_heads, Hk = args.num_kv_heads, G = H / Hk;
    const int64_t gh = tile.n_heads;
    const int64_t n_rows = tile.n_tokens * gh;
    const int64_t head0 = tile.kv_head * G + tile.head_begin;
    const T* q = static_cast<const T*>(args.q);

    const Vec scale = Vec::set1(args.scale);
    for (int64_t t = 0; t < tile.n_tokens; ++t) {
      for (int64_t g = 0; g < gh; ++g) {
        const T* src = q + ((tile.first_q + t) * H + head0 + g) * D;
        float* dst = w.q + (t * gh + g) * D;
        for (int c = 0; c < NV; c += 2) {
          Vec x0, x1;
          Vec::load2(src + c * N, x0, x1);
          (x0 * scale).store(dst + c * N);
          (x1 * scale).store(dst + (c + 1) * N);
        }
      }
    }
    std::fill(w.acc, w.acc + n_rows * D, 0.0f);
    std::fill(w.m, w.m + n_rows, kNegInf);
    std::fill(w.l, w.l + n_rows, 0.0f);

    const int64_t kv_len = args.kv_lens[tile.seq];
    int64_t tile_lo = tile.key_end, tile_hi = tile.key_begin;
    for (int64_t t = 0; t < tile.n_tokens; ++t) {
      const int64_t pos = tile.first_pos + t;
      int64_t lo = args.window > 0 ? std::max<int64_t>(0, pos - args.window + 1) : 0;
      int64_t hi = args.causal ? pos + 1 : kv_len;
      lo = std::max(lo, tile.key_begin);
      hi = std::max(lo, std::min(hi, tile.key_end));
      w.lo[t] = lo;
      w.hi[t] = hi;
      if (lo < hi) {
        tile_lo = std::min(tile_lo, lo);
        tile_hi = std::max(tile_hi, hi);
      }
    }

    const int64_t page_size = args.page_size;
    const int64_t token_stride = Hk * D;
    const int32_t* pages = args.page_table + tile.seq * args.max_pages;
    const T* k_base = static_cast<const T*>(args.k_cache) + tile.kv_head * D;
    const T* v_base = static_cast<const T*>(args.v_cache) + tile.kv_head * D;
    const float cap = args.soft_cap;
    const Vec cap_v = Vec::set1(cap), inv_cap_v = Vec::set1(cap > 0 ? 1.0f / cap : 0.0f);

    // Row addresses, one block ahead: the next block's K rows and this block's V rows are
    // prefetched while this block's scores are computed.
    int64_t page = tile_lo / page_size, offset = tile_lo % page_size;
    const auto fill = [&](const T** kp, const T** vp, int64_t n) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t slot = (int64_t(pages[page]) * page_size + offset) * token_stride;
        kp[j] = k_base + slot;
        vp[j] = v_base + slot;
        if (++offset == page_size) {
          offset = 0;
          ++page;
        }
      }
    };
    const auto prefetch = [](const T* const* rows, int64_t n) {
      for (int64_t j = 0; j < n; ++j) {
        const char* p = reinterpret_cast<const char*>(rows[j]);
        for (size_t o = 0; o < D * sizeof(T); o += 64) __builtin_prefetch(p + o);
      }
    };
    int buf = 0;
    if (tile_lo < tile_hi) {
      fill(w.kp[0], w.vp[0], std::min<int64_t>(BK, tile_hi - tile_lo));
      prefetch(w.kp[0], std::min<int64_t>(BK, tile_hi - tile_lo));
    }

    for (int64_t kb = tile_lo; kb < tile_hi; kb += BK, buf ^= 1) {
      const int nk = int(std::min<int64_t>(BK, tile_hi - kb));
      const T* const* kp = w.kp[buf];
      const T* const* vp = w.vp[buf];
      prefetch(vp, nk);
      if (kb + BK < tile_hi) {
        const int64_t n_next = std::min<int64_t>(BK, tile_hi - kb - BK);
        fill(w.kp[buf ^ 1], w.vp[buf ^ 1], n_next);
        prefetch(w.kp[buf ^ 1], n_next);
      }
      int n_active = 0;
      for (int64_t t = 0; t < tile.n_tokens; ++t) {
        const int a = int(std::clamp<int64_t>(w.lo[t] - kb, 0, nk));
        const int b = int(std::clamp<int64_t>(w.hi[t] - kb, 0, nk));
        w.a[t] = a;
        w.b[t] = b;
        if (a < b) w.active[n_active++] = int(t);
      }
      if (n_active == 0) continue;

      // Scores: the K rows are converted once, then dotted with every row that attends to them.
      int ka = nk, kz = 0;
      for (int i = 0; i < n_active; ++i) {
        ka = std::min(ka, w.a[w.active[i]]);
        kz = std::max(kz, w.b[w.active[i]]);
      }
      for (int j = ka; j < kz; ++j) {
        if constexpr (std::is_same_v<T, float>) {
          w.kf[j] = kp[j];
        } else {
          float* dst = w.k + j * D;
          for (int c = 0; c < NV; c += 2) {
            Vec x0, x1;
            Vec::load2(kp[j] + c * N, x0, x1);
            x0.store(dst + c * N);
            x1.store(dst + (c + 1) * N);
          }
          w.kf[j] = dst;
        }
      }
      for (int i = 0; i < n_active; ++i) {
        const int t = w.active[i];
        for (int64_t g = 0; g < gh; ++g) {
          const int64_t r = t * gh + g;
          scores(w.kf, w.q + r * D, w.s + r * BK, w.a[t], w.b[t]);
        }
      }

      // Online softmax: new max, rescale, probabilities in place of the scores.
      int n_active_rows = 0;
      for (int i = 0; i < n_active; ++i) {
        const int t = w.active[i];
        const int a = w.a[t], b = w.b[t];
        for (int64_t g = 0; g < gh; ++g) {
          const int64_t r = t * gh + g;
          float* srow = w.s + r * BK;
          if (cap > 0) {
            for (int j = a / N * N; j < b; j += N) {
              (cap_v * tanh(Vec::load(srow + j) * inv_cap_v)).store(srow + j);
            }
          }
          for (int j = 0; j < a; ++j) srow[j] = kNegInf;
          for (int j = b; j < BK; ++j) srow[j] = kNegInf;
          Vec mx = Vec::load(srow);
          for (int j = N; j < BK; j += N) mx = max(mx, Vec::load(srow + j));
          const float m_old = w.m[r];
          const float m_new = std::max(m_old, hmax(mx));
          const Vec m_v = Vec::set1(m_new);
          Vec sum = Vec::set1(0.0f);
          for (int j = 0; j < BK; j += N) {
            const Vec p = exp(Vec::load(srow + j) - m_v);
            p.store(srow + j);
            sum = sum + p;
          }
          const float alpha = std::exp(m_old - m_new);  // 0 on the first block
          w.l[r] = w.l[r] * alpha + hsum(sum);
          w.m[r] = m_new;
          if (alpha != 1.0f) {
            float* acc = w.acc + r * D;
            const Vec alpha_v = Vec::set1(alpha);
            for (int c = 0; c < NV; ++c) (Vec::load(acc + c * N) * alpha_v).store(acc + c * N);
          }
          w.rows[n_active_rows++] = int(r);
        }
      }

      // P.V, RB rows at a time; a row's probabilities outside its keys are 0.
      for (int i0 = 0; i0 < n_active_rows; i0 += RB) {
        const int count = std::min(RB, n_active_rows - i0);
        float* acc[RB];
        const float* p[RB];
        int j0 = nk, j1 = 0;
        for (int i = 0; i < count; ++i) {
          const int r = w.rows[i0 + i];
          const int t = int(r / gh);
          acc[i] = w.acc + int64_t(r) * D;
          p[i] = w.s + int64_t(r) * BK;
          j0 = std::min(j0, w.a[t]);
          j1 = std::max(j1, w.b[t]);
        }
        pv_rows(count, acc, p, vp, j0, j1);
      }
    }

    T* out = static_cast<T*>(args.out);
    for (int64_t t = 0; t < tile.n_tokens; ++t) {
      for (int64_t g = 0; g < gh; ++g) {
        const int64_t r = t * gh + g;
        const float l = w.l[r];
        const float lse = l > 0 ? w.m[r] + std::log(l) : kNegInf;
        const Vec inv = Vec::set1(l > 0 ? 1.0f / l : 0.0f);
        const float* acc = w.acc + r * D;
        if (part_out != nullptr) {
          float* o = part_out + r * D;  // stays in load2 order
          for (int c = 0; c < NV; ++c) (Vec::load(acc + c * N) * inv).store(o + c * N);
          part_lse[r] = lse;
        } else {
          const int64_t row = (tile.first_q + t) * H + head0 + g;
          T* o = out + row * D;
          for (int c = 0; c < NV; c += 2) {
            Vec::store2(o + c * N, Vec::load(acc + c * N) * inv, Vec::load(acc + (c + 1) * N) * inv);
          }
          args.lse[row] = lse;
        }
      }
    }
  }

  // One per thread, kept: allocating ~100 KiB per call would have glibc hand it back to the OS
  // and fault it in again every time. Uninitialised: run_tile sets what it reads.
  static Workspace& workspace() {
    thread_local std::unique_ptr<Workspace> w(new Workspace);
    return *w;
  }

  static void decode(const AttentionArgs& args, int64_t begin, int64_t end) {
    Workspace& w = workspace();
    const int64_t Hk = args.num_kv_heads, G = args.num_heads / Hk;
    const int64_t hpi = args.heads_per_item, chunks = args.chunks;
    for (int64_t item = begin; item < end; ++item) {
      int64_t rest = item;
      const int64_t chunk = rest % chunks;
      rest /= chunks;
      const int64_t slice = rest % args.head_slices;
      rest /= args.head_slices;
      const int64_t kv_head = rest % Hk, seq = rest / Hk;
      const int64_t len = args.kv_lens[seq];
      Tile tile{seq, seq, len - 1, 1, kv_head, slice * hpi, std::min(hpi, G - slice * hpi), 0, len};
      if (chunks == 1) {
        run_tile(args, tile, w, nullptr, nullptr);
        continue;
      }
      const int64_t lo = args.window > 0 ? std::max<int64_t>(0, len - args.window) : 0;
      int64_t size = (len - lo + chunks - 1) / chunks;
      size = (size + 15) / 16 * 16;
      tile.key_begin = std::min(len, lo + chunk * size);
      tile.key_end = std::min(len, tile.key_begin + size);
      run_tile(args, tile, w, args.part_out + item * hpi * D, args.part_lse + item * hpi);
    }
  }

  // Merges the chunks of decode items (sequence, kv head, slice) into the final output.
  static void decode_merge(const AttentionArgs& args, int64_t begin, int64_t end) {
    const int64_t Hk = args.num_kv_heads, H = args.num_heads, G = H / Hk;
    const int64_t hpi = args.heads_per_item, chunks = args.chunks;
    T* out = static_cast<T*>(args.out);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t slice = group % args.head_slices;
      const int64_t kv_head = (group / args.head_slices) % Hk;
      const int64_t seq = group / args.head_slices / Hk;
      const int64_t head0 = kv_head * G + slice * hpi;
      const int64_t nh = std::min(hpi, G - slice * hpi);
      for (int64_t g = 0; g < nh; ++g) {
        const int64_t row = seq * H + head0 + g;
        T* o = out + row * D;
        const auto part = [&](int64_t c) { return (group * chunks + c) * hpi + g; };
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, args.part_lse[part(c)]);
        if (mx == -std::numeric_limits<float>::infinity()) {
          for (int c = 0; c < NV; ++c) Vec::set1(0.0f).store(o + c * N);
          args.lse[row] = mx;
          continue;
        }
        float weight[64];  // chunks <= 64 (bindings.cpp)
        float total = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) {
          weight[c] = std::exp(args.part_lse[part(c)] - mx);
          total += weight[c];
        }
        const float inv = 1.0f / total;
        for (int v = 0; v < NV; v += 2) {
          Vec acc0 = Vec::set1(0.0f), acc1 = acc0;
          for (int64_t c = 0; c < chunks; ++c) {
            if (weight[c] == 0.0f) continue;  // an empty chunk's output is 0 anyway
            const Vec wc = Vec::set1(weight[c] * inv);
            const float* src = args.part_out + part(c) * D + v * N;
            acc0 = fmadd(wc, Vec::load(src), acc0);
            acc1 = fmadd(wc, Vec::load(src + N), acc1);
          }
          Vec::store2(o + v * N, acc0, acc1);  // the partial rows are in load2 order
        }
        args.lse[row] = mx + std::log(total);
      }
    }
  }

  static void prefill(const AttentionArgs& args, int64_t begin, int64_t end) {
    Workspace& w = workspace();
    const int64_t Hk = args.num_kv_heads, G = args.num_heads / Hk;
    const int64_t hpi = args.heads_per_item, tpt = args.tokens_per_tile;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t slice = item % args.head_slices;
      const int64_t kv_head = (item / args.head_slices) % Hk;
      const int64_t tile_index = item / args.head_slices / Hk;
      // The last sequence whose first tile is <= tile_index; it is not empty.
      const int64_t seq =
          std::upper_bound(args.tile_start, args.tile_start + args.batch + 1, tile_index) -
          args.tile_start - 1;
      const int64_t first = (tile_index - args.tile_start[seq]) * tpt;
      const int64_t n_q = args.qo_indptr[seq + 1] - args.qo_indptr[seq];
      const int64_t len = args.kv_lens[seq];
      const Tile tile{seq,
                      args.qo_indptr[seq] + first,
                      len - n_q + first,
                      std::min(tpt, n_q - first),
                      kv_head,
                      slice * hpi,
                      std::min(hpi, G - slice * hpi),
                      0,
                      len};
      run_tile(args, tile, w, nullptr, nullptr);
    }
  }
};

// v = v_a * e^(lse_a - lse) + v_b * e^(lse_b - lse), lse = log(e^lse_a + e^lse_b), per row.
template <class Vec, class T>
void merge_attention_rows(const MergeArgs& args, int64_t begin, int64_t end) {
  constexpr int N = Vec::N;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t D = args.head_dim;
  const int64_t body = D - D % N;
  const T* va = static_cast<const T*>(args.v_a);
  const T* vb = static_cast<const T*>(args.v_b);
  T* v = static_cast<T*>(args.v);
  for (int64_t r = begin; r < end; ++r) {
    const float la = args.lse_a[r], lb = args.lse_b[r];
    const float m = la > lb ? la : lb;  // a NaN in lse_a falls through to the weights below
    const T* a = va + r * D;
    const T* b = vb + r * D;
    T* o = v + r * D;
    float wa = 0.0f, wb = 0.0f;
    if (m == kNegInf) {
      args.lse[r] = kNegInf;  // both parts empty: output 0
    } else {
      wa = std::exp(la - m);
      wb = std::exp(lb - m);
      const float total = wa + wb;
      args.lse[r] = m + std::log(total);
      wa /= total;
      wb /= total;
    }
    // An empty part (weight 0) is not read at all, so whatever it holds cannot leak in.
    const auto sweep = [&](auto f) {
      int64_t i = 0;
      for (; i < body; i += N) f(i, N).store(o + i);
      if (i < D) store_n(o + i, f(i, D - i), D - i);
    };
    const auto load = [&](const T* x, int64_t i, int64_t n) {
      return n == N ? Vec::load(x + i) : load_n<Vec>(x + i, n);
    };
    const Vec wa_v = Vec::set1(wa), wb_v = Vec::set1(wb);
    if (wa == 0.0f && wb == 0.0f) {
      sweep([&](int64_t, int64_t) { return Vec::set1(0.0f); });
    } else if (wa == 0.0f) {
      sweep([&](int64_t i, int64_t n) { return load(b, i, n) * wb_v; });
    } else if (wb == 0.0f) {
      sweep([&](int64_t i, int64_t n) { return load(a, i, n) * wa_v; });
    } else {
      sweep([&](int64_t i, int64_t n) { return fmadd(load(a, i, n), wa_v, load(b, i, n) * wb_v); });
    }
  }
}

}  // namespace kernels::cpu
