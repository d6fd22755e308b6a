"""One-pass CPU kernels for the identity study's per-image sums (issue 16: identity within 1.10× inference).

The identity study needs, per unit and image, ‖y‖, ‖y − S(x)‖ and ‖S(x)‖ where y = post(S(x) + F(x)), and per
measured layer Σr and Σr². With torch operations that is five passes over each activation and one temporary;
here the addition, the post-ReLU and the three sums are one pass (the pass the forward makes anyway), and Σr,
Σr² one more. The output y is bit-identical to ``post(s + f)``: the same float32 addition, and a ReLU that keeps
NaN (as ``torch.relu``). Sums: float32 lanes over runs of at most 1,024 elements, added into float64. CKA's Gram
matrices X Xᵀ of minibatches of images: each pair once (the blocks on and above the diagonal), float32 lanes added
into float64 at the end.

The kernels are compiled once, on first use, with :mod:`torch.utils.cpp_extension` (a C++ compiler and ninja);
where that is not possible — no compiler, a GPU tensor, another dtype, a non-contiguous tensor — every function
here returns None and the caller computes the same quantities with torch operations. ``RESPROBE_FUSED=0`` turns
the kernels off.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Optional

import torch

__all__ = ["available", "failure", "add_post_into", "row_sums_into", "grams", "add_post_sums", "row_sums"]

Tensor = torch.Tensor

_SRC = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

namespace {
// GCC/Clang vector extensions: four independent accumulators of 16 floats (one AVX-512 register each, or four
// SSE registers), so that the sums do not wait on each other; loads through memcpy (unaligned).
typedef float v16 __attribute__((vector_size(64)));
constexpr int64_t W = 16, U = 4, RUN = 1024;  // lanes, accumulators, elements summed in float before double

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
inline double hsum(v16 v) { double a = 0; for (int k = 0; k < W; ++k) a += v[k]; return a; }

// y = post(s + f) (post: ReLU if RELU, else the identity; f alone if not ADD) written to y; per row:
// sum y^2, sum (y - s)^2, sum s^2, and if FS also sum f, sum f^2 (the same runs and lanes as sum_rows, so
// these two are bit-identical to row_sums(f)).  The ReLU keeps NaN (v < 0 ? 0 : v), as torch.relu.
template <bool RELU, bool ADD, bool FS>
void add_post_rows(const float* __restrict__ s, const float* __restrict__ f, float* __restrict__ y, double* out,
                   int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
  const v16 zero = {0};
  int64_t j = 0;
  while (j + W * U <= n) {
    const int64_t stop = std::min(n, j + RUN) - (std::min(n, j + RUN) - j) % (W * U);
    v16 c0[U] = {}, c1[U] = {}, c2[U] = {}, c3[U] = {}, c4[U] = {};
    for (; j < stop; j += W * U) {
      for (int u = 0; u < U; ++u) {
        const v16 sv = load(s + j + u * W);
        const v16 fv = load(f + j + u * W);
        v16 v = ADD ? sv + fv : fv;
        if (RELU) v = v < zero ? zero : v;
        store(y + j + u * W, v);
        const v16 d = v - sv;
        c0[u] += v * v; c1[u] += d * d; c2[u] += sv * sv;
        if (FS) { c3[u] += fv; c4[u] += fv * fv; }
      }
    }
    for (int u = 0; u < U; ++u) {
      a0 += hsum(c0[u]); a1 += hsum(c1[u]); a2 += hsum(c2[u]);
      if (FS) { a3 += hsum(c3[u]); a4 += hsum(c4[u]); }
    }
  }
  for (; j < n; ++j) {
    const float sv = s[j];
    float v = ADD ? sv + f[j] : f[j];
    if (RELU) v = v < 0.f ? 0.f : v;
    y[j] = v;
    const float d = v - sv;
    a0 += double(v) * v; a1 += double(d) * d; a2 += double(sv) * sv;
    if (FS) { a3 += f[j]; a4 += double(f[j]) * f[j]; }
  }
  out[0] = a0; out[1] = a1; out[2] = a2;
  if (FS) { out[3] = a3; out[4] = a4; }
}

template <bool FS>
void add_post_dispatch(const float* a, const float* c, float* w, double* o, int64_t n, bool relu, bool add) {
  if (relu && add) add_post_rows<true, true, FS>(a, c, w, o, n);
  else if (relu) add_post_rows<true, false, FS>(a, c, w, o, n);
  else if (add) add_post_rows<false, true, FS>(a, c, w, o, n);
  else add_post_rows<false, false, FS>(a, c, w, o, n);
}

// per row: sum t, sum t^2
void sum_rows(const float* __restrict__ t, double* out, int64_t n) {
  double a0 = 0, a1 = 0;
  int64_t j = 0;
  while (j + W * U <= n) {
    const int64_t stop = std::min(n, j + RUN) - (std::min(n, j + RUN) - j) % (W * U);
    v16 c0[U] = {}, c1[U] = {};
    for (; j < stop; j += W * U) {
      for (int u = 0; u < U; ++u) { const v16 v = load(t + j + u * W); c0[u] += v; c1[u] += v * v; }
    }
    for (int u = 0; u < U; ++u) { a0 += hsum(c0[u]); a1 += hsum(c1[u]); }
  }
  for (; j < n; ++j) { a0 += t[j]; a1 += double(t[j]) * t[j]; }
  out[0] = a0; out[1] = a1;
}
}  // namespace

namespace {
// what the kernels take: a float32 CPU tensor, contiguous, outside autograd, with a batch dimension
bool ok_input(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
         !t.requires_grad() && t.dim() > 0;
}
// a float64 CPU table (rows: the batch's images) with room for k columns from col on
bool ok_table(const torch::Tensor& out, int64_t b, int64_t col, int64_t k) {
  return out.defined() && out.device().is_cpu() && out.scalar_type() == torch::kDouble && out.dim() == 2 &&
         out.size(0) == b && out.stride(1) == 1 && col >= 0 && col + k <= out.size(1) && !out.requires_grad();
}
}  // namespace

// y = post(s + f) (a new tensor) and, in columns col..col+4 of each image's row of the table out (float64):
// sum y^2, sum (y - s)^2, sum s^2, sum f, sum f^2. Undefined (None) where the kernel does not apply.
torch::Tensor add_post_into(torch::Tensor s, torch::Tensor f, torch::Tensor out, int64_t col, bool relu, bool add) {
  if (!ok_input(s) || !ok_input(f) || !s.sizes().equals(f.sizes())) return torch::Tensor();
  const int64_t b = s.size(0), n = s.numel() / std::max<int64_t>(b, 1), ld = out.defined() ? out.stride(0) : 0;
  if (!ok_table(out, b, col, 5)) return torch::Tensor();
  auto y = torch::empty_like(f);
  const float* sp = s.data_ptr<float>();
  const float* fp = f.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  double* op = out.data_ptr<double>() + col;
  at::parallel_for(0, b, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      add_post_dispatch<true>(sp + r * n, fp + r * n, yp + r * n, op + ld * r, n, relu, add);
  });
  return y;
}

namespace {
constexpr int64_t KC = 1024;  // Gram kernel: elements of each row per pass (4 KB: eight rows stay in L1)

// acc[4 r + k] += a_r * b_k lane by lane over elements [lo, hi) (a multiple of W): a 4 x 4 block of a Gram
// matrix, sixteen accumulators and eight loads per sixteen fused multiply-adds
inline void gram_block(const float* const* a, const float* const* b, v16* acc, int64_t lo, int64_t hi) {
  v16 c00 = acc[0], c01 = acc[1], c02 = acc[2], c03 = acc[3], c10 = acc[4], c11 = acc[5], c12 = acc[6],
      c13 = acc[7], c20 = acc[8], c21 = acc[9], c22 = acc[10], c23 = acc[11], c30 = acc[12], c31 = acc[13],
      c32 = acc[14], c33 = acc[15];
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  for (int64_t j = lo; j < hi; j += W) {
    const v16 x0 = load(a0 + j), x1 = load(a1 + j), x2 = load(a2 + j), x3 = load(a3 + j);
    const v16 y0 = load(b0 + j), y1 = load(b1 + j), y2 = load(b2 + j), y3 = load(b3 + j);
    c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
    c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
    c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
    c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
  }
  acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c03; acc[4] = c10; acc[5] = c11; acc[6] = c12;
  acc[7] = c13; acc[8] = c20; acc[9] = c21; acc[10] = c22; acc[11] = c23; acc[12] = c30; acc[13] = c31;
  acc[14] = c32; acc[15] = c33;
}
}  // namespace

// Linear Gram matrices of consecutive groups of m rows (images) of t: (floor(B / m), m, m), float32 (into the
// tensor given, or a new one), each the symmetric X X^T of its group's flattened rows. Only the blocks on and
// above the diagonal are computed (a 4 x 4 register block at a time, rows of a group past m read as zeros):
// about half the products of a general matrix product. Float32 lanes over the rows, added in float64; rows'
// last n % 16 elements in float64.
// Undefined (None) where the kernel does not apply.
torch::Tensor grams(torch::Tensor t, int64_t m, c10::optional<torch::Tensor> into) {
  // groups of at most 512 images: the accumulators (1 KB per block pair) stay within 8.4 MB a thread, and past
  // that the general product catches up (1,024 images: 0.74x its time)
  if (!ok_input(t) || m < 1 || m > 512) return torch::Tensor();
  const int64_t b = t.size(0), nb = b / m, n = t.numel() / std::max<int64_t>(b, 1), nv = n - n % W;
  torch::Tensor out;
  if (into.has_value() && into->defined()) {  // written in place: a float32 CPU tensor (nb, m, m), contiguous
    out = *into;
    if (!out.device().is_cpu() || out.scalar_type() != torch::kFloat || !out.is_contiguous() ||
        out.requires_grad() || !out.sizes().equals({nb, m, m}))
      return torch::Tensor();
  } else {
    out = torch::empty({nb, m, m}, t.options());
  }
  if (nb == 0) return out;
  const int64_t blocks = (m + 3) / 4, pairs = blocks * (blocks + 1) / 2;
  std::vector<int64_t> bi(pairs), bj(pairs);
  for (int64_t i = 0, p = 0; i < blocks; ++i)
    for (int64_t j = i; j < blocks; ++j, ++p) { bi[p] = i; bj[p] = j; }
  std::vector<float> zero(m % 4 ? n : 0, 0.f);  // the rows that pad a group's last block to four
  const float* tp = t.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // work items: (group, block pair), in order; each thread takes a run of them
  at::parallel_for(0, nb * pairs, 1, [&](int64_t lo, int64_t hi) {
    std::vector<v16> acc(16 * (hi - lo));
    std::memset(static_cast<void*>(acc.data()), 0, acc.size() * sizeof(v16));
    for (int64_t q0 = lo; q0 < hi;) {
      const int64_t g = q0 / pairs, q1 = std::min(hi, (g + 1) * pairs);  // this group's items in the run
      const float* base = tp + g * m * n;
      auto row = [&](int64_t r) { return r < m ? base + r * n : zero.data(); };
      for (int64_t c = 0; c < nv; c += KC) {  // the group's rows a slice at a time, every block on the slice
        const int64_t stop = std::min(nv, c + KC);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t p = q - g * pairs, i = 4 * bi[p], j = 4 * bj[p];
          const float* a[4] = {row(i), row(i + 1), row(i + 2), row(i + 3)};
          const float* e[4] = {row(j), row(j + 1), row(j + 2), row(j + 3)};
          gram_block(a, e, acc.data() + 16 * (q - lo), c, stop);
        }
      }
      float* G = op + g * m * m;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t p = q - g * pairs;
        for (int64_t r = 0; r < 4; ++r)
          for (int64_t k = 0; k < 4; ++k) {
            const int64_t i = 4 * bi[p] + r, j = 4 * bj[p] + k;
            if (i >= m || j >= m || (bi[p] == bj[p] && j < i)) continue;
            double s = hsum(acc[16 * (q - lo) + 4 * r + k]);
            for (int64_t e = nv; e < n; ++e) s += double(base[i * n + e]) * base[j * n + e];
            G[i * m + j] = G[j * m + i] = float(s);
          }
      }
      q0 = q1;
    }
  });
  return out;
}

// sum t and sum t^2 per image into columns col, col+1 of the table out; false where the kernel does not apply
bool row_sums_into(torch::Tensor t, torch::Tensor out, int64_t col) {
  if (!ok_input(t)) return false;
  const int64_t b = t.size(0), n = t.numel() / std::max<int64_t>(b, 1);
  if (!ok_table(out, b, col, 2)) return false;
  const int64_t ld = out.stride(0);
  const float* tp = t.data_ptr<float>();
  double* op = out.data_ptr<double>() + col;
  at::parallel_for(0, b, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) sum_rows(tp + r * n, op + ld * r, n);
  });
  return true;
}
"""

