/* crosslevel row kernels for depth-first stages (memory/depth_first.py): each call makes
 * ONE output row from the input rows its window reads, given as row pointers, because a
 * stage keeps its inner tensors in line buffers (rings) where consecutive rows need not be
 * adjacent in memory. rows[ky] points at the input row under kernel tap ky (NULL when
 * that row is outside the image), so these kernels take the arguments of their
 * whole-tensor twins in cl_kernels.h (the generator emits both from one call template)
 * with the input pointer replaced by the rows; ih, sh, dh and pt were used to pick the
 * rows and are unused here. The arithmetic is the twins' (TFLite's, bit-exact), and so
 * are their host SIMD paths: the int8 convolutions call the same pixel kernels
 * (cl_direct_pixel_avx2, cl_dw_pixel_avx2, cl_gemm_pk with CL_PK_PIXELS pixels per
 * pass), and every row kernel is always inlined on the host (CL_HOST_INLINE). Measured
 * on the ResNet-8 smallest plan: 0.34 -> 0.22-0.24 ms (medians of 300 calls, this host).
 * Include after cl_kernels.h. */
#ifndef CL_STAGES_H
#define CL_STAGES_H

#define CL_ROW_UNUSED(ih, sh, dh, pt, oh) ((void)(ih), (void)(sh), (void)(dh), (void)(pt), (void)(oh))

/* ------------------------------------------------------------------ int8 */
#if defined(CL_SIMD_AVX2)
/* The kernel rows [ky0, ky1) whose input row is in the image (non-NULL rows[ky]: they
 * are consecutive), the form the SIMD pixel kernels of cl_kernels.h take. */
CL_HOST_INLINE
static inline void cl_row_taps(const int8_t *const *rows, int kh, int *ky0, int *ky1) {
  int a = 0, b = kh;
  while (a < kh && !rows[a]) ++a;
  while (b > a && !rows[b - 1]) --b;
  *ky0 = a;
  *ky1 = b;
}
#endif

CL_HOST_INLINE
static inline void cl_row_conv_s8_direct(
    const int8_t *const *rows, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
    int pl, int8_t *CL_RESTRICT y, int oh, int ow, int cout, int32_t in_off,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc) {
  CL_ROW_UNUSED(ih, sh, dh, pt, oh);
#if defined(CL_SIMD_AVX2)
  int ky0, ky1;
  cl_row_taps(rows, kh, &ky0, &ky1);
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
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx * dw;
        if (ix < 0 || ix >= iw) continue;
        const int8_t *xp = rows[ky] + (size_t)ix * cin;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cin * cout;
        for (int ic = 0; ic < cin; ++ic) {
          int32_t xv = (int32_t)xp[ic] + in_off;
          const int8_t *wr = wp + (size_t)ic * cout;
          for (int c = 0; c < cout; ++c) acc[c] += xv * (int32_t)wr[c];
        }
      }
    }
#endif
    cl_requant_row(acc, y + (size_t)ox * cout, cout, mult, shift, zp, lo, hi);
  }
}

/* The GEMM row kernels (1x1, im2col) go one pixel per GEMV, except with VNNI: there,
 * CL_PK_PIXELS pixels per packed GEMM pass, as their twins. (Through cl_gemm_pixel on
 * Cortex-M, QEMU counted 30% more instructions on the kws stage: gcc there no longer sees
 * the constant shapes.) */
