/* crosslevel kernels: int8 (TFLite quantization arithmetic, bit-exact with TFLite Micro)
 * and float32, for NHWC tensors. C99, no dependency beyond the C standard library.
 *
 * Every function is `static inline` so that a generated model includes this header once
 * and the compiler sees the constant shapes of each call (and drops unused kernels).
 * The portable loops are written for the auto-vectorizer: the innermost loop runs over a
 * contiguous channel axis with restrict pointers and no calls, so `-O3` turns it into SIMD
 * code. Explicit SIMD (below) replaces them in the hot int8 kernels where the target has
 * it: GEMM core (1x1, im2col, fully connected), direct and depthwise convolution,
 * requantization and ADD.
 *
 * Fixed point follows gemmlowp / tensorflow/lite/kernels/internal/common.h with
 * TFLITE_SINGLE_ROUNDING unset (the tflite-micro build): SaturatingRoundingDoublingHighMul
 * followed by RoundingDivideByPOT. Signed overflow is avoided by wrapping through uint32.
 */
#ifndef CL_KERNELS_H
#define CL_KERNELS_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CL_RESTRICT restrict

/* Explicit SIMD, chosen by the compiler's target macros (-DCL_NO_SIMD forces the portable
 * code, for comparison): AVX2 on x86 (int8 widened to int16, _mm256_madd_epi16), VNNI on
 * x86 with AVX512-VNNI/VL/BW (_mm256_dpbusd: u8 x s8 dot products of 4), and the Arm
 * DSP extension on Cortex-M4/M7 (__sxtb16 + __smlad: two 16-bit MACs per instruction).
 * Every path computes the same int32 sums exactly (no saturating instruction is used), so
 * the outputs are bit-identical to the portable code and to TFLite. */
#if !defined(CL_NO_SIMD) && defined(__AVX2__)
#define CL_SIMD_AVX2 1
#include <immintrin.h>
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define CL_SIMD_VNNI 1
#define cl_dpbusd(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#endif
#elif !defined(CL_NO_SIMD) && defined(__ARM_FEATURE_DSP)
#define CL_SIMD_DSP 1
#include <arm_acle.h>
#endif

/* On the host the hot kernels are always inlined at their call sites, so that each layer's
 * constant shapes reach the SIMD loops (trip counts, masks, short copies): measured 30-40%
 * faster on the MLPerf Tiny models; code size is not a concern there. Host SIMD builds
 * also keep small per-call buffers on the stack (variable-length arrays: a second im2col
 * patch, window row pointers, a bias). Microcontroller builds keep gcc's inlining choice
 * (flash) and use no variable-length array. */
#if defined(CL_SIMD_AVX2) && defined(__GNUC__)
#define CL_HOST_INLINE __attribute__((always_inline))
#else
#define CL_HOST_INLINE
#endif

/* ------------------------------------------------------------------ fixed point */
static inline int32_t cl_wadd(int32_t a, int32_t b) {
  return (int32_t)((uint32_t)a + (uint32_t)b);
}

static inline int32_t cl_wshl(int32_t a, int s) { return (int32_t)((uint32_t)a << s); }

/* gemmlowp SaturatingRoundingDoublingHighMul (ARM VQRDMULH). */
static inline int32_t cl_srdhm(int32_t a, int32_t b) {
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
  int32_t high = (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* truncates toward 0 */
  return (a == b && a == INT32_MIN) ? INT32_MAX : high;
}

/* gemmlowp RoundingDivideByPOT: arithmetic shift right, rounding half away from zero. */
static inline int32_t cl_rdbpot(int32_t x, int e) {
  int32_t mask = (int32_t)(((uint32_t)1 << e) - 1u);
  int32_t rem = x & mask;
  int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (rem > thr ? 1 : 0);
}

/* TFLite MultiplyByQuantizedMultiplier (double rounding): x * m * 2^(shift - 31). */
static inline int32_t cl_mbqm(int32_t x, int32_t m, int32_t shift) {
  int left = shift > 0 ? (int)shift : 0;
  int right = shift > 0 ? 0 : (int)-shift;
  return cl_rdbpot(cl_srdhm(cl_wshl(x, left), m), right);
}

/* gemmlowp SaturatingRoundingMultiplyByPOT for a positive exponent. */
static inline int32_t cl_sat_shl(int32_t x, int e) {
  int32_t thr = (int32_t)(((uint32_t)1 << (31 - e)) - 1u);
  if (x > thr) return INT32_MAX;
  if (x < -thr) return INT32_MIN;
  return cl_wshl(x, e);
}

static inline int8_t cl_clamp8(int32_t v, int32_t lo, int32_t hi) {
  return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

static inline float cl_clampf(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/* ------------------------------------------------------------------ explicit SIMD */
#if defined(CL_SIMD_AVX2)
/* cl_srdhm on 8 lanes. The scalar "(ab + nudge) / 2^31, truncated toward 0" equals
 * floor((ab + 2^30) / 2^31) for every product (for ab < 0, truncating ab + 1 - 2^30 is the
 * floor of ab + 1 - 2^30 + 2^31 - 1), and the floor's low 32 bits are bits 31..62 of the
 * 64-bit sum, whatever its sign. Only a = b = INT32_MIN gives INT32_MIN there (2^31
 * wrapped); it saturates to INT32_MAX as in gemmlowp. */
CL_HOST_INLINE
static inline __m256i cl_srdhm_avx2(__m256i a, __m256i b) {
  const __m256i half = _mm256_set1_epi64x((int64_t)1 << 30);
  __m256i even = _mm256_add_epi64(_mm256_mul_epi32(a, b), half);
  __m256i odd = _mm256_add_epi64(
      _mm256_mul_epi32(_mm256_shuffle_epi32(a, 0xf5), _mm256_shuffle_epi32(b, 0xf5)), half);
  __m256i high = _mm256_blend_epi32(_mm256_srli_epi64(even, 31), _mm256_slli_epi64(odd, 1), 0xaa);
  return _mm256_xor_si256(high, _mm256_cmpeq_epi32(high, _mm256_set1_epi32(INT32_MIN)));
}

/* cl_rdbpot on 8 lanes with a per-lane exponent. */
CL_HOST_INLINE
static inline __m256i cl_rdbpot_avx2(__m256i x, __m256i e) {
  __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(1), e),
                                  _mm256_set1_epi32(1));
  __m256i rem = _mm256_and_si256(x, mask);
  __m256i thr = _mm256_sub_epi32(_mm256_srli_epi32(mask, 1), _mm256_srai_epi32(x, 31));
  return _mm256_sub_epi32(_mm256_srav_epi32(x, e), _mm256_cmpgt_epi32(rem, thr));
}

/* cl_mbqm on 8 lanes. */
CL_HOST_INLINE
static inline __m256i cl_mbqm_avx2(__m256i x, __m256i mult, __m256i shift) {
  __m256i zero = _mm256_setzero_si256();
  __m256i left = _mm256_max_epi32(shift, zero);
  __m256i right = _mm256_max_epi32(_mm256_sub_epi32(zero, shift), zero);
  return cl_rdbpot_avx2(cl_srdhm_avx2(_mm256_sllv_epi32(x, left), mult), right);
}

/* cl_requant_row for 8 channels: the 8 int8 results in the low 8 bytes. */
CL_HOST_INLINE
static inline __m128i cl_requant8_avx2(__m256i acc, __m256i mult, __m256i shift, __m256i zp,
                                       __m256i lo, __m256i hi) {
  __m256i v = _mm256_add_epi32(cl_mbqm_avx2(acc, mult, shift), zp);
  v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
#if defined(CL_SIMD_VNNI)
  return _mm256_cvtepi32_epi8(v); /* AVX512-VL vpmovdb; exact: in range */
#else
  __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
  return _mm_unpacklo_epi32(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
#endif
}

#if defined(CL_SIMD_VNNI)
/* cl_srdhm_avx2, cl_rdbpot_avx2, cl_mbqm_avx2 and cl_requant8_avx2 on 16 lanes (the
 * same arithmetic, with AVX-512 masks for the compares). */
CL_HOST_INLINE
static inline __m512i cl_srdhm_avx512(__m512i a, __m512i b) {
  const __m512i half = _mm512_set1_epi64((int64_t)1 << 30);
  __m512i even = _mm512_add_epi64(_mm512_mul_epi32(a, b), half);
  __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0xf5),
                                                  _mm512_shuffle_epi32(b, (_MM_PERM_ENUM)0xf5)),
                                 half);
  __m512i high = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(even, 31),
                                         _mm512_slli_epi64(odd, 1));
  __mmask16 wrapped = _mm512_cmpeq_epi32_mask(high, _mm512_set1_epi32(INT32_MIN));
  return _mm512_mask_mov_epi32(high, wrapped, _mm512_set1_epi32(INT32_MAX));
}