_lock = threading.Lock()
_module = None
_failed: Optional[str] = None
VERSION = 10  # bump with any change of _SRC


def _cpu_tag() -> str:
    """A fingerprint of this CPU's instruction sets: the kernels are built for the CPU they run on
    (``-march=native``), and a build directory shared by several kinds of machine keeps one build per kind."""
    import platform
    import zlib
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    flags += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return f"{zlib.crc32(flags.encode()):08x}"


def _build(name: str, flags: list, announce: bool):
    import logging
    from ..progress import note
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)  # its 'no CUDA runtime' warning (at import) is not ours to show
    try:
        from torch.utils import cpp_extension
        built = os.path.join(cpp_extension._get_build_directory(name, verbose=False), f"{name}.so")
        if announce and not os.path.exists(built):
            note("compiling resprobe's one-pass identity kernels for this machine (once; about 40 s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load_inline(name=name, cpp_sources=[_SRC], functions=["add_post_into", "row_sums_into", "grams"],
                                             extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"],
                                             verbose=False)
    finally:
        log.setLevel(level)


def _load():
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is None and _failed is None:
            if os.environ.get("RESPROBE_FUSED", "1") == "0":
                _failed = "turned off by RESPROBE_FUSED=0"
                return None
            errors = []
            for tag, flags in ((_cpu_tag(), ["-march=native"]), ("generic", [])):
                try:
                    _module = _build(f"resprobe_fused_v{VERSION}_{tag}", flags, announce=not errors)
                    break
                except Exception as e:  # noqa: BLE001 - no compiler or headers: torch operations do the same work
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    errors.append(f"{type(e).__name__}: {first[:120]}")
            if _module is None:
                _failed = "could not be compiled: " + "; ".join(errors)
    return _module