CL_HOST_INLINE
static inline void cl_row_conv_s8_1x1(const int8_t *const *rows, int ih, int iw, int cin,
                                      const int8_t *CL_RESTRICT w,
                                      const int32_t *CL_RESTRICT bias_f,
                                      const int32_t *CL_RESTRICT x_bias,
                                      const int8_t *CL_RESTRICT w_pk, int sh, int sw,
                                      int8_t *CL_RESTRICT y, int oh, int ow, int cout,
                                      const int32_t *CL_RESTRICT mult,
                                      const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                      int32_t hi, int32_t *CL_RESTRICT acc) {
  CL_ROW_UNUSED(ih, sh, 0, 0, oh);
  (void)iw;
#if defined(CL_SIMD_VNNI)
  int kp = cl_pk_len(cin); /* as cl_conv_s8_1x1 */
  uint8_t xf[CL_PK_PIXELS * kp];
  for (int ox = 0; ox < ow; ox += CL_PK_PIXELS) {
    int8_t *ys[CL_PK_PIXELS] = {NULL};
    int np = ow - ox < CL_PK_PIXELS ? ow - ox : CL_PK_PIXELS;
    for (int q = 0; q < np; ++q) {
      uint8_t *xq = xf + (size_t)q * kp;
      cl_flip_copy(xq, rows[0] + (size_t)(ox + q) * sw * cin, cin);
      cl_pk_pad(xq, cin);
      ys[q] = y + (size_t)(ox + q) * cout;
    }
    cl_gemm_pk(np, xf, kp, w_pk, x_bias, mult, shift, cout, zp, lo, hi, ys);
  }
  (void)w, (void)bias_f, (void)acc;
#else
  (void)x_bias, (void)w_pk;
  for (int ox = 0; ox < ow; ++ox) {
    cl_gemv_s8(rows[0] + (size_t)ox * sw * cin, w, bias_f, cin, cout, acc);
    cl_requant_row(acc, y + (size_t)ox * cout, cout, mult, shift, zp, lo, hi);
  }
#endif
}

/* The receptive field of output column ox gathered from the row pointers (OHWI order),
 * taps outside the image filled with the input zero point; an in-image kernel row with
 * undilated columns wholly inside is one copy (as in cl_im2col_pixel). */
CL_HOST_INLINE
static inline void cl_row_im2col_pixel(const int8_t *const *rows, int iw, int cin, int kh,
                                       int kw, int sw, int dw, int pl, int ox, int8_t in_zp,
                                       int8_t *CL_RESTRICT col) {
  int8_t *cp = col;
  int ix0 = ox * sw - pl;
  int row_inside = dw == 1 && ix0 >= 0 && ix0 + kw <= iw;
  for (int ky = 0; ky < kh; ++ky) {
    if (row_inside && rows[ky]) {
      memcpy(cp, rows[ky] + (size_t)ix0 * cin, (size_t)kw * cin);
      cp += kw * cin;
      continue;
    }
    for (int kx = 0; kx < kw; ++kx, cp += cin) {
      int ix = ix0 + kx * dw;
      if (!rows[ky] || ix < 0 || ix >= iw) {
        memset(cp, in_zp, (size_t)cin);
      } else {
        memcpy(cp, rows[ky] + (size_t)ix * cin, (size_t)cin);
      }
    }
  }
}

#if defined(CL_SIMD_VNNI)
/* segs[ky] = the kw * cin input bytes under kernel row ky of output column ox when its
 * window lies wholly inside the image (undilated columns): read in place; else 0. */
CL_HOST_INLINE
static inline int cl_row_window_inside(const int8_t *const *rows, int iw, int cin, int kh,
                                       int kw, int sw, int pl, int ox, const int8_t **segs) {
  int ix0 = ox * sw - pl;
  if (ix0 < 0 || ix0 + kw > iw) return 0;
  for (int ky = 0; ky < kh; ++ky) {
    if (!rows[ky]) return 0;
    segs[ky] = rows[ky] + (size_t)ix0 * cin;
  }
  return 1;
}
#endif