CL_HOST_INLINE
static inline __m512i cl_mbqm_avx512(__m512i acc, __m512i mult, __m512i shift) {
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  __m512i left = _mm512_max_epi32(shift, zero);
  __m512i right = _mm512_max_epi32(_mm512_sub_epi32(zero, shift), zero);
  __m512i x = cl_srdhm_avx512(_mm512_sllv_epi32(acc, left), mult);
  __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
  __m512i thr = _mm512_sub_epi32(_mm512_srli_epi32(mask, 1), _mm512_srai_epi32(x, 31));
  __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, mask), thr);
  __m512i v = _mm512_srav_epi32(x, right);
  return _mm512_mask_add_epi32(v, up, v, one);
}

/* The 16 int8 results. */
CL_HOST_INLINE
static inline __m128i cl_requant16_avx512(__m512i acc, __m512i mult, __m512i shift, __m512i zp,
                                          __m512i lo, __m512i hi) {
  __m512i v = _mm512_add_epi32(cl_mbqm_avx512(acc, mult, shift), zp);
  return _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi));
}
#endif

/* The four sums of four vectors of 8 int32. */
CL_HOST_INLINE
static inline __m128i cl_hsum4_avx2(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

CL_HOST_INLINE
static inline int32_t cl_hsum_avx2(__m256i a) {
  __m128i s = cl_hsum4_avx2(a, a, a, a);
  return _mm_cvtsi128_si32(s);
}

static inline __m256i cl_load32(const int8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

static inline __m256i cl_load16_s16(const int8_t *p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}
#endif /* CL_SIMD_AVX2 */

/* sum_{i in [from, k)} x[i] * w[i]: the scalar tail of the SIMD dot products. */
static inline int32_t cl_dot_tail_s8(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                                     int from, int k) {
  int32_t s = 0;
  for (int i = from; i < k; ++i) s += (int32_t)x[i] * (int32_t)w[i];
  return s;
}

/* Requantize one row of int32 accumulators to int8 (per-channel multipliers). */
CL_HOST_INLINE
static inline void cl_requant_row(const int32_t *CL_RESTRICT acc, int8_t *CL_RESTRICT y, int n,
                                  const int32_t *CL_RESTRICT mult,
                                  const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                  int32_t hi) {
  int c = 0;
#if defined(CL_SIMD_AVX2)
  __m256i zp8 = _mm256_set1_epi32(zp), lo8 = _mm256_set1_epi32(lo), hi8 = _mm256_set1_epi32(hi);
  for (; c + 8 <= n; c += 8) {
    __m256i a = _mm256_loadu_si256((const __m256i *)(acc + c));
    __m256i m = _mm256_loadu_si256((const __m256i *)(mult + c));
    __m256i s = _mm256_loadu_si256((const __m256i *)(shift + c));
    _mm_storel_epi64((__m128i *)(y + c), cl_requant8_avx2(a, m, s, zp8, lo8, hi8));
  }
#endif
  for (; c < n; ++c) {
    y[c] = cl_clamp8(cl_mbqm(acc[c], mult[c], shift[c]) + zp, lo, hi);
  }
}

/* ------------------------------------------------------------------ int8 convolution */
#if defined(CL_SIMD_AVX2)
/* The taps [t0, t1) of a window axis that fall inside [0, size): position o*stride-pad+t*d. */
CL_HOST_INLINE
static inline void cl_taps_inside(int o, int stride, int pad, int d, int k, int size, int *t0,
                                  int *t1) {
  int start = o * stride - pad, a = 0, b = k;
  while (a < k && start + a * d < 0) ++a;
  while (b > a && start + (b - 1) * d >= size) --b;
  *t0 = a;
  *t1 = b;
}

/* The input rows under the kernel rows of output row oy (rows[ky], NULL outside the image)
 * and the in-image kernel rows [ky0, ky1): the row-pointer form the SIMD pixel kernels
 * take, so that depth-first stages (line buffers, cl_stages.h) can call them too. */
CL_HOST_INLINE
static inline void cl_window_rows(const int8_t *x, int ih, int iw, int cin, int oy, int sh,
                                  int pt, int dh, int kh, const int8_t **rows, int *ky0,
                                  int *ky1) {
  cl_taps_inside(oy, sh, pt, dh, kh, ih, ky0, ky1);
  for (int ky = 0; ky < kh; ++ky) {
    int iy = oy * sh - pt + ky * dh;
    rows[ky] = iy < 0 || iy >= ih ? NULL : x + (size_t)iy * iw * cin;
  }
}

/* One output pixel of the direct convolution (HWIO weights), 16 output channels per pass
 * with the sums in registers: each input value (plus offset, exact in int16) is
 * broadcast and multiplied by 16 weights in int16 (|product| <= 255 * 128), then widened.
 * rows[ky] is the input row under kernel row ky; only the in-image taps [ky0, ky1) x
 * [kx0, kx1) of the window starting at column ix0 are read. */
CL_HOST_INLINE
static inline void cl_direct_pixel_avx2(const int8_t *const *rows, int ix0, int cin,
                                        const int8_t *CL_RESTRICT w,
                                        const int32_t *CL_RESTRICT bias, int kw, int dw,
                                        int ky0, int ky1, int kx0, int kx1, int cout,
                                        int32_t in_off, int32_t *CL_RESTRICT acc) {
  int c = 0;
  for (; c + 16 <= cout; c += 16) {
    __m256i lo = bias ? _mm256_loadu_si256((const __m256i *)(bias + c)) : _mm256_setzero_si256();
    __m256i hi = bias ? _mm256_loadu_si256((const __m256i *)(bias + c + 8)) : lo;
    for (int ky = ky0; ky < ky1; ++ky) {
      for (int kx = kx0; kx < kx1; ++kx) {
        const int8_t *xp = rows[ky] + (size_t)(ix0 + kx * dw) * cin;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cin * cout + c;
        for (int ic = 0; ic < cin; ++ic) {
          __m256i xv = _mm256_set1_epi16((int16_t)(xp[ic] + in_off));
          __m256i p = _mm256_mullo_epi16(xv, cl_load16_s16(wp + (size_t)ic * cout));
          lo = _mm256_add_epi32(lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
          hi = _mm256_add_epi32(hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
        }
      }
    }
    _mm256_storeu_si256((__m256i *)(acc + c), lo);
    _mm256_storeu_si256((__m256i *)(acc + c + 8), hi);
  }
  for (; c + 8 <= cout; c += 8) { /* the same on 8 channels */
    __m256i sum = bias ? _mm256_loadu_si256((const __m256i *)(bias + c)) : _mm256_setzero_si256();
    for (int ky = ky0; ky < ky1; ++ky) {
      for (int kx = kx0; kx < kx1; ++kx) {
        const int8_t *xp = rows[ky] + (size_t)(ix0 + kx * dw) * cin;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cin * cout + c;
        for (int ic = 0; ic < cin; ++ic) {
          __m128i xv = _mm_set1_epi16((int16_t)(xp[ic] + in_off));
          __m128i wv = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(wp + (size_t)ic * cout)));
          sum = _mm256_add_epi32(sum, _mm256_cvtepi16_epi32(_mm_mullo_epi16(xv, wv)));
        }
      }
    }
    _mm256_storeu_si256((__m256i *)(acc + c), sum);
  }
  for (; c < cout; ++c) {
    int32_t sum = bias ? bias[c] : 0;
    for (int ky = ky0; ky < ky1; ++ky)
      for (int kx = kx0; kx < kx1; ++kx) {
        const int8_t *xp = rows[ky] + (size_t)(ix0 + kx * dw) * cin;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cin * cout + c;
        for (int ic = 0; ic < cin; ++ic) sum += (xp[ic] + in_off) * (int32_t)wp[(size_t)ic * cout];
      }
    acc[c] = sum;
  }
}
#endif

/* Direct convolution, weights re-laid out as HWIO [kh][kw][cin][cout]: the innermost
 * loop is an outer-product update over output channels (contiguous), which vectorizes
 * for any cin; taps outside the image are skipped exactly as TFLite does. */
CL_HOST_INLINE
static inline void cl_conv_s8_direct(
    const int8_t *CL_RESTRICT x, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
    int pl, int8_t *CL_RESTRICT y, int oh, int ow, int cout, int32_t in_off,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc) {
  for (int oy = 0; oy < oh; ++oy) {
#if defined(CL_SIMD_AVX2)
    const int8_t *rows[kh]; /* host SIMD builds only: on the stack */
    int ky0, ky1;
    cl_window_rows(x, ih, iw, cin, oy, sh, pt, dh, kh, rows, &ky0, &ky1);
#endif
    for (int ox = 0; ox < ow; ++ox) {
#if defined(CL_SIMD_AVX2)
      int kx0, kx1;
      cl_taps_inside(ox, sw, pl, dw, kw, iw, &kx0, &kx1);
      cl_direct_pixel_avx2(rows, ox * sw - pl, cin, w, bias, kw, dw, ky0, ky1, kx0, kx1, cout,
                           in_off, acc);
#else
      for (int c = 0; c < cout; ++c) acc[c] = bias ? bias[c] : 0;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky * dh;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx * dw;
          if (ix < 0 || ix >= iw) continue;
          const int8_t *xp = x + ((size_t)iy * iw + ix) * cin;
          const int8_t *wp = w + ((size_t)ky * kw + kx) * cin * cout;
          for (int ic = 0; ic < cin; ++ic) {
            int32_t xv = (int32_t)xp[ic] + in_off;
            const int8_t *wr = wp + (size_t)ic * cout;
            for (int c = 0; c < cout; ++c) acc[c] += xv * (int32_t)wr[c];
          }
        }
      }
#endif
      cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
    }
  }
}

