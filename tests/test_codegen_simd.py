"""Explicit SIMD in the generated C (cl_kernels.h): every path computes the same bits.

- A differential C harness runs the kernels (GEMV core, fused GEMM + requantization of
  the 1x1, im2col and fully connected kernels, direct and depthwise convolution,
  requantization, in-place ADD) on random shapes with tails and extreme values, in
  exact-size heap buffers. Its output bytes on the AVX512-VNNI path (``-march=native``,
  on CPUs that have it) and the AVX2-only path (``-mno-avx512f``), both under
  AddressSanitizer, must equal those of the portable build (``-DCL_NO_SIMD``); a wrong
  rounding makes it fail.
- A real model built on the AVX2-only and on the portable path is bit-exact with TFLite
  Micro (the native build is checked by test_codegen.py; the Arm DSP path runs real
  models in QEMU, bit-exact, in test_codegen_cross.py).
- The target macros select the intended path.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crosslevel.codegen.build import BASE_FLAGS, HOST_FLAGS, build_library
from crosslevel.codegen.command import random_inputs
from crosslevel.codegen.emit import generate_c
from crosslevel.ir.load import load_model
from crosslevel.memory.plan import make_plan
from crosslevel.runtime.tflm import TflmInterpreter

KERNELS = Path(__file__).parents[1] / "src" / "crosslevel" / "codegen" / "c" / "cl_kernels.h"
NATIVE_MACROS = subprocess.run(
    ["gcc", "-march=native", "-dM", "-E", "-x", "c", "/dev/null"],
    capture_output=True, text=True, check=False,
).stdout  # fmt: skip
HAS_AVX2 = "__AVX2__" in NATIVE_MACROS
HAS_VNNI = all(m in NATIVE_MACROS for m in ("__AVX512VNNI__", "__AVX512VL__", "__AVX512BW__"))
AVX2_ONLY = ("-mno-avx512f",)  # drops every AVX-512 extension, keeps AVX2
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="needs a CPU with AVX2")

# Random kernels with a fixed generator: shapes chosen to hit every SIMD tail (k and
# channel counts not multiples of 4/16/32), values including -128/127 and INT32_MIN/MAX
# accumulators, multipliers and shifts as TFLite makes them. The output bytes go to stdout.
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "cl_kernels.h"

static uint32_t rng = 12345u;
static uint32_t next(void) { rng = rng * 1664525u + 1013904223u; return rng >> 8; }
static int range(int lo, int n) { return lo + (int)(next() % (uint32_t)n); }
static int8_t rnd8(void) {
  uint32_t r = next() % 16u;
  return r == 0 ? -128 : r == 1 ? 127 : (int8_t)(next() & 0xff);
}
static int32_t rnd32(void) {
  uint32_t r = next() % 8u;
  if (r == 0) return INT32_MIN;
  if (r == 1) return INT32_MAX;
  return (int32_t)((next() << 8) ^ next());
}
/* Every kernel gets heap buffers of exactly its size, so that an ASan build catches
   a read or write one byte outside them. */
static int8_t *i8s(size_t n) {
  int8_t *p = malloc(n);
  for (size_t i = 0; i < n; ++i) p[i] = rnd8();
  return p;
}
static int32_t *biases(size_t n) {
  int32_t *p = malloc(4 * n);
  for (size_t i = 0; i < n; ++i) p[i] = range(-100000, 200001);
  return p;
}
/* TFLite's multipliers: 0 or in [2^30, 2^31); shifts mostly right (a left shift with a
   huge accumulator would overflow "+ zp" in any runtime) */
static void stage(size_t n, int left, int32_t **m, int32_t **s) {
  *m = malloc(4 * n);
  *s = malloc(4 * n);
  for (size_t i = 0; i < n; ++i) {
    (*m)[i] = next() % 16u == 0 ? 0 : (int32_t)((1u << 30) + (next() % (1u << 30)));
    (*s)[i] = left ? range(0, 8) : range(-20, 20);
  }
}
static void out(const void *p, size_t n) { fwrite(p, 1, n, stdout); }

static void gemm_kernels(void) {
  int k = range(1, 300), nout = range(1, 40), rows = range(1, 4);
  int32_t zp = range(-128, 256), *m, *s;
  int8_t *x = i8s((size_t)rows * k), *w = i8s((size_t)nout * k), *y = malloc((size_t)rows * nout);
  int32_t *b = biases((size_t)nout), *acc = malloc(4 * (size_t)nout);
  stage((size_t)nout, 0, &m, &s);
  cl_gemv_s8(x, w, b, k, nout, acc);
  out(acc, 4 * (size_t)nout);
  cl_fc_s8(x, rows, k, w, b, y, nout, m, s, zp, -128, 127, acc);
  out(y, (size_t)rows * nout);
  free(x); free(w); free(y); free(b); free(acc); free(m); free(s);
}

static void requant_extremes(void) {
  int32_t acc[512], *m, *s;
  int8_t y[512];
  for (int i = 0; i < 256; ++i) acc[i] = rnd32();
  for (int i = 256; i < 512; ++i) acc[i] = range(-1048576, 2097152);
  stage(512, 0, &m, &s);
  for (int i = 0; i < 256; ++i) s[i] = -1 - (int32_t)(next() % 20u);
  for (int i = 256; i < 512; ++i) s[i] = range(0, 8);
  int32_t zp = range(-128, 256);
  cl_requant_row(acc, y, 512, m, s, zp, -128, 127);
  out(y, 512);
#if defined(CL_SIMD_VNNI) /* the 16-lane requantization of the packed GEMM */
  __m512i zp16 = _mm512_set1_epi32(zp), lo = _mm512_set1_epi32(-128);
  __m512i hi = _mm512_set1_epi32(127);
  for (int i = 0; i < 512; i += 16) {
    __m512i a = _mm512_loadu_si512(acc + i), mv = _mm512_loadu_si512(m + i);
    _mm_storeu_si128((__m128i *)(y + i),
                     cl_requant16_avx512(a, mv, _mm512_loadu_si512(s + i), zp16, lo, hi));
  }
#endif
  out(y, 512); /* the portable builds write the cl_requant_row bytes again */
  free(m); free(s);
}

/* The generator's flipped-input bias (op_window._flipped_input_bias): b - 128 sum(w). */
static int32_t *flipped_bias(const int8_t *w, const int32_t *b, int k, int cout) {
  int32_t *xb = malloc(4 * (size_t)cout);
  for (int o = 0; o < cout; ++o) {
    int32_t sum = 0;
    for (int i = 0; i < k; ++i) sum += w[(size_t)o * k + i];
    xb[o] = b[o] - 128 * sum;
  }
  return xb;
}

/* The generator's packed weights (op_window._packed_weights): k padded to kp. */
static int8_t *packed_weights(const int8_t *w, int k, int cout) {
  int blocks = (cout + 15) / 16, kp = (k + 3) & ~3;
  int8_t *pk = calloc((size_t)blocks * 16 * kp, 1);
  for (int o = 0; o < cout; ++o) {
    for (int i = 0; i < k; ++i) {
      size_t group = (size_t)(o / 16) * (kp / 4) + (size_t)(i / 4);
      pk[group * 64 + (o % 16) * 4 + i % 4] = w[(size_t)o * k + i];
    }
  }
  return pk;
}

static void window_kernels(int round) {
  int ih = range(3, 6), iw = range(3, 6), cin = range(1, 40), cout = range(1, 40);
  int kh = range(1, 3), kw = range(1, 3), st = range(1, 2), p = range(0, 2);
  int oh = (ih + 2 * p - kh) / st + 1, ow = (iw + 2 * p - kw) / st + 1;
  int oh1 = (ih - 1) / st + 1, ow1 = (iw - 1) / st + 1, k = kh * kw * cin;
  int32_t zp = range(-128, 256), *m, *s, *mo, *so;
  int cmax = cin > cout ? cin : cout;
  int8_t *x = i8s((size_t)ih * iw * cin), *y = malloc((size_t)oh * ow * cmax + 1);
  int8_t *wd = i8s((size_t)k), *w = i8s((size_t)k * cout), *col = malloc((size_t)k);
  int32_t *bd = biases((size_t)cin), *b = biases((size_t)cout), *acc = malloc(4 * (size_t)cmax);
  stage((size_t)cin, 0, &m, &s);
  stage((size_t)cout, 0, &mo, &so);
  cl_dwconv_s8(x, ih, iw, cin, 1, wd, round % 2 ? bd : NULL, kh, kw, st, st, 1, 1, p, p, y, oh,
               ow, -zp, m, s, zp, -100, 120, acc);
  out(y, (size_t)oh * ow * cin);
  cl_conv_s8_direct(x, ih, iw, cin, w, round % 2 ? NULL : b, kh, kw, st, st, 1, 1, p, p, y, oh,
                    ow, cout, -zp, mo, so, zp, -128, 127, acc);
  out(y, (size_t)oh * ow * cout);
  /* the generator's extra operands of the VNNI GEMM (unused by the other paths) */
  int32_t *xb = flipped_bias(w, b, k, cout), *xb_1x1 = flipped_bias(w, b, cin, cout);
  int8_t *pk = packed_weights(w, k, cout), *pk_1x1 = packed_weights(w, cin, cout);
  cl_conv_s8_im2col(x, ih, iw, cin, w, b, xb, pk, kh, kw, st, st, 1, 1, p, p, y, oh, ow, cout,
                    (int8_t)zp, mo, so, zp, -128, 127, acc, col);
  out(y, (size_t)oh * ow * cout);
  free(y);
  y = malloc((size_t)oh1 * ow1 * cout);
  cl_conv_s8_1x1(x, ih, iw, cin, w, b, xb_1x1, pk_1x1, st, st, y, oh1, ow1, cout, mo, so, zp,
                 -128, 127, acc);
  out(y, (size_t)oh1 * ow1 * cout);
  free(x); free(y); free(wd); free(w); free(col); free(bd); free(b); free(acc); free(xb);
  free(xb_1x1); free(pk); free(pk_1x1);
  free(m); free(s); free(mo); free(so);
}

/* Windows read in place by the im2col kernel (VNNI packed GEMM; undilated columns):
   strides 1 and 2, a row dilation of 2, padding, next to windows that need a patch. */
static void im2col_in_place(void) {
  int ih = 9, iw = 10, cin = 8, cout = 16, kh = 3, kw = 3;
  int32_t zp = range(-128, 256), *m, *s;
  int8_t *x = i8s((size_t)ih * iw * cin), *w = i8s((size_t)kh * kw * cin * cout);
  int8_t *col = malloc((size_t)kh * kw * cin);
  int32_t *b = biases((size_t)cout), *acc = malloc(4 * (size_t)cout);
  int32_t *xb = flipped_bias(w, b, kh * kw * cin, cout);
  int8_t *pk = packed_weights(w, kh * kw * cin, cout);
  stage((size_t)cout, 0, &m, &s);
  for (int st = 1; st <= 2; ++st) {
    for (int dh = 1; dh <= 2; ++dh) {
      int p = st == 1 ? dh : 0, oh = (ih + 2 * p - dh * (kh - 1) - 1) / st + 1;
      int ow = (iw + 2 * p - kw) / st + 1;
      int8_t *y = malloc((size_t)oh * ow * cout);
      cl_conv_s8_im2col(x, ih, iw, cin, w, b, xb, pk, kh, kw, st, st, dh, 1, p, p, y, oh, ow,
                        cout, (int8_t)zp, m, s, zp, -128, 127, acc, col);
      out(y, (size_t)oh * ow * cout);
      free(y);
    }
  }
  free(x); free(w); free(col); free(b); free(acc); free(m); free(s); free(xb); free(pk);
}

/* One pixel and many output channels (an in-place piece): the packed GEMM's one-pixel
   path, over blocks of 64 channels and the 16-channel tail. */
static void one_pixel_1x1(void) {
  int cin = range(1, 200), cout = range(64, 150);
  int32_t zp = range(-128, 256), *m, *s;
  int8_t *x = i8s((size_t)cin), *w = i8s((size_t)cin * cout), *y = malloc((size_t)cout);
  int32_t *b = biases((size_t)cout), *acc = malloc(4 * (size_t)cout);
  int32_t *xb = flipped_bias(w, b, cin, cout);
  int8_t *pk = packed_weights(w, cin, cout);
  stage((size_t)cout, 0, &m, &s);
  cl_conv_s8_1x1(x, 1, 1, cin, w, b, xb, pk, 1, 1, y, 1, 1, cout, m, s, zp, -128, 127, acc);
  out(y, (size_t)cout);
  free(x); free(w); free(y); free(b); free(acc); free(xb); free(pk); free(m); free(s);
}

static void add_kernel(int round) {
  int32_t *m, *s;
  stage(3, 0, &m, &s);
  cl_add_params ap = {range(-128, 256), range(-128, 256), range(-128, 256), 20, m[0],
                      -range(0, 8), m[1], -range(0, 8), m[2], -range(0, 20), -128, 127};
  long n = range(1, 2000);
  int8_t *a = i8s((size_t)n), *b = i8s((size_t)n), *y = malloc((size_t)n);
  cl_add_s8(a, b, y, n, &ap, round % 2);
  out(y, (size_t)n);
  int8_t *buf = i8s((size_t)n + 5); /* in place: output 5 bytes below the first input */
  cl_add_s8(buf + 5, b, buf, n, &ap, 0);
  out(buf, (size_t)n + 5);
  int8_t *up = i8s((size_t)n + 7); /* and 7 bytes above it, walked backward */
  cl_add_s8(up, b, up + 7, n, &ap, 1);
  out(up, (size_t)n + 7);
  free(a); free(b); free(y); free(buf); free(up); free(m); free(s);
}

int main(void) {
  for (int round = 0; round < 60; ++round) {
    gemm_kernels();
    requant_extremes();
    window_kernels(round);
    im2col_in_place();
    one_pixel_1x1();
    add_kernel(round);
  }
  return 0;
}
"""