CL_HOST_INLINE
static inline void cl_row_conv_s8_im2col(
    const int8_t *const *rows, int ih, int iw, int cin, const int8_t *CL_RESTRICT w,
    const int32_t *CL_RESTRICT bias_f, const int32_t *CL_RESTRICT x_bias,
    const int8_t *CL_RESTRICT w_pk, int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
    int8_t *CL_RESTRICT y, int oh, int ow, int cout, int8_t in_zp,
    const int32_t *CL_RESTRICT mult, const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
    int32_t hi, int32_t *CL_RESTRICT acc, int8_t *CL_RESTRICT col) {
  int k = kh * kw * cin;
  CL_ROW_UNUSED(ih, sh, dh, pt, oh);
#if defined(CL_SIMD_VNNI)
  int kp = cl_pk_len(k); /* as cl_conv_s8_im2col */
  uint8_t xf[CL_PK_PIXELS * kp];
  for (int ox = 0; ox < ow; ox += CL_PK_PIXELS) {
    int8_t *ys[CL_PK_PIXELS] = {NULL};
    int np = ow - ox < CL_PK_PIXELS ? ow - ox : CL_PK_PIXELS;
    for (int q = 0; q < np; ++q) {
      const int8_t *segs[kh];
      uint8_t *xq = xf + (size_t)q * kp;
      cl_pk_pad(xq, k);
      if (dw == 1 && cl_row_window_inside(rows, iw, cin, kh, kw, sw, pl, ox + q, segs)) {
        for (int ky = 0; ky < kh; ++ky) cl_flip_copy(xq + ky * kw * cin, segs[ky], kw * cin);
      } else {
        cl_row_im2col_pixel(rows, iw, cin, kh, kw, sw, dw, pl, ox + q, in_zp, col);
        cl_flip_copy(xq, col, k);
      }
      ys[q] = y + (size_t)(ox + q) * cout;
    }
    cl_gemm_pk(np, xf, kp, w_pk, x_bias, mult, shift, cout, zp, lo, hi, ys);
  }
  (void)w, (void)bias_f, (void)acc;
#else
  (void)x_bias, (void)w_pk;
  for (int ox = 0; ox < ow; ++ox) {
    cl_row_im2col_pixel(rows, iw, cin, kh, kw, sw, dw, pl, ox, in_zp, col);
    cl_gemv_s8(col, w, bias_f, k, cout, acc);
    cl_requant_row(acc, y + (size_t)ox * cout, cout, mult, shift, zp, lo, hi);
  }
#endif
}

CL_HOST_INLINE
static inline void cl_row_dwconv_s8(const int8_t *const *rows, int ih, int iw, int cin, int mul,
                                    const int8_t *CL_RESTRICT w, const int32_t *CL_RESTRICT bias,
                                    int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                    int8_t *CL_RESTRICT y, int oh, int ow, int32_t in_off,
                                    const int32_t *CL_RESTRICT mult,
                                    const int32_t *CL_RESTRICT shift, int32_t zp, int32_t lo,
                                    int32_t hi, int32_t *CL_RESTRICT acc) {
  int cout = cin * mul;
  CL_ROW_UNUSED(ih, sh, dh, pt, oh);
#if defined(CL_SIMD_AVX2)
  int ky0, ky1;
  cl_row_taps(rows, kh, &ky0, &ky1);
#endif
  for (int ox = 0; ox < ow; ++ox) {
#if defined(CL_SIMD_AVX2)
    if (mul == 1) {
      int kx0, kx1;
      cl_taps_inside(ox, sw, pl, dw, kw, iw, &kx0, &kx1);
      cl_dw_pixel_avx2(rows, ox * sw - pl, cin, w, bias, kw, dw, ky0, ky1, kx0, kx1, in_off, acc);
      cl_requant_row(acc, y + (size_t)ox * cout, cout, mult, shift, zp, lo, hi);
      continue;
    }
#endif
    for (int c = 0; c < cout; ++c) acc[c] = bias ? bias[c] : 0;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx * dw;
        if (ix < 0 || ix >= iw) continue;
        const int8_t *xp = rows[ky] + (size_t)ix * cin;
        const int8_t *wp = w + ((size_t)ky * kw + kx) * cout;
        if (mul == 1) {
          for (int c = 0; c < cout; ++c) acc[c] += ((int32_t)xp[c] + in_off) * (int32_t)wp[c];
        } else {
          for (int c = 0; c < cout; ++c) acc[c] += ((int32_t)xp[c / mul] + in_off) * (int32_t)wp[c];
        }
      }
    }
    cl_requant_row(acc, y + (size_t)ox * cout, cout, mult, shift, zp, lo, hi);
  }
}