#if defined(CL_SIMD_VNNI)
/* VNNI: dpbusd multiplies unsigned by signed bytes, so each weight is flipped to
 * w + 128 (xor 0x80) and 128 * sum(x) is taken back once per call: sum (w + 128) x =
 * sum w x + 128 sum x, exact in int32. Four rows share each load of x. The last step
 * loads only the k % 32 remaining bytes (AVX512-BW masked loads, zeros elsewhere: a
 * zero x adds nothing to either sum). */
CL_HOST_INLINE
static inline __m256i cl_vnni_step(__m256i s, const int8_t *w, __m256i xv, __mmask32 m) {
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  return cl_dpbusd(s, _mm256_xor_si256(_mm256_maskz_loadu_epi8(m, w), flip), xv);
}

CL_HOST_INLINE
static inline void cl_gemv_s8_simd(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                                   const int32_t *CL_RESTRICT bias_f, int k, int nout,
                                   int32_t *CL_RESTRICT acc) {
  const __m256i ones = _mm256_set1_epi8(1);
  const __mmask32 all = 0xffffffffu, last = k % 32 ? (1u << (k % 32)) - 1u : all;
  int steps = (k + 31) / 32, o = 0;
  __m256i xsum = _mm256_setzero_si256();
  for (int j = 0; j < steps; ++j) {
    __m256i xv = _mm256_maskz_loadu_epi8(j + 1 < steps ? all : last, x + 32 * j);
    xsum = cl_dpbusd(xsum, ones, xv);
  }
  int32_t corr = 128 * cl_hsum_avx2(xsum);
  for (; o + 4 <= nout; o += 4) {
    const int8_t *w0 = w + (size_t)o * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int j = 0; j < steps; ++j) {
      __mmask32 m = j + 1 < steps ? all : last;
      __m256i xv = _mm256_maskz_loadu_epi8(m, x + 32 * j);
      s0 = cl_vnni_step(s0, w0 + 32 * j, xv, m);
      s1 = cl_vnni_step(s1, w1 + 32 * j, xv, m);
      s2 = cl_vnni_step(s2, w2 + 32 * j, xv, m);
      s3 = cl_vnni_step(s3, w3 + 32 * j, xv, m);
    }
    __m128i s = _mm_sub_epi32(cl_hsum4_avx2(s0, s1, s2, s3), _mm_set1_epi32(corr));
    _mm_storeu_si128((__m128i *)(acc + o),
                     _mm_add_epi32(s, _mm_loadu_si128((const __m128i *)(bias_f + o))));
  }
  for (; o < nout; ++o) {
    const int8_t *wr = w + (size_t)o * k;
    __m256i s = _mm256_setzero_si256();
    for (int j = 0; j < steps; ++j) {
      __mmask32 m = j + 1 < steps ? all : last;
      s = cl_vnni_step(s, wr + 32 * j, _mm256_maskz_loadu_epi8(m, x + 32 * j), m);
    }
    acc[o] = bias_f[o] + cl_hsum_avx2(s) - corr;
  }
}
#elif defined(CL_SIMD_AVX2)
/* AVX2: 16 bytes of x and of each weight row sign-extended to int16, then
 * _mm256_madd_epi16 (pairs of int16 products summed into int32, exact for int8 values).
 * Four rows share each widened x. */
CL_HOST_INLINE
static inline void cl_gemv_s8_simd(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                                   const int32_t *CL_RESTRICT bias_f, int k, int nout,
                                   int32_t *CL_RESTRICT acc) {
  int kv = k & ~15, o = 0;
  for (; o + 4 <= nout; o += 4) {
    const int8_t *w0 = w + (size_t)o * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int i = 0; i < kv; i += 16) {
      __m256i xv = cl_load16_s16(x + i);
      s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(cl_load16_s16(w0 + i), xv));
      s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(cl_load16_s16(w1 + i), xv));
      s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(cl_load16_s16(w2 + i), xv));
      s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(cl_load16_s16(w3 + i), xv));
    }
    __m128i s = cl_hsum4_avx2(s0, s1, s2, s3);
    _mm_storeu_si128((__m128i *)(acc + o),
                     _mm_add_epi32(s, _mm_loadu_si128((const __m128i *)(bias_f + o))));
    if (kv < k) {
      acc[o] += cl_dot_tail_s8(x, w0, kv, k);
      acc[o + 1] += cl_dot_tail_s8(x, w1, kv, k);
      acc[o + 2] += cl_dot_tail_s8(x, w2, kv, k);
      acc[o + 3] += cl_dot_tail_s8(x, w3, kv, k);
    }
  }
  for (; o < nout; ++o) {
    const int8_t *wr = w + (size_t)o * k;
    __m256i s = _mm256_setzero_si256();
    for (int i = 0; i < kv; i += 16) {
      s = _mm256_add_epi32(s, _mm256_madd_epi16(cl_load16_s16(wr + i), cl_load16_s16(x + i)));
    }
    acc[o] = bias_f[o] + cl_hsum_avx2(s) + cl_dot_tail_s8(x, wr, kv, k);
  }
}
#elif defined(CL_SIMD_DSP)
/* Arm DSP (Cortex-M4/M7): 4 bytes per word; __sxtb16 sign-extends bytes 0 and 2 (and,
 * after a rotation by 8, bytes 1 and 3) to two int16 halves, and __smlad adds both
 * 16x16 products to the sum in one instruction. Two rows share each x word. */
static inline uint32_t cl_word(const int8_t *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v); /* one unaligned LDR: Cortex-M4/M7 allow it */
  return v;
}

static inline uint32_t cl_ror8(uint32_t v) { return (v >> 8) | (v << 24); }

CL_HOST_INLINE
static inline void cl_gemv_s8_simd(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                                   const int32_t *CL_RESTRICT bias_f, int k, int nout,
                                   int32_t *CL_RESTRICT acc) {
  int kv = k & ~3, o = 0;
  for (; o + 2 <= nout; o += 2) {
    const int8_t *w0 = w + (size_t)o * k, *w1 = w0 + k;
    int32_t s0 = 0, s1 = 0;
    for (int i = 0; i < kv; i += 4) {
      uint32_t xv = cl_word(x + i), a = cl_word(w0 + i), b = cl_word(w1 + i);
      int32_t xe = __sxtb16((int32_t)xv), xo = __sxtb16((int32_t)cl_ror8(xv));
      s0 = __smlad(xe, __sxtb16((int32_t)a), s0);
      s0 = __smlad(xo, __sxtb16((int32_t)cl_ror8(a)), s0);
      s1 = __smlad(xe, __sxtb16((int32_t)b), s1);
      s1 = __smlad(xo, __sxtb16((int32_t)cl_ror8(b)), s1);
    }
    acc[o] = bias_f[o] + s0 + cl_dot_tail_s8(x, w0, kv, k);
    acc[o + 1] = bias_f[o + 1] + s1 + cl_dot_tail_s8(x, w1, kv, k);
  }
  for (; o < nout; ++o) {
    const int8_t *wr = w + (size_t)o * k;
    int32_t s = 0;
    for (int i = 0; i < kv; i += 4) {
      uint32_t xv = cl_word(x + i), a = cl_word(wr + i);
      s = __smlad(__sxtb16((int32_t)xv), __sxtb16((int32_t)a), s);
      s = __smlad(__sxtb16((int32_t)cl_ror8(xv)), __sxtb16((int32_t)cl_ror8(a)), s);
    }
    acc[o] = bias_f[o] + s + cl_dot_tail_s8(x, wr, kv, k);
  }
}
#endif

/* acc[o] = bias_f[o] + sum_i x[i] * w[o][i] for o < nout: the GEMM core of the 1x1,
 * im2col and fully connected kernels, with explicit SIMD where the target has it.
 * Portable: four output rows share each load of x (register blocking); each row is a
 * widening int8 dot product the vectorizer maps to multiply-add instructions. */