def _harness_bytes(tmp_path: Path, name: str, flags: tuple[str, ...]) -> bytes:
    """Build the harness with ``flags`` (warnings are errors) and return its output."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(KERNELS, folder / KERNELS.name)
    (folder / "harness.c").write_text(HARNESS, encoding="utf-8")
    exe = folder / "harness"
    subprocess.run(["gcc", *flags, "-Werror", "harness.c", "-o", str(exe)], cwd=folder,
                   check=True, capture_output=True)  # fmt: skip
    return subprocess.run([str(exe)], check=True, capture_output=True, timeout=60).stdout


@needs_avx2
def test_simd_kernels_equal_the_portable_ones_on_random_shapes(tmp_path: Path) -> None:
    """Same bytes on every path; the AddressSanitizer builds also prove that no SIMD load
    or store (tails, masked steps, in-place ADD blocks) leaves its exact-size buffer."""
    asan = ("-O1", "-fsanitize=address", "-fno-omit-frame-pointer")  # -O1: a faster compile
    paths = {"portable": (*HOST_FLAGS, "-DCL_NO_SIMD"), "avx2": (*HOST_FLAGS, *AVX2_ONLY, *asan)}
    if HAS_VNNI:
        paths["vnni"] = (*HOST_FLAGS, *asan)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            name: pool.submit(_harness_bytes, tmp_path, name, flags)
            for name, flags in paths.items()
        }
        outputs = {name: run.result() for name, run in runs.items()}
    portable = outputs.pop("portable")
    assert len(portable) > 10_000
    for name, output in outputs.items():
        assert output == portable, name


def test_harness_detects_a_wrong_kernel(tmp_path: Path) -> None:
    """The differential harness can fail: a rounding change in the portable requantization
    (ties toward zero instead of away) changes its output."""
    flags = ("-std=c99", "-O1", "-DCL_NO_SIMD")
    reference = _harness_bytes(tmp_path, "reference", flags)
    original = KERNELS.read_text(encoding="utf-8")
    rounding = "int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);"
    assert rounding in original
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / KERNELS.name).write_text(
        original.replace(rounding, "int32_t thr = (mask >> 1);"), encoding="utf-8"
    )
    (folder / "harness.c").write_text(HARNESS, encoding="utf-8")
    subprocess.run(["gcc", *flags, "harness.c", "-o", "h"], cwd=folder, check=True)
    assert subprocess.run([str(folder / "h")], capture_output=True, check=True).stdout != reference


@needs_avx2
def test_avx2_and_portable_builds_are_bit_exact_with_tflm(tmp_path: Path) -> None:
    """KWS (im2col and 1x1 GEMM, depthwise, in-place pieces) on the AVX2-only path (no
    VNNI) and on the portable path."""
    model = load_model("mlperf:kws_ref_model.tflite")
    assert model.file_bytes is not None
    plan = make_plan(model.graph, inplace=True)
    gen = generate_c(model.graph, plan)
    interp = TflmInterpreter(model.file_bytes)
    for flags in ((*HOST_FLAGS, *AVX2_ONLY), (*HOST_FLAGS, "-DCL_NO_SIMD")):
        lib = build_library(gen, tmp_path, flags)
        assert lib.log.warnings == []
        for seed in range(2):
            xs = random_inputs(gen, seed)
            ours = lib.run(xs)[0]
            np.testing.assert_array_equal(ours, interp.run(xs)[0].reshape(ours.shape))


def _macros(compiler: str, flags: tuple[str, ...], tmp_path: Path) -> set[str]:
    shutil.copy(KERNELS, tmp_path / KERNELS.name)
    text = subprocess.run([compiler, *flags, "-dM", "-E", KERNELS.name], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {ln.split()[1] for ln in text.splitlines() if ln.startswith("#define CL_SIMD_")}


@needs_avx2
def test_target_macros_select_the_simd_path(tmp_path: Path) -> None:
    native = {"CL_SIMD_AVX2", "CL_SIMD_VNNI"} if HAS_VNNI else {"CL_SIMD_AVX2"}
    assert _macros("gcc", HOST_FLAGS, tmp_path) == native
    assert _macros("gcc", (*HOST_FLAGS, *AVX2_ONLY), tmp_path) == {"CL_SIMD_AVX2"}
    assert _macros("gcc", (*HOST_FLAGS, "-DCL_NO_SIMD"), tmp_path) == set()
    assert _macros("gcc", BASE_FLAGS, tmp_path) == set()  # no target flags: portable


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_cortex_m_builds_select_the_dsp_path(tmp_path: Path) -> None:
    from crosslevel.codegen.cross import CROSS_FLAGS

    m4 = (*CROSS_FLAGS, "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
    assert _macros("arm-none-eabi-gcc", m4, tmp_path) == {"CL_SIMD_DSP"}
    m0 = (*CROSS_FLAGS, "-mcpu=cortex-m0", "-mthumb")  # no DSP extension: portable
    assert _macros("arm-none-eabi-gcc", m0, tmp_path) == set()