CL_HOST_INLINE
static inline void cl_row_avgpool_s8(const int8_t *const *rows, int ih, int iw, int ch, int kh,
                                     int kw, int sh, int sw, int pt, int pl,
                                     int8_t *CL_RESTRICT y, int oh, int ow, int32_t lo,
                                     int32_t hi, int32_t *CL_RESTRICT acc) {
  CL_ROW_UNUSED(ih, sh, 0, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    int count = 0;
    for (int c = 0; c < ch; ++c) acc[c] = 0;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx;
        if (ix < 0 || ix >= iw) continue;
        const int8_t *xp = rows[ky] + (size_t)ix * ch;
        for (int c = 0; c < ch; ++c) acc[c] += xp[c];
        ++count;
      }
    }
    int8_t *yp = y + (size_t)ox * ch;
    for (int c = 0; c < ch; ++c) {
      int32_t s = acc[c];
      int32_t avg = (s > 0 ? s + count / 2 : s - count / 2) / count; /* C truncation */
      yp[c] = cl_clamp8(avg, lo, hi);
    }
  }
}

CL_HOST_INLINE
static inline void cl_row_maxpool_s8(const int8_t *const *rows, int ih, int iw, int ch, int kh,
                                     int kw, int sh, int sw, int pt, int pl,
                                     int8_t *CL_RESTRICT y, int oh, int ow, int32_t lo,
                                     int32_t hi) {
  CL_ROW_UNUSED(ih, sh, 0, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    int8_t *yp = y + (size_t)ox * ch;
    for (int c = 0; c < ch; ++c) yp[c] = INT8_MIN;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx;
        if (ix < 0 || ix >= iw) continue;
        const int8_t *xp = rows[ky] + (size_t)ix * ch;
        for (int c = 0; c < ch; ++c) yp[c] = xp[c] > yp[c] ? xp[c] : yp[c];
      }
    }
    for (int c = 0; c < ch; ++c) yp[c] = cl_clamp8(yp[c], lo, hi);
  }
}

/* A global average pool fed row by row: sums[c] (int64, in the arena) += row r's
 * column sums; after the last row, TFLM's rounded average of all h*w pixels. */
CL_HOST_INLINE
static inline void cl_row_sum_s8(const int8_t *CL_RESTRICT x, int iw, int ch, int first,
                                 int64_t *CL_RESTRICT sums) {
  if (first) for (int c = 0; c < ch; ++c) sums[c] = 0;
  for (int ix = 0; ix < iw; ++ix) {
    for (int c = 0; c < ch; ++c) sums[c] += x[(size_t)ix * ch + c];
  }
}

static inline void cl_mean_of_sums_s8(const int64_t *CL_RESTRICT sums, int ch, int64_t count,
                                      int8_t *CL_RESTRICT y, int32_t lo, int32_t hi) {
  for (int c = 0; c < ch; ++c) {
    int64_t s = sums[c];
    int64_t avg = (s > 0 ? s + count / 2 : s - count / 2) / count; /* C truncation */
    y[c] = (int8_t)(avg < lo ? lo : (avg > hi ? hi : avg));
  }
}

/* ------------------------------------------------------------------ float32 */
CL_HOST_INLINE
static inline void cl_row_conv_f32(const float *const *rows, int ih, int iw, int cin,
                                   const float *CL_RESTRICT w, const float *CL_RESTRICT bias,
                                   int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl,
                                   float *CL_RESTRICT y, int oh, int ow, int cout, float lo,
                                   float hi) {
  CL_ROW_UNUSED(ih, sh, dh, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    float *yp = y + (size_t)ox * cout;
    for (int c = 0; c < cout; ++c) yp[c] = bias ? bias[c] : 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx * dw;
        if (ix < 0 || ix >= iw) continue;
        const float *xp = rows[ky] + (size_t)ix * cin;
        const float *wp = w + ((size_t)ky * kw + kx) * cin * cout;
        for (int ic = 0; ic < cin; ++ic) {
          const float *wr = wp + (size_t)ic * cout;
          for (int c = 0; c < cout; ++c) yp[c] += xp[ic] * wr[c];
        }
      }
    }
    for (int c = 0; c < cout; ++c) yp[c] = cl_clampf(yp[c], lo, hi);
  }
}