CL_HOST_INLINE
static inline void cl_gemv_s8(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                              const int32_t *CL_RESTRICT bias_f, int k, int nout,
                              int32_t *CL_RESTRICT acc) {
#if defined(CL_SIMD_AVX2) || defined(CL_SIMD_DSP)
  cl_gemv_s8_simd(x, w, bias_f, k, nout, acc);
#else
  int blocks = nout / 4;
  for (int b = 0; b < blocks; ++b) {
    int o = 4 * b;
    const int8_t *w0 = w + (size_t)o * k;
    const int8_t *w1 = w0 + k;
    const int8_t *w2 = w1 + k;
    const int8_t *w3 = w2 + k;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int i = 0; i < k; ++i) {
      int32_t xv = x[i];
      s0 += xv * w0[i];
      s1 += xv * w1[i];
      s2 += xv * w2[i];
      s3 += xv * w3[i];
    }
    acc[o] = bias_f[o] + s0;
    acc[o + 1] = bias_f[o + 1] + s1;
    acc[o + 2] = bias_f[o + 2] + s2;
    acc[o + 3] = bias_f[o + 3] + s3;
  }
  for (int o = 4 * blocks; o < nout; ++o) {
    const int8_t *wr = w + (size_t)o * k;
    int32_t s = 0;
    for (int i = 0; i < k; ++i) s += (int32_t)x[i] * (int32_t)wr[i];
    acc[o] = bias_f[o] + s;
  }
#endif
}

#if defined(CL_SIMD_VNNI)
/* The 8 sums of 8 vectors, in order. */
CL_HOST_INLINE
static inline __m256i cl_hsum8_avx2(const __m256i *v) {
  __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}

/* -128 * x[0..k), summed by groups of 4 into 8 lanes: the start of each row's sums when
 * the weights are flipped (see cl_gemv_s8_simd), taken back before any horizontal sum. */
CL_HOST_INLINE
static inline __m256i cl_flip_correction(const int8_t *x, int k) {
  __m256i sum = _mm256_setzero_si256();
  for (int i = 0; i < k; i += 32) {
    __mmask32 m = k - i >= 32 ? 0xffffffffu : (1u << (k - i)) - 1u;
    sum = cl_dpbusd(sum, _mm256_set1_epi8((char)0x80), _mm256_maskz_loadu_epi8(m, x + i));
  }
  return _mm256_sub_epi32(_mm256_setzero_si256(), sum);
}

/* Output channels [o, o + 8) of one pixel x, requantized in registers and stored: eight
 * weight rows per pass, flipped to the unsigned operand (the correction starts the sums).
 * (512-bit steps were measured slower here on every MLPerf Tiny layer shape but the
 * largest.) */
CL_HOST_INLINE
static inline void cl_rows8_vnni(const int8_t *x, const int8_t *w, int k, int o,
                                 const int32_t *bias, const int32_t *mult, const int32_t *shift,
                                 __m256i zp, __m256i lo, __m256i hi, int8_t *y) {
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  __m256i s[8];
  __m256i start = cl_flip_correction(x, k);
  for (int r = 0; r < 8; ++r) s[r] = start;
  for (int i = 0; i < k; i += 32) {
    __mmask32 m = k - i >= 32 ? 0xffffffffu : (1u << (k - i)) - 1u;
    __m256i xv = _mm256_maskz_loadu_epi8(m, x + i);
    for (int r = 0; r < 8; ++r) {
      __m256i wv = _mm256_maskz_loadu_epi8(m, w + (size_t)(o + r) * k + i);
      s[r] = cl_dpbusd(s[r], _mm256_xor_si256(wv, flip), xv);
    }
  }
  __m256i a = _mm256_add_epi32(cl_hsum8_avx2(s), _mm256_loadu_si256((const __m256i *)(bias + o)));
  __m256i m8 = _mm256_loadu_si256((const __m256i *)(mult + o));
  __m256i sh8 = _mm256_loadu_si256((const __m256i *)(shift + o));
  _mm_storel_epi64((__m128i *)(y + o), cl_requant8_avx2(a, m8, sh8, zp, lo, hi));
}
#endif

/* A const array only the VNNI kernels read (the generator guards its definition with
 * CL_SIMD_VNNI, so other targets neither store it in flash nor see it unused). */
#if defined(CL_SIMD_VNNI)
#define CL_IF_VNNI(a) (a)
#else
#define CL_IF_VNNI(a) NULL
#endif

/* y = requantize(bias_f + W x) for one pixel: the GEMM core of the fully connected kernel
 * and of the 1x1 and im2col kernels without VNNI. With VNNI the channels go 8 at a time,
 * fused with the requantization; the rest (and every other target) through acc. */
CL_HOST_INLINE
static inline void cl_gemm_pixel(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                                 const int32_t *CL_RESTRICT bias_f, int k, int nout,
                                 const int32_t *CL_RESTRICT mult,
                                 const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                 int32_t hi, int8_t *CL_RESTRICT y, int32_t *CL_RESTRICT acc) {
  int o = 0;
#if defined(CL_SIMD_VNNI)
  __m256i zp8 = _mm256_set1_epi32(zp), lo8 = _mm256_set1_epi32(lo), hi8 = _mm256_set1_epi32(hi);
  for (; o + 8 <= nout; o += 8) cl_rows8_vnni(x, w, k, o, bias_f, mult, shift, zp8, lo8, hi8, y);
  if (o == nout) return;
#endif
  cl_gemv_s8(x, w + (size_t)o * k, bias_f + o, k, nout - o, acc);
  cl_requant_row(acc, y + o, nout - o, mult + o, shift + o, zp, lo, hi);
}

#if defined(CL_SIMD_VNNI)
#define CL_PK_PIXELS 8 /* pixels per pass of the packed-weight GEMM */

/* dst[i] = src[i] ^ 0x80 (the unsigned operand of dpbusd: x + 128). Plain stores (gcc
 * vectorizes the loop): the GEMM's 4-byte loads then forward from them, which masked
 * AVX-512 stores do not allow (measured slower on the VWW 1x1 layers). */
static inline void cl_flip_copy(uint8_t *CL_RESTRICT dst, const int8_t *CL_RESTRICT src, int n) {
  for (int i = 0; i < n; ++i) dst[i] = (uint8_t)src[i] ^ 0x80u;
}

/* Output channels [o, o + 16) (masked to nout) of np <= CL_PK_PIXELS pixels, requantized
 * and stored. w_pk is the generator's packed weights (op_window._packed_weights): for
 * each block of 16 channels and each group of 4 inputs, the 4 inputs of the 16 channels
 * (64 bytes), so one 512-bit dpbusd adds 4 products to each of 16 channel sums of a
 * pixel with no horizontal sum; the pixel's 4 flipped inputs are broadcast, and every
 * weight load serves all the pixels. xf + q * k: pixel q's flipped inputs, k a multiple of
 * 4 (the inputs padded with zeros, whose weights are zero: cl_pk_pad). */
CL_HOST_INLINE
static inline void cl_pk16_vnni(int np, const uint8_t *xf, int k, const int8_t *w_pk, int o,
                                const int32_t *x_bias, const int32_t *mult,
                                const int32_t *shift, int nout, __m512i zp, __m512i lo,
                                __m512i hi, int8_t *const *ys) {
  __mmask16 m = nout - o >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nout - o)) - 1u);
  __m512i acc[CL_PK_PIXELS];
  __m512i b = _mm512_maskz_loadu_epi32(m, x_bias + o);
  for (int q = 0; q < CL_PK_PIXELS; ++q) acc[q] = b; /* all: gcc sees them set */
  const int8_t *wb = w_pk + (size_t)(o / 16) * k * 16;
  for (int i = 0; i < k; i += 4, wb += 64) {
    __m512i wv = _mm512_loadu_si512((const void *)wb);
    for (int q = 0; q < np; ++q) {
      int32_t x4;
      memcpy(&x4, xf + (size_t)q * k + i, 4);
      acc[q] = _mm512_dpbusd_epi32(acc[q], _mm512_set1_epi32(x4), wv);
    }
  }
  __m512i m16 = _mm512_maskz_loadu_epi32(m, mult + o);
  __m512i s16 = _mm512_maskz_loadu_epi32(m, shift + o);
  for (int q = 0; q < np; ++q) {
    _mm_mask_storeu_epi8(ys[q] + o, m, cl_requant16_avx512(acc[q], m16, s16, zp, lo, hi));
  }
}

/* cl_pk16_vnni for ONE pixel (an in-place piece) and output channels [o, o + 64): four
 * channel blocks at once, so that four sums are in flight instead of one. */
CL_HOST_INLINE
static inline void cl_pk64_pixel_vnni(const uint8_t *xf, int k, const int8_t *w_pk, int o,
                                      const int32_t *x_bias, const int32_t *mult,
                                      const int32_t *shift, __m512i zp, __m512i lo, __m512i hi,
                                      int8_t *y) {
  __m512i acc[4];
  for (int j = 0; j < 4; ++j) acc[j] = _mm512_loadu_si512(x_bias + o + 16 * j);
  const int8_t *wb = w_pk + (size_t)(o / 16) * k * 16;
  for (int i = 0; i < k; i += 4, wb += 64) {
    int32_t x4;
    memcpy(&x4, xf + i, 4);
    __m512i xv = _mm512_set1_epi32(x4);
    for (int j = 0; j < 4; ++j) {
      __m512i wv = _mm512_loadu_si512((const void *)(wb + (size_t)j * k * 16));
      acc[j] = _mm512_dpbusd_epi32(acc[j], xv, wv);
    }
  }
  for (int j = 0; j < 4; ++j) {
    int c = o + 16 * j;
    __m512i m16 = _mm512_loadu_si512(mult + c), s16 = _mm512_loadu_si512(shift + c);
    _mm_storeu_si128((__m128i *)(y + c), cl_requant16_avx512(acc[j], m16, s16, zp, lo, hi));
  }
}

