/* crosslevel kernels: int8 (TFLite quantization arithmetic, bit-exact with TFLite Micro)
 * and float32, for NHWC tensors. C99, no dependency beyond the C standard library.
 *
 * Every function is `static inline` so that a generated model includes this header once
 * and the compiler sees the constant shapes of each call (and drops unused kernels).
 * Loops are written for the auto-vectorizer: the innermost loop runs over a contiguous
 * channel axis with restrict pointers and no calls, so `-O3` turns it into SIMD code.
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

/* Requantize one row of int32 accumulators to int8 (per-channel multipliers). */
static inline void cl_requant_row(const int32_t *CL_RESTRICT acc, int8_t *CL_RESTRICT y, int n,
                                  const int32_t *CL_RESTRICT mult,
                                  const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                  int32_t hi) {
  for (int c = 0; c < n; ++c) {
    y[c] = cl_clamp8(cl_mbqm(acc[c], mult[c], shift[c]) + zp, lo, hi);
  }
}

/* ------------------------------------------------------------------ int8 convolution */
/* Direct convolution, weights re-laid out as HWIO [kh][kw][cin][cout]: the innermost
 * loop is an outer-product update over output channels (contiguous), which vectorizes
 * for any cin; taps outside the image are skipped exactly as TFLite does. */
static inline void cl_conv_s8_direct(
    const int8_t *CL_RESTRICT x, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
    int pl, int8_t *CL_RESTRICT y, int oh, int ow, int cout, int32_t in_off,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc) {
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
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
      cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
    }
  }
}

/* acc[o] = bias_f[o] + sum_i x[i] * w[o][i] for o < nout: the GEMM core of the 1x1,
 * im2col and fully connected kernels. Four output rows share each load of x (register
 * blocking); each row is a widening int8 dot product the vectorizer maps to
 * multiply-add instructions (pmaddwd on x86, SMLAL/SDOT on Arm). */
static inline void cl_gemv_s8(const int8_t *CL_RESTRICT x, const int8_t *CL_RESTRICT w,
                              const int32_t *CL_RESTRICT bias_f, int k, int nout,
                              int32_t *CL_RESTRICT acc) {
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
}

/* 1x1 convolution without padding as a GEMM: weights [cout][cin], the input offset
 * folded into the bias at generation time (bias_f = bias + in_off * sum(w)), so the
 * inner loop is a pure int8 dot product (a widening multiply-add reduction). */
static inline void cl_conv_s8_1x1(const int8_t *CL_RESTRICT x, int ih, int iw, int cin,
                                  const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias_f,
                                  int sh, int sw, int8_t *CL_RESTRICT y, int oh, int ow,
                                  int cout, const int32_t *CL_RESTRICT mult,
                                  const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                  int32_t hi, int32_t *CL_RESTRICT acc) {
  (void)ih;
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      const int8_t *xp = x + ((size_t)oy * sh * iw + (size_t)ox * sw) * cin;
      cl_gemv_s8(xp, w, bias_f, cin, cout, acc);
      cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
    }
  }
}

/* Convolution as im2col + GEMM, one output pixel at a time: the receptive field is
 * gathered into `col` ([kh][kw][cin], the OHWI weight order), taps outside the image
 * filled with the input zero point so that, with the offset folded into bias_f, they
 * contribute exactly nothing (as TFLite's skipped taps). */
static inline void cl_conv_s8_im2col(
    const int8_t *CL_RESTRICT x, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias_f, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
    int pl, int8_t *CL_RESTRICT y, int oh, int ow, int cout, int8_t in_zp,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc, int8_t *CL_RESTRICT col) {
  int k = kh * kw * cin;
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
      int8_t *cp = col;
      for (int ky = 0; ky < kh; ++ky) {
        int iy = oy * sh - pt + ky * dh;
        for (int kx = 0; kx < kw; ++kx, cp += cin) {
          int ix = ox * sw - pl + kx * dw;
          if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) {
            memset(cp, in_zp, (size_t)cin);
          } else {
            memcpy(cp, x + ((size_t)iy * iw + ix) * cin, (size_t)cin);
          }
        }
      }
      cl_gemv_s8(col, w, bias_f, k, cout, acc);
      cl_requant_row(acc, y + ((size_t)oy * ow + ox) * cout, cout, mult, shift, zp, lo, hi);
    }
  }
}

/* Depthwise convolution, weights [kh][kw][C*M] as in TFLite; the channel loop is
 * contiguous in input, weights and output (specialized for depth multiplier 1). */
static inline void cl_dwconv_s8(const int8_t *CL_RESTRICT x, int ih, int iw, int cin, int mul,
                                const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias,
                                int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                int8_t *CL_RESTRICT y, int oh, int ow, int32_t in_off,
                                const int32_t *CL_RESTRICT mult,
                                const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                int32_t hi, int32_t *CL_RESTRICT acc) {
  int cout = cin * mul;
  for (int oy = 0; oy < oh; ++oy) {
    for (int ox = 0; ox < ow; ++ox) {
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
static inline void cl_fc_s8(const int8_t *CL_RESTRICT x, int rows, int k,
                            const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias_f,
                            int8_t *CL_RESTRICT y, int nout, const int32_t *CL_RESTRICT mult,
                            const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo, int32_t hi,
                            int32_t *CL_RESTRICT acc) {
  for (int r = 0; r < rows; ++r) {
    cl_gemv_s8(x + (size_t)r * k, w, bias_f, k, nout, acc);
    cl_requant_row(acc, y + (size_t)r * nout, nout, mult, shift, zp, lo, hi);
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

static inline void cl_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n,
                             const cl_add_params *p, int rev) {
  if (rev) {
    for (long i = n - 1; i >= 0; --i) y[i] = cl_add1_s8(a[i], b[i], p);
  } else {
    for (long i = 0; i < n; ++i) y[i] = cl_add1_s8(a[i], b[i], p);
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
