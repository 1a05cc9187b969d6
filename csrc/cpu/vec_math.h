// Transcendental functions on the vector layer, written once for every ISA. Polynomial
// coefficients are least-squares fits (relative error, Chebyshev nodes) made for this file;
// each comment gives the fit's error with the coefficients rounded to float32.
#pragma once

namespace kernels::cpu {

// e^x to ~1 ulp. Overflows to infinity above ~88.4 and flushes to 0 below ~-87.7 (no
// subnormal results), NaN stays NaN.
template <class Vec>
inline Vec exp(Vec x) {
  x = clamp(x, -88.0f, 88.7f);
  const Vec n = round_nearest(x * Vec::set1(1.44269504f));
  // x - n ln2 in two steps: ln2_hi has few enough bits that n * ln2_hi is exact.
  Vec r = fnmadd(n, Vec::set1(0.693359375f), x);
  r = fnmadd(n, Vec::set1(-2.12194440e-4f), r);
  // e^r on [-ln2/2, ln2/2], degree 6, relative error 2e-9 before the float32 rounding of the
  // coefficients; evaluation rounding dominates either way.
  Vec p = Vec::set1(1.383683e-3f);
  p = fmadd(p, r, Vec::set1(8.374816e-3f));
  p = fmadd(p, r, Vec::set1(4.1668225e-2f));
  p = fmadd(p, r, Vec::set1(0.1666642f));
  p = fmadd(p, r, Vec::set1(0.4999999f));
  p = fmadd(p, r, Vec::set1(1.0f));
  p = fmadd(p, r, Vec::set1(1.0f));
  return p * pow2i(n);
}

// tanh(x) to a few ulp: (1 - e^-2|x|) / (1 + e^-2|x|) with x's sign, and the Taylor series to
// x^13 below |x| = 0.3, where the subtraction would cancel (truncation error < 2e-8 relative).
template <class Vec>
inline Vec tanh(Vec x) {
  const Vec one = Vec::set1(1.0f);
  const Vec zero = Vec::set1(0.0f);
  const Vec a = abs(x);
  const Vec t = exp(Vec::set1(-2.0f) * a);
  const Vec big = (one - t) / (one + t);
  const Vec big_signed = select(less(x, zero), zero - big, big);
  const Vec x2 = x * x;
  Vec p = Vec::set1(21844.0f / 6081075.0f);
  p = fmadd(p, x2, Vec::set1(-1382.0f / 155925.0f));
  p = fmadd(p, x2, Vec::set1(62.0f / 2835.0f));
  p = fmadd(p, x2, Vec::set1(-17.0f / 315.0f));
  p = fmadd(p, x2, Vec::set1(2.0f / 15.0f));
  p = fmadd(p, x2, Vec::set1(-1.0f / 3.0f));
  const Vec small = fmadd(p * x2, x, x);
  return select(less(a, Vec::set1(0.3f)), small, big_signed);
}

// x * sigmoid(x) = x / (1 + e^-x): exact division, and no cancellation for either sign.
template <class Vec>
inline Vec silu(Vec x) {
  return x / (Vec::set1(1.0f) + exp(Vec::set1(0.0f) - x));
}

// GELU, tanh form: 0.5 x (1 + tanh(u)) is x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3).
template <class Vec>
inline Vec gelu_tanh(Vec x) {
  const Vec x2 = x * x;
  const Vec minus_2u =
      x * fmadd(x2, Vec::set1(-2.0f * 0.7978845608f * 0.044715f), Vec::set1(-2.0f * 0.7978845608f));
  return x / (Vec::set1(1.0f) + exp(minus_2u));
}

// GELU, exact form: 0.5 x (1 + erf(z)), z = x / sqrt 2. Only 1 + erf(z) is needed, never erf
// alone: it is erfc(|z|) for z < 0 and 2 - erfc(z) for z >= 0, so one erfc with a small relative
// error serves both signs, far into the negative tail, with no cancellation and no branch.
template <class Vec>
inline Vec gelu_erf(Vec x) {
  const Vec one = Vec::set1(1.0f);
  const Vec zero = Vec::set1(0.0f);
  const Vec half = Vec::set1(0.5f);
  // erfc(10) is far below the smallest float; the cap keeps x^2 finite for infinite x.
  const Vec xc = clamp(x, -14.2f, 14.2f);
  const Vec z = xc * Vec::set1(0.70710678f);
  const Vec a = abs(z);

  // erfc(a) = e^(-a^2) Q(t), t = 1 / (1 + 0.45 a), degree 9, relative error 3.3e-8 on [0, 10].
  const Vec t = one / fmadd(a, Vec::set1(0.45f), one);
  Vec q = Vec::set1(-3.957443e-2f);
  q = fmadd(q, t, Vec::set1(0.25774986f));
  q = fmadd(q, t, Vec::set1(-0.6327852f));
  q = fmadd(q, t, Vec::set1(0.6584652f));
  q = fmadd(q, t, Vec::set1(-0.27440193f));
  q = fmadd(q, t, Vec::set1(0.32753152f));
  q = fmadd(q, t, Vec::set1(0.18961212f));
  q = fmadd(q, t, Vec::set1(0.2600555f));
  q = fmadd(q, t, Vec::set1(0.25332543f));
  q = fmadd(q, t, Vec::set1(2.193896e-5f));
  // a^2 = x^2 / 2 from x itself (e^(-a^2) would amplify the rounding error of z by 2 a^2), and
  // the rounding error of x^2 taken back to first order: e^(-a^2 - err) = e^(-a^2) (1 - err).
  const Vec x2 = xc * xc;
  const Vec err = half * square_error(xc, x2);
  const Vec erfc_a = exp(zero - half * x2) * fnmadd(err, one, one) * q;

  const Vec one_plus_erf = select(less(z, zero), erfc_a, Vec::set1(2.0f) - erfc_a);
  return half * x * one_plus_erf;
}

}  // namespace kernels::cpu