/* The packed GEMM's input length: k rounded up to a multiple of 4. */
static inline int cl_pk_len(int k) { return (k + 3) & ~3; }

/* Zero the padding of a pixel's flipped inputs xq[k, cl_pk_len(k)). */
static inline void cl_pk_pad(uint8_t *xq, int k) {
  for (int i = k; i < cl_pk_len(k); ++i) xq[i] = 0;
}

/* cl_pk16_vnni over all output channels (a constant np sizes the registers). */
CL_HOST_INLINE
static inline void cl_gemm_pk(int np, const uint8_t *xf, int k, const int8_t *w_pk,
                              const int32_t *x_bias, const int32_t *mult, const int32_t *shift,
                              int nout, int32_t zp, int32_t lo, int32_t hi, int8_t *const *ys) {
  __m512i zp16 = _mm512_set1_epi32(zp), lo16 = _mm512_set1_epi32(lo);
  __m512i hi16 = _mm512_set1_epi32(hi);
  int o = 0;
  for (; np == 1 && o + 64 <= nout; o += 64) {
    cl_pk64_pixel_vnni(xf, k, w_pk, o, x_bias, mult, shift, zp16, lo16, hi16, ys[0]);
  }
  for (; o < nout; o += 16) {
    if (np == CL_PK_PIXELS) {
      cl_pk16_vnni(CL_PK_PIXELS, xf, k, w_pk, o, x_bias, mult, shift, nout, zp16, lo16, hi16,
                   ys);
    } else {
      cl_pk16_vnni(np, xf, k, w_pk, o, x_bias, mult, shift, nout, zp16, lo16, hi16, ys);
    }
  }
}
#endif

/* 1x1 convolution without padding as a GEMM: weights [cout][cin], the input offset
 * folded into the bias at generation time (bias_f = bias + in_off * sum(w)), so the
 * inner loop is a pure int8 dot product (a widening multiply-add reduction). With VNNI,
 * the packed GEMM (x_bias, w_pk: the generator's CL_IF_VNNI arrays, required there). */
CL_HOST_INLINE
static inline void cl_conv_s8_1x1(const int8_t *CL_RESTRICT x, int ih, int iw, int cin,
                                  const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias_f,
                                  const int32_t *CL_RESTRICT x_bias,
                                  const int8_t *CL_RESTRICT w_pk, int sh, int sw,
                                  int8_t *CL_RESTRICT y, int oh, int ow, int cout,
                                  const int32_t *CL_RESTRICT mult,
                                  const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                  int32_t hi, int32_t *CL_RESTRICT acc) {
  (void)ih;
  int n = oh * ow;
#if defined(CL_SIMD_VNNI)
  int kp = cl_pk_len(cin);
  uint8_t xf[CL_PK_PIXELS * kp]; /* host SIMD builds only: on the stack */
  for (int p = 0; p < n; p += CL_PK_PIXELS) {
    int8_t *ys[CL_PK_PIXELS] = {NULL};
    int np = n - p < CL_PK_PIXELS ? n - p : CL_PK_PIXELS;
    for (int q = 0; q < np; ++q) {
      int oy = (p + q) / ow, ox = (p + q) % ow;
      uint8_t *xq = xf + (size_t)q * kp;
      cl_flip_copy(xq, x + ((size_t)oy * sh * iw + (size_t)ox * sw) * cin, cin);
      cl_pk_pad(xq, cin);
      ys[q] = y + (size_t)(p + q) * cout;
    }
    cl_gemm_pk(np, xf, kp, w_pk, x_bias, mult, shift, cout, zp, lo, hi, ys);
  }
  (void)w, (void)bias_f, (void)acc;
#else
  (void)x_bias, (void)w_pk;
  for (int p = 0; p < n; ++p) {
    int oy = p / ow, ox = p % ow;
    cl_gemm_pixel(x + ((size_t)oy * sh * iw + (size_t)ox * sw) * cin, w, bias_f, cin, cout, mult,
                  shift, zp, lo, hi, y + (size_t)p * cout, acc);
  }
#endif
}

/* The receptive field of output pixel (oy, ox) in the OHWI weight order ([kh][kw][cin]),
 * taps outside the image filled with the input zero point. A window row wholly inside
 * the image with undilated columns is one contiguous run of kw * cin bytes: one copy. */
CL_HOST_INLINE
static inline void cl_im2col_pixel(const int8_t *CL_RESTRICT x, int ih, int iw, int cin, int kh,
                                   int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                   int oy, int ox, int8_t in_zp, int8_t *CL_RESTRICT col) {
  int8_t *cp = col;
  int ix0 = ox * sw - pl;
  int row_inside = dw == 1 && ix0 >= 0 && ix0 + kw <= iw;
  for (int ky = 0; ky < kh; ++ky) {
    int iy = oy * sh - pt + ky * dh;
    if (row_inside && iy >= 0 && iy < ih) {
      memcpy(cp, x + ((size_t)iy * iw + ix0) * cin, (size_t)kw * cin);
      cp += kw * cin;
      continue;
    }
    for (int kx = 0; kx < kw; ++kx, cp += cin) {
      int ix = ox * sw - pl + kx * dw;
      if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) {
        memset(cp, in_zp, (size_t)cin);
      } else {
        memcpy(cp, x + ((size_t)iy * iw + ix) * cin, (size_t)cin);
      }
    }
  }
}

#if defined(CL_SIMD_VNNI)
/* When the window of output pixel (oy, ox) lies wholly inside the image (columns
 * undilated): segs[ky] = its kw * cin contiguous input bytes under kernel row ky, the
 * patch's segments read in place; returns 0 (segs untouched) otherwise. */
CL_HOST_INLINE
static inline int cl_window_rows_inside(const int8_t *x, int ih, int iw, int cin, int kh, int kw,
                                        int sh, int sw, int dh, int pt, int pl, int oy, int ox,
                                        const int8_t **segs) {
  int iy0 = oy * sh - pt, ix0 = ox * sw - pl;
  if (iy0 < 0 || iy0 + (kh - 1) * dh >= ih || ix0 < 0 || ix0 + kw > iw) return 0;
  for (int ky = 0; ky < kh; ++ky) segs[ky] = x + ((size_t)(iy0 + ky * dh) * iw + ix0) * cin;
  return 1;
}
#endif

/* Convolution as im2col + GEMM: each receptive field is gathered into a patch (`col`),
 * taps outside the image filled with the input zero point so that, with the offset folded
 * into bias_f, they contribute exactly nothing (as TFLite's skipped taps). With VNNI,
 * CL_PK_PIXELS pixels per packed GEMM pass (x_bias, w_pk: the generator's CL_IF_VNNI
 * arrays, required there; unused elsewhere). */
CL_HOST_INLINE
static inline void cl_conv_s8_im2col(
    const int8_t *CL_RESTRICT x, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias_f, const int32_t *CL_RESTRICT x_bias,
    const int8_t *CL_RESTRICT w_pk, int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
    int8_t *CL_RESTRICT y, int oh, int ow, int cout, int8_t in_zp,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc, int8_t *CL_RESTRICT col) {
  int k = kh * kw * cin, n = oh * ow;
#if defined(CL_SIMD_VNNI)
  int kp = cl_pk_len(k);
  uint8_t xf[CL_PK_PIXELS * kp]; /* host SIMD builds only: on the stack */
  for (int p = 0; p < n; p += CL_PK_PIXELS) {
    int8_t *ys[CL_PK_PIXELS] = {NULL};
    int np = n - p < CL_PK_PIXELS ? n - p : CL_PK_PIXELS;
    for (int q = 0; q < np; ++q) {
      const int8_t *segs[kh];
      int oy = (p + q) / ow, ox = (p + q) % ow;
      uint8_t *xq = xf + (size_t)q * kp;
      cl_pk_pad(xq, k);
      /* windows inside the image are read in place (a patch would only copy their rows) */
      if (dw == 1 &&
          cl_window_rows_inside(x, ih, iw, cin, kh, kw, sh, sw, dh, pt, pl, oy, ox, segs)) {
        for (int ky = 0; ky < kh; ++ky) cl_flip_copy(xq + ky * kw * cin, segs[ky], kw * cin);
      } else {
        cl_im2col_pixel(x, ih, iw, cin, kh, kw, sh, sw, dh, dw, pt, pl, oy, ox, in_zp, col);
        cl_flip_copy(xq, col, k);
      }
      ys[q] = y + (size_t)(p + q) * cout;
    }
    cl_gemm_pk(np, xf, kp, w_pk, x_bias, mult, shift, cout, zp, lo, hi, ys);
  }
  (void)w, (void)bias_f, (void)acc;
#else
  (void)x_bias, (void)w_pk;
  for (int p = 0; p < n; ++p) {
    cl_im2col_pixel(x, ih, iw, cin, kh, kw, sh, sw, dh, dw, pt, pl, p / ow, p % ow, in_zp, col);
    cl_gemm_pixel(col, w, bias_f, k, cout, mult, shift, zp, lo, hi, y + (size_t)p * cout, acc);
  }
#endif
}