def available() -> bool:
    """True when the compiled kernels can be used (compiling them on the first call)."""
    return _load() is not None


def failure() -> Optional[str]:
    """Why the kernels are not used (None when they are)."""
    return None if available() else _failed


def add_post_into(s: Tensor, f: Tensor, relu: bool, out: Tensor, col: int, add: bool = True) -> Optional[Tensor]:
    """y = relu?(s + f) (or relu?(f) when not ``add``), and per image (rows of the first dimension) into
    columns ``col`` … ``col + 4`` of ``out`` (a float64 CPU table, one row per image of the batch, unit column
    stride): Σy², Σ(y − s)², Σs², Σf, Σf². None (nothing written) when the kernel does not apply: tensors that
    are not float32, contiguous, on the CPU and outside autograd, shapes that differ, a table without room."""
    if s.device.type != "cpu":  # decided before anything is compiled: a GPU run never builds the CPU kernels
        return None
    m = _module if _module is not None else _load()
    if m is None:
        return None
    return m.add_post_into(s, f, out, int(col), bool(relu), bool(add))


def row_sums_into(t: Tensor, out: Tensor, col: int) -> bool:
    """Per image (rows of the first dimension) Σt and Σt² into columns ``col``, ``col + 1`` of ``out`` (as
    :func:`add_post_into`); False (nothing written) when the kernel does not apply."""
    if t.device.type != "cpu":
        return False
    m = _module if _module is not None else _load()
    return m is not None and m.row_sums_into(t, out, int(col))