CL_HOST_INLINE
static inline void cl_row_dwconv_f32(const float *const *rows, int ih, int iw, int cin, int mul,
                                     const float *CL_RESTRICT w, const float *CL_RESTRICT bias,
                                     int kh, int kw, int sh, int sw, int dh, int dw, int pt,
                                     int pl, float *CL_RESTRICT y, int oh, int ow, float lo,
                                     float hi) {
  int cout = cin * mul;
  CL_ROW_UNUSED(ih, sh, dh, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    float *yp = y + (size_t)ox * cout;
    for (int c = 0; c < cout; ++c) yp[c] = bias ? bias[c] : 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx * dw;
        if (ix < 0 || ix >= iw) continue;
        const float *xp = rows[ky] + (size_t)ix * cin;
        const float *wp = w + ((size_t)ky * kw + kx) * cout;
        for (int c = 0; c < cout; ++c) yp[c] += xp[c / mul] * wp[c];
      }
    }
    for (int c = 0; c < cout; ++c) yp[c] = cl_clampf(yp[c], lo, hi);
  }
}

CL_HOST_INLINE
static inline void cl_row_avgpool_f32(const float *const *rows, int ih, int iw, int ch, int kh,
                                      int kw, int sh, int sw, int pt, int pl,
                                      float *CL_RESTRICT y, int oh, int ow, float lo, float hi) {
  CL_ROW_UNUSED(ih, sh, 0, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    float *yp = y + (size_t)ox * ch;
    int count = 0;
    for (int c = 0; c < ch; ++c) yp[c] = 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx;
        if (ix < 0 || ix >= iw) continue;
        const float *xp = rows[ky] + (size_t)ix * ch;
        for (int c = 0; c < ch; ++c) yp[c] += xp[c];
        ++count;
      }
    }
    for (int c = 0; c < ch; ++c) yp[c] = cl_clampf(yp[c] / (float)count, lo, hi);
  }
}

CL_HOST_INLINE
static inline void cl_row_maxpool_f32(const float *const *rows, int ih, int iw, int ch, int kh,
                                      int kw, int sh, int sw, int pt, int pl,
                                      float *CL_RESTRICT y, int oh, int ow, float lo, float hi) {
  CL_ROW_UNUSED(ih, sh, 0, pt, oh);
  for (int ox = 0; ox < ow; ++ox) {
    float *yp = y + (size_t)ox * ch;
    for (int c = 0; c < ch; ++c) yp[c] = -FLT_MAX;
    for (int ky = 0; ky < kh; ++ky) {
      if (!rows[ky]) continue;
      for (int kx = 0; kx < kw; ++kx) {
        int ix = ox * sw - pl + kx;
        if (ix < 0 || ix >= iw) continue;
        const float *xp = rows[ky] + (size_t)ix * ch;
        for (int c = 0; c < ch; ++c) yp[c] = xp[c] > yp[c] ? xp[c] : yp[c];
      }
    }
    for (int c = 0; c < ch; ++c) yp[c] = cl_clampf(yp[c], lo, hi);
  }
}

CL_HOST_INLINE
static inline void cl_row_sum_f32(const float *CL_RESTRICT x, int iw, int ch, int first,
                                  double *CL_RESTRICT sums) {
  if (first) for (int c = 0; c < ch; ++c) sums[c] = 0.0;
  for (int ix = 0; ix < iw; ++ix) {
    for (int c = 0; c < ch; ++c) sums[c] += (double)x[(size_t)ix * ch + c];
  }
}

static inline void cl_mean_of_sums_f32(const double *CL_RESTRICT sums, int ch, int64_t count,
                                       float *CL_RESTRICT y) {
  for (int c = 0; c < ch; ++c) y[c] = (float)(sums[c] / (double)count);
}

#endif /* CL_STAGES_H */