#if defined(CL_SIMD_AVX2)
/* One output pixel of a depthwise convolution (multiplier 1), 16 channels per pass with
 * the sums in registers: (x + in_off) * w is exact in int16 (|x + in_off| <= 255,
 * |w| <= 128), then widened to int32. rows[ky] is the input row under kernel row ky; only
 * the in-image taps [ky0, ky1) x [kx0, kx1) of the window starting at column ix0 are read. */
CL_HOST_INLINE
static inline void cl_dw_pixel_avx2(const int8_t *const *rows, int ix0, int cin,
                                    const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias,
                                    int kw, int dw, int ky0, int ky1, int kx0, int kx1,
                                    int32_t in_off, int32_t *CL_RESTRICT acc) {
  const __m256i off = _mm256_set1_epi16((int16_t)in_off);
  int c = 0;
  for (; c + 16 <= cin; c += 16) {
    __m256i lo = bias ? _mm256_loadu_si256((const __m256i *)(bias + c)) : _mm256_setzero_si256();
    __m256i hi = bias ? _mm256_loadu_si256((const __m256i *)(bias + c + 8)) : lo;
    for (int ky = ky0; ky < ky1; ++ky) {
      for (int kx = kx0; kx < kx1; ++kx) {
        const int8_t *xp = rows[ky] + (size_t)(ix0 + kx * dw) * cin + c;
        __m256i xv = _mm256_add_epi16(cl_load16_s16(xp), off);
        __m256i p = _mm256_mullo_epi16(xv, cl_load16_s16(w + ((size_t)ky * kw + kx) * cin + c));
        lo = _mm256_add_epi32(lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
        hi = _mm256_add_epi32(hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
      }
    }
    _mm256_storeu_si256((__m256i *)(acc + c), lo);
    _mm256_storeu_si256((__m256i *)(acc + c + 8), hi);
  }
  for (; c + 8 <= cin; c += 8) { /* the same on 8 channels */
    __m256i sum = bias ? _mm256_loadu_si256((const __m256i *)(bias + c)) : _mm256_setzero_si256();
    for (int ky = ky0; ky < ky1; ++ky) {
      for (int kx = kx0; kx < kx1; ++kx) {
        const int8_t *xp = rows[ky] + (size_t)(ix0 + kx * dw) * cin + c;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cin + c;
        __m128i xv = _mm_add_epi16(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)xp)),
                                   _mm256_castsi256_si128(off));
        __m128i p = _mm_mullo_epi16(xv, _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)wp)));
        sum = _mm256_add_epi32(sum, _mm256_cvtepi16_epi32(p));
      }
    }
    _mm256_storeu_si256((__m256i *)(acc + c), sum);
  }
  for (; c < cin; ++c) {
    int32_t s = bias ? bias[c] : 0;
    for (int ky = ky0; ky < ky1; ++ky)
      for (int kx = kx0; kx < kx1; ++kx)
        s += ((int32_t)rows[ky][(size_t)(ix0 + kx * dw) * cin + c] + in_off) *
             (int32_t)w[((size_t)ky * kw + kx) * cin + c];
    acc[c] = s;
  }
}

#endif

/* Depthwise convolution, weights [kh][kw][C*M] as in TFLite; the channel loop is
 * contiguous in input, weights and output (specialized for depth multiplier 1). */
CL_HOST_INLINE
static inline void cl_dwconv_s8(const int8_t *CL_RESTRICT x, int ih, int iw, int cin, int mul,
                                const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias,
                                int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                int8_t *CL_RESTRICT y, int oh, int ow, int32_t in_off,
                                const int32_t *CL_RESTRICT mult,
                                const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                int32_t hi, int32_t *CL_RESTRICT acc) {
  int cout = cin * mul;
  for (int oy = 0; oy < oh; ++oy) {
#if defined(CL_SIMD_AVX2)
    const int8_t *rows[kh]; /* host SIMD builds only: on the stack */
    int ky0, ky1;
    cl_window_rows(x, ih, iw, cin, oy, sh, pt, dh, kh, rows, &ky0, &ky1);
#endif
    for (int ox = 0; ox < ow; ++ox) {
#if defined(CL_SIMD_AVX2)
      if (mul == 1) {
        int kx0, kx1;
        cl_taps_inside(ox, sw, pl, dw, kw, iw, &kx0, &kx1);
        cl_dw_pixel_avx2(rows, ox * sw - pl, cin, w, bias, kw, dw, ky0, ky1, kx0, kx1, in_off,
                         acc);
        cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
        continue;
      }
#endif
      for (int c = 0; c < cout; ++c) acc[c] = bias ? bias[c] : 0;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky * dh;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx * dw;
          if (ix < 0 || ix >= iw) continue;
          const int8_t *xp = x + ((size_t)iy * iw + ix) * cin;
          const int8_t *wp = w + ((size_t)ky * kw + kx) * cout;
          if (mul == 1) {
            for (int c = 0; c < cout; ++c) acc[c] += ((int32_t)xp[c] + in_off) * (int32_t)wp[c];
          } else {
            for (int c = 0; c < cout; ++c)
              acc[c] += ((int32_t)xp[c / mul] + in_off) * (int32_t)wp[c];
          }
        }
      }
      cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
    }
  }
}

/* Fully connected: weights [out][k], input offset folded into bias_f (symmetric weights). */
CL_HOST_INLINE
static inline void cl_fc_s8(const int8_t *CL_RESTRICT x, int rows, int k,
                            const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias_f,
                            int8_t *CL_RESTRICT y, int nout, const int32_t *CL_RESTRICT mult,
                            const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo, int32_t hi,
                            int32_t *CL_RESTRICT acc) {
  for (int r = 0; r < rows; ++r) {
    cl_gemm_pixel(x + (size_t)r * k, w, bias_f, k, nout, mult, shift, zp, lo, hi,
                  y + (size_t)r * nout, acc);
  }
}

/* ------------------------------------------------------------------ int8 pooling */
static inline void cl_avgpool_s8(const int8_t *CL_RESTRICT x, int ih, int iw, int ch, int kh,
                                 int kw, int sh, int sw, int pt, int pl, int8_t *CL_RESTRICT y,
                                 int oh, int ow, int32_t lo, int32_t hi,
                                 int32_t *CL_RESTRICT acc) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      int count = 0;
      for (int c = 0; c < ch; ++c) acc[c] = 0;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx;
          if (ix < 0 || ix >= iw) continue;
          const int8_t *xp = x + ((size_t)iy * iw + ix) * ch;
          for (int c = 0; c < ch; ++c) acc[c] += xp[c];
          ++count;
        }
      }
      int8_t *yp = y + ((size_t)oy * ow + ox) * ch;
      for (int c = 0; c < ch; ++c) {
        int32_t s = acc[c];
        int32_t avg = (s > 0 ? s + count / 2 : s - count / 2) / count; /* C truncation */
        yp[c] = cl_clamp8(avg, lo, hi);
      }
    }
  }
}

static inline void cl_maxpool_s8(const int8_t *CL_RESTRICT x, int ih, int iw, int ch, int kh,
                                 int kw, int sh, int sw, int pt, int pl, int8_t *CL_RESTRICT y,
                                 int oh, int ow, int32_t lo, int32_t hi) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      int8_t *yp = y + ((size_t)oy * ow + ox) * ch;
      for (int c = 0; c < ch; ++c) yp[c] = INT8_MIN;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx;
          if (ix < 0 || ix >= iw) continue;
          const int8_t *xp = x + ((size_t)iy * iw + ix) * ch;
          for (int c = 0; c < ch; ++c) yp[c] = xp[c] > yp[c] ? xp[c] : yp[c];
        }
      }
      for (int c = 0; c < ch; ++c) yp[c] = cl_clamp8(yp[c], lo, hi);
    }
  }
}

/* MEAN over H and W of an NHWC tensor (TFLM QuantizedMeanOrSum): the multiplier
 * (computed at generation time) already absorbs 1/count. */
static inline void cl_mean_hw_s8(const int8_t *CL_RESTRICT x, int hw, int ch,
                                 int8_t *CL_RESTRICT y, int32_t in_zp, int32_t mult,
                                 int32_t shift, int32_t out_zp, int32_t *CL_RESTRICT acc) {
  for (int c = 0; c < ch; ++c) acc[c] = 0;
  for (int p = 0; p < hw; ++p) {
    const int8_t *xp = x + (size_t)p * ch;
    for (int c = 0; c < ch; ++c) acc[c] += xp[c];
  }
  int32_t corr = in_zp * hw;
  for (int c = 0; c < ch; ++c) {
    int32_t v = cl_mbqm(cl_wadd(acc[c], -corr), mult, shift) + out_zp;
    y[c] = cl_clamp8(v, INT8_MIN, INT8_MAX);
  }
}