def grams(t: Tensor, m: int, out: Optional[Tensor] = None) -> Optional[Tensor]:
    """Linear Gram matrices of consecutive groups of ``m`` images (rows of the first dimension, flattened):
    shape (⌊B/m⌋, m, m), float32, as :func:`resprobe.metrics.similarity.minibatch_grams` (a remainder < m is
    dropped) with about half its products (symmetry) and float64 sums of float32 lanes; written into ``out``
    when given (a contiguous float32 CPU tensor of that shape). None (nothing written) when the kernel does not
    apply (as :func:`add_post_into`, groups of more than 512 images, or an ``out`` that does not fit)."""
    if t.device.type != "cpu":
        return None
    m_ = _module if _module is not None else _load()
    if m_ is None:
        return None
    return m_.grams(t, int(m), out)  # an undefined tensor comes back as None


def add_post_sums(s: Tensor, f: Tensor, relu: bool, add: bool = True,
                  f_sums: bool = False) -> Optional[tuple[Tensor, Tensor]]:
    """``(y, sums)`` with y = relu?(s + f) (or relu?(f) when not ``add``) and per image sums (float64, shape
    (B, 3)): Σy², Σ(y − s)², Σs²; with ``f_sums`` also Σf, Σf² (shape (B, 5); these two equal
    ``row_sums(f)`` bit for bit). None when the kernel cannot be used."""
    if s.dim() == 0:
        return None
    out = torch.empty((s.shape[0], 5), dtype=torch.float64)
    y = add_post_into(s, f, relu, out, 0, add)
    if y is None:
        return None
    return y, (out if f_sums else out[:, :3])


def row_sums(t: Tensor) -> Optional[Tensor]:
    """Per image (rows of the first dimension) Σt and Σt² (float64, shape (B, 2)); None when the kernel cannot
    be used."""
    if t.dim() == 0:
        return None
    out = torch.empty((t.shape[0], 2), dtype=torch.float64)
    return out if row_sums_into(t, out, 0) else None