/* ------------------------------------------------------------------ int8 elementwise */
typedef struct {
  int32_t in1_off, in2_off, out_off, left_shift;
  int32_t m1, s1, m2, s2, mo, so, lo, hi;
} cl_add_params;

/* Elementwise ADD. No restrict: with an in-place plan the output overlaps an input;
 * element i is read before it is written, walking backward (`rev`) when the output
 * starts above the input it overwrites. */
static inline int8_t cl_add1_s8(int8_t a, int8_t b, const cl_add_params *p) {
  int32_t va = cl_wshl((int32_t)a + p->in1_off, p->left_shift);
  int32_t vb = cl_wshl((int32_t)b + p->in2_off, p->left_shift);
  int32_t sa = cl_mbqm(va, p->m1, p->s1);
  int32_t sb = cl_mbqm(vb, p->m2, p->s2);
  int32_t raw = cl_mbqm(cl_wadd(sa, sb), p->mo, p->so);
  return cl_clamp8(raw + p->out_off, p->lo, p->hi);
}

#if defined(CL_SIMD_AVX2)
/* cl_add1_s8 on the 8 elements at i. Both inputs are loaded before the output is stored,
 * so a block is as safe as one element for in-place walks in either direction. */
CL_HOST_INLINE
static inline void cl_add8_avx2(const int8_t *a, const int8_t *b, int8_t *y, long i,
                                const cl_add_params *p) {
  __m256i va = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + i)));
  __m256i vb = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i)));
  __m256i left = _mm256_set1_epi32(p->left_shift);
  va = _mm256_sllv_epi32(_mm256_add_epi32(va, _mm256_set1_epi32(p->in1_off)), left);
  vb = _mm256_sllv_epi32(_mm256_add_epi32(vb, _mm256_set1_epi32(p->in2_off)), left);
  __m256i sa = cl_mbqm_avx2(va, _mm256_set1_epi32(p->m1), _mm256_set1_epi32(p->s1));
  __m256i sb = cl_mbqm_avx2(vb, _mm256_set1_epi32(p->m2), _mm256_set1_epi32(p->s2));
  __m256i sum = _mm256_add_epi32(sa, sb); /* wraps like cl_wadd */
  __m128i out = cl_requant8_avx2(sum, _mm256_set1_epi32(p->mo), _mm256_set1_epi32(p->so),
                                 _mm256_set1_epi32(p->out_off), _mm256_set1_epi32(p->lo),
                                 _mm256_set1_epi32(p->hi));
  _mm_storel_epi64((__m128i *)(y + i), out);
}
#endif

#if defined(CL_SIMD_VNNI)
/* cl_add8_avx2 on 16 elements. */
CL_HOST_INLINE
static inline void cl_add16_avx512(const int8_t *a, const int8_t *b, int8_t *y, long i,
                                   const cl_add_params *p) {
  __m512i va = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(a + i)));
  __m512i vb = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
  __m512i left = _mm512_set1_epi32(p->left_shift);
  va = _mm512_sllv_epi32(_mm512_add_epi32(va, _mm512_set1_epi32(p->in1_off)), left);
  vb = _mm512_sllv_epi32(_mm512_add_epi32(vb, _mm512_set1_epi32(p->in2_off)), left);
  __m512i sa = cl_mbqm_avx512(va, _mm512_set1_epi32(p->m1), _mm512_set1_epi32(p->s1));
  __m512i sb = cl_mbqm_avx512(vb, _mm512_set1_epi32(p->m2), _mm512_set1_epi32(p->s2));
  __m128i out = cl_requant16_avx512(_mm512_add_epi32(sa, sb), _mm512_set1_epi32(p->mo),
                                    _mm512_set1_epi32(p->so), _mm512_set1_epi32(p->out_off),
                                    _mm512_set1_epi32(p->lo), _mm512_set1_epi32(p->hi));
  _mm_storeu_si128((__m128i *)(y + i), out);
}
#define CL_ADD_BLOCK 16L
#define cl_add_block cl_add16_avx512
#elif defined(CL_SIMD_AVX2)
#define CL_ADD_BLOCK 8L
#define cl_add_block cl_add8_avx2
#endif

static inline void cl_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n,
                             const cl_add_params *p, int rev) {
  long blocked = 0; /* elements [0, blocked) go CL_ADD_BLOCK at a time */
#if defined(CL_ADD_BLOCK)
  blocked = n - n % CL_ADD_BLOCK;
#endif
  if (rev) {
    for (long i = n - 1; i >= blocked; --i) y[i] = cl_add1_s8(a[i], b[i], p);
#if defined(CL_ADD_BLOCK)
    for (long i = blocked - CL_ADD_BLOCK; i >= 0; i -= CL_ADD_BLOCK) cl_add_block(a, b, y, i, p);
#endif
  } else {
#if defined(CL_ADD_BLOCK)
    for (long i = 0; i < blocked; i += CL_ADD_BLOCK) cl_add_block(a, b, y, i, p);
#endif
    for (long i = blocked; i < n; ++i) y[i] = cl_add1_s8(a[i], b[i], p);
  }
}

/* ------------------------------------------------------------------ int8 softmax */
/* gemmlowp exp on [-1/4, 0) in Q0.31. */
static inline int32_t cl_exp_quarter(int32_t a) {
  const int32_t ct = 1895147668, c13 = 715827883;
  int32_t x = cl_wadd(a, 1 << 28);
  int32_t x2 = cl_srdhm(x, x);
  int32_t x3 = cl_srdhm(x2, x);
  int32_t x4 = cl_srdhm(x2, x2);
  int32_t x4q = cl_rdbpot(x4, 2);
  int32_t poly = cl_wadd(cl_srdhm(cl_wadd(x4q, x3), c13), x2);
  poly = cl_rdbpot(poly, 1);
  return cl_wadd(ct, cl_srdhm(ct, cl_wadd(x, poly)));
}

/* gemmlowp exp_on_negative_values for Q5.26 input, Q0.31 output. */
static inline int32_t cl_exp_neg(int32_t a) {
  static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308,
                                    39332535,   720401,     242};
  const int fb = 26;
  const int32_t quarter = (int32_t)1 << (fb - 2);
  int32_t a_mod = (a & (quarter - 1)) - quarter;
  int32_t result = cl_exp_quarter(cl_sat_shl(a_mod, 5));
  int32_t rem = cl_wadd(a_mod, -a);
  for (int k = 0; k < 7; ++k) {
    if (rem & ((int32_t)1 << (fb - 2 + k))) result = cl_srdhm(result, barrel[k]);
  }
  return a == 0 ? INT32_MAX : result;
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1 (Newton-Raphson, Q0.31). */
static inline int32_t cl_one_over_one_plus_x(int32_t a) {
  int64_t total = (int64_t)a + INT32_MAX;
  int32_t half = (int32_t)(total >= 0 ? (total + 1) / 2 : -((-(total - 1)) / 2));
  int32_t x = cl_wadd(1515870810, cl_srdhm(half, -1010580540));
  for (int i = 0; i < 3; ++i) {
    int32_t hdx = cl_srdhm(half, x);
    int32_t one_minus = cl_wadd((int32_t)1 << 29, -hdx);
    x = cl_wadd(x, cl_sat_shl(cl_srdhm(x, one_minus), 2));
  }
  return cl_sat_shl(x, 1);
}

static inline int cl_clz32(uint32_t v) {
#if defined(__GNUC__)
  return v ? __builtin_clz(v) : 32;
#else
  int n = 0;
  if (!v) return 32;
  while (!(v & 0x80000000u)) { v <<= 1; ++n; }
  return n;
#endif
}

/* int8 -> int8 softmax over rows of n (output scale 1/256, zero point -128). */
static inline void cl_softmax_s8(const int8_t *CL_RESTRICT x, int8_t *CL_RESTRICT y, int rows,
                                 int n, int32_t mult, int32_t left_shift, int32_t diff_min) {
  for (int r = 0; r < rows; ++r) {
    const int8_t *xr = x + (size_t)r * n;
    int8_t *yr = y + (size_t)r * n;
    int32_t mx = INT8_MIN;
    for (int i = 0; i < n; ++i) mx = xr[i] > mx ? xr[i] : mx;
    int32_t sum = 0;
    for (int i = 0; i < n; ++i) {
      int32_t diff = (int32_t)xr[i] - mx;
      if (diff >= diff_min) {
        int32_t e = cl_exp_neg(cl_srdhm(cl_wshl(diff, left_shift), mult));
        sum = cl_wadd(sum, cl_rdbpot(e, 12));
      }
    }
    int headroom = cl_clz32((uint32_t)sum);
    int bits_over_unit = 12 - headroom;
    uint32_t shifted = (uint32_t)sum << headroom;
    int32_t scale = cl_one_over_one_plus_x((int32_t)(shifted - 0x80000000u));
    int exponent = bits_over_unit + 31 - 8;
    for (int i = 0; i < n; ++i) {
      int32_t diff = (int32_t)xr[i] - mx;
      if (diff >= diff_min) {
        int32_t e = cl_exp_neg(cl_srdhm(cl_wshl(diff, left_shift), mult));
        int32_t v = cl_rdbpot(cl_srdhm(scale, e), exponent) + INT8_MIN;
        yr[i] = cl_clamp8(v, INT8_MIN, INT8_MAX);
      } else {
        yr[i] = INT8_MIN;
      }
    }
  }
}

/* ------------------------------------------------------------------ float32 */
/* Direct float convolution, HWIO weights; outer-product update over output channels,
 * which vectorizes without reassociating any sum (no -ffast-math needed). */
static inline void cl_conv_f32(const float *CL_RESTRICT x, int ih, int iw, int cin,
                               const float *CL_RESTRICT w, const float *CL_RESTRICT bias, int kh,
                               int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                               float *CL_RESTRICT y, int oh, int ow, int cout, float lo,
                               float hi) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      float *yp = y + ((size_t)oy * ow + ox) * cout;
      for (int c = 0; c < cout; ++c) yp[c] = 0.0f;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky * dh;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx * dw;
          if (ix < 0 || ix >= iw) continue;
          const float *xp = x + ((size_t)iy * iw + ix) * cin;
          const float *wp = w + ((size_t)ky * kw + kx) * cin * cout;
          for (int ic = 0; ic < cin; ++ic) {
            float xv = xp[ic];
            const float *wr = wp + (size_t)ic * cout;
            for (int c = 0; c < cout; ++c) yp[c] += xv * wr[c];
          }
        }
      }
      for (int c = 0; c < cout; ++c) yp[c] = cl_clampf(yp[c] + (bias ? bias[c] : 0.0f), lo, hi);
    }
  }
}

static inline void cl_dwconv_f32(const float *CL_RESTRICT x, int ih, int iw, int cin, int mul,
                                 const float *CL_RESTRICT w, const float *CL_RESTRICT bias,
                                 int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                 float *CL_RESTRICT y, int oh, int ow, float lo, float hi) {
  int cout = cin * mul;
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      float *yp = y + ((size_t)oy * ow + ox) * cout;
      for (int c = 0; c < cout; ++c) yp[c] = 0.0f;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky * dh;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx * dw;
          if (ix < 0 || ix >= iw) continue;
          const float *xp = x + ((size_t)iy * iw + ix) * cin;
          const float *wp = w + ((size_t)ky * kw + kx) * cout;
          if (mul == 1) {
            for (int c = 0; c < cout; ++c) yp[c] += xp[c] * wp[c];
          } else {
            for (int c = 0; c < cout; ++c) yp[c] += xp[c / mul] * wp[c];
          }
        }
      }
      for (int c = 0; c < cout; ++c) yp[c] = cl_clampf(yp[c] + (bias ? bias[c] : 0.0f), lo, hi);
    }
  }
}

/* Fully connected with weights transposed to [k][out]: outer-product over outputs. */
static inline void cl_fc_f32(const float *CL_RESTRICT x, int rows, int k,
                             const float *CL_RESTRICT wt, const float *CL_RESTRICT bias,
                             float *CL_RESTRICT y, int nout, float lo, float hi) {
  for (int r = 0; r < rows; ++r) {
    const float *xr = x + (size_t)r * k;
    float *yr = y + (size_t)r * nout;
    for (int o = 0; o < nout; ++o) yr[o] = 0.0f;
    for (int i = 0; i < k; ++i) {
      float xv = xr[i];
      const float *wr = wt + (size_t)i * nout;
      for (int o = 0; o < nout; ++o) yr[o] += xv * wr[o];
    }
    for (int o = 0; o < nout; ++o) yr[o] = cl_clampf(yr[o] + (bias ? bias[o] : 0.0f), lo, hi);
  }
}

static inline void cl_avgpool_f32(const float *CL_RESTRICT x, int ih, int iw, int ch, int kh,
                                  int kw, int sh, int sw, int pt, int pl, float *CL_RESTRICT y,
                                  int oh, int ow, float lo, float hi) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      float *yp = y + ((size_t)oy * ow + ox) * ch;
      int count = 0;
      for (int c = 0; c < ch; ++c) yp[c] = 0.0f;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx;
          if (ix < 0 || ix >= iw) continue;
          const float *xp = x + ((size_t)iy * iw + ix) * ch;
          for (int c = 0; c < ch; ++c) yp[c] += xp[c];
          ++count;
        }
      }
      for (int c = 0; c < ch; ++c) yp[c] = cl_clampf(yp[c] / (float)count, lo, hi);
    }
  }
}

static inline void cl_maxpool_f32(const float *CL_RESTRICT x, int ih, int iw, int ch, int kh,
                                  int kw, int sh, int sw, int pt, int pl, float *CL_RESTRICT y,
                                  int oh, int ow, float lo, float hi) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      float *yp = y + ((size_t)oy * ow + ox) * ch;
      for (int c = 0; c < ch; ++c) yp[c] = -FLT_MAX;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky;
        if (iy < 0 || iy >= ih) continue;
        for (int kx = 0; kx < kw; ++kx) {
          int ix = ox * sw - pl + kx;
          if (ix < 0 || ix >= iw) continue;
          const float *xp = x + ((size_t)iy * iw + ix) * ch;
          for (int c = 0; c < ch; ++c) yp[c] = xp[c] > yp[c] ? xp[c] : yp[c];
        }
      }
      for (int c = 0; c < ch; ++c) yp[c] = cl_clampf(yp[c], lo, hi);
    }
  }
}

static inline void cl_mean_hw_f32(const float *CL_RESTRICT x, int hw, int ch,
                                  float *CL_RESTRICT y) {
  for (int c = 0; c < ch; ++c) y[c] = 0.0f;
  for (int p = 0; p < hw; ++p) {
    const float *xp = x + (size_t)p * ch;
    for (int c = 0; c < ch; ++c) y[c] += xp[c];
  }
  for (int c = 0; c < ch; ++c) y[c] /= (float)hw;
}

static inline void cl_add_f32(const float *a, const float *b, float *y, long n, float lo,
                              float hi, int rev) {
  if (rev) {
    for (long i = n - 1; i >= 0; --i) y[i] = cl_clampf(a[i] + b[i], lo, hi);
  } else {
    for (long i = 0; i < n; ++i) y[i] = cl_clampf(a[i] + b[i], lo, hi);
  }
}

static inline void cl_softmax_f32(const float *CL_RESTRICT x, float *CL_RESTRICT y, int rows,
                                  int n, float beta) {
  for (int r = 0; r < rows; ++r) {
    const float *xr = x + (size_t)r * n;
    float *yr = y + (size_t)r * n;
    float mx = xr[0];
    for (int i = 1; i < n; ++i) mx = xr[i] > mx ? xr[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
      yr[i] = expf((xr[i] - mx) * beta);
      sum += yr[i];
    }
    for (int i = 0; i < n; ++i) yr[i] /= sum;
  }
}

/* ------------------------------------------------------------------ data movement */
/* PAD of a rank-4 tensor (lower ranks are padded with leading 1s) with a fill byte
 * pattern of `esize` bytes; rows along the last axis are copied whole. */
static inline void cl_pad(const uint8_t *CL_RESTRICT x, const int *in_shape, const int *before,
                          const int *out_shape, int esize, const uint8_t *fill,
                          uint8_t *CL_RESTRICT y) {
  long total = (size_t)out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3];
  for (long i = 0; i < total; ++i) memcpy(y + i * esize, fill, (size_t)esize);
  long row = (size_t)in_shape[3] * esize;
  for (int a = 0; a < in_shape[0]; ++a)
    for (int b = 0; b < in_shape[1]; ++b)
      for (int c = 0; c < in_shape[2]; ++c) {
        long src = (((size_t)a * in_shape[1] + b) * in_shape[2] + c) * row;
        long dst = ((((size_t)(a + before[0]) * out_shape[1] + b + before[1]) * out_shape[2] +
                     c + before[2]) * out_shape[3] + before[3]) * esize;
        memcpy(y + dst, x + src, (size_t)row);
      }
}

/* One input's share of a CONCATENATION: `outer` blocks of `chunk` bytes, placed at
 * byte `at` within each output block of `out_chunk` bytes. */
static inline void cl_concat_part(const uint8_t *CL_RESTRICT x, long outer, long chunk,
                                  uint8_t *CL_RESTRICT y, long out_chunk, long at) {
  for (long o = 0; o < outer; ++o) memcpy(y + o * out_chunk + at, x + o * chunk, (size_t)chunk);
}

#endif /* CL_KERNELS_H */
