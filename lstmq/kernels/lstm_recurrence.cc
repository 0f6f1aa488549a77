// Fused float LSTM recurrence (forward and backward) as XLA FFI handlers for the CPU.
//
// The same math as lstmq/recurrence.py (gates i, f, g, o; sigmoid(x) = (1 + tanh(x/2)) / 2;
// invalid steps keep the previous state), one call per layer instead of one XLA while-loop
// iteration per time step. The batch is cut into fixed chunks of rows (kChunkRows), run in
// parallel on XLA's intra-op thread pool; results do not depend on the thread count.
//
// Handlers (row-major arrays; leading batch dims, from jax.vmap's "broadcast_all", are
// looped over):
//   LstmqLstmForward(z f32[T,B,4H], kernel f32[H,4H], valid pred[T,B])
//       -> h f32[T,B,H], residuals f32[T,B,6Hp] (per row: i, f, g, o, carried c, tanh(c_new))
//   LstmqLstmBackward(dy f32[T,B,H], residuals f32[T,B,6Hp], kernel f32[H,4H], valid pred[T,B],
//                     h f32[T,B,H] (the forward's outputs))
//       -> dz f32[T,B,4H]  (0 at invalid steps; dh, dc pass through them unchanged),
//          d_kernel f32[H,4H] = sum over t, b of h_prev^T dz
//   LstmqLstmQatForward / LstmqLstmQatBackward: the same signatures for the QAT recurrence
//       (lstmq.model.RecurrentStep with QATNumerics): the forward's kernel is the already
//       fake-quantized one and it rounds z (Q3.12), the gates and tanh(c) (Q0.15), c (Q4.11)
//       and h (Q0.7, +-127) exactly as lstmq.recipe.fake_quant_fixed; residuals are 11Hp per
//       row (i, f, g, o rounded, carried c, tanh(c) rounded, then sigmoid(z_i), sigmoid(z_f),
//       tanh(z_g), sigmoid(z_o), tanh(c) before rounding). The backward is straight-through
//       every rounding (the float LSTM backward at the rounded values, with the activation
//       derivatives at their unrounded outputs, as jax.grad of the scan) and its kernel is
//       the float one (AQT's use_fwd_quant=False: dh_prev = dz @ W^T).
// and extern "C" int lstmq_lstm_padding(): Hp is H rounded up to a multiple of it.
//
// Layout: state and residual rows hold each gate in a block of Hp floats (whole vectors);
// the matmul operands keep the 4H gate columns packed (rounded up to whole vectors, Gs), so
// no multiply-adds are spent on padding between gates. Lanes past H are kept at zero.
// Only rows valid at a step are computed (gathered into contiguous tiles), and a row's
// result does not depend on which other rows are valid. tanh is XLA's CPU approximation
// (bit-identical to jnp.tanh on the AVX-512 machine it was tested on).
//
// Build (lstmq/ffi_recurrence.py does this on first use), with INCLUDE the output of
// python -c 'import jax.ffi; print(jax.ffi.include_dir())':
//   c++ -std=c++17 -O3 -march=native -ffp-contract=fast -fno-math-errno -fPIC -shared
//       -isystem INCLUDE -o lstm_recurrence.so lstm_recurrence.cc

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kVW = 16;          // floats per vector register
constexpr int kAccumulators = 24;  // of 32 registers: the rest hold B-rows and a broadcast
constexpr int kColBlock = 4;     // vectors per column block ...
constexpr int kMaxCols = 6;      // ... or up to this many for the last one
#elif defined(__AVX__)
constexpr int kVW = 8;
constexpr int kAccumulators = 8;  // of 16 registers
constexpr int kColBlock = 2;
constexpr int kMaxCols = 3;
#else
constexpr int kVW = 4;
constexpr int kAccumulators = 8;
constexpr int kColBlock = 2;
constexpr int kMaxCols = 3;
#endif

typedef float vf __attribute__((vector_size(kVW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kVW * sizeof(int32_t))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
inline vf splat(float x) { return vf{} + x; }

inline vf select(vi mask, vf a, vf b) {  // lanes of mask are all ones (a) or zero (b)
  vi ai, bi;
  std::memcpy(&ai, &a, sizeof(vf));
  std::memcpy(&bi, &b, sizeof(vf));
  const vi r = (ai & mask) | (bi & ~mask);
  vf out;
  std::memcpy(&out, &r, sizeof(vf));
  return out;
}

inline vi lane_mask(int m) {  // lanes < m
  alignas(64) static const int32_t iota[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                8, 9, 10, 11, 12, 13, 14, 15};
  vi idx;
  std::memcpy(&idx, iota, sizeof(vi));
  return idx < (vi{} + m);
}

// The first m (0 < m < kVW) floats at p, zeros after; reads nothing past p[m-1].
inline vf load_partial(const float* p, int m) {
#if defined(__AVX512F__)
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1), p);
#elif defined(__AVX__)
  return _mm256_maskload_ps(p, reinterpret_cast<__m256i>(lane_mask(m)));
#else
  vf v{};
  for (int i = 0; i < m; ++i) v[i] = p[i];
  return v;
#endif
}

// Stores the first m (0 < m < kVW) lanes of v at p; writes nothing past p[m-1].
inline void store_partial(float* p, vf v, int m) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << m) - 1), v);
#elif defined(__AVX__)
  _mm256_maskstore_ps(p, reinterpret_cast<__m256i>(lane_mask(m)), v);
#else
  for (int i = 0; i < m; ++i) p[i] = v[i];
#endif
}

// Keeps a loaded vector in a register: otherwise GCC folds the load into every FMA that
// uses it, and the matmul tiles become load-bound.
inline void in_register(vf& v) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

// n floats from src to dst, zero-filled up to whole vectors (dst has room for them).
inline void copy_in(float* dst, const float* src, int n) {
  int j = 0;
  for (; j + kVW <= n; j += kVW) store(dst + j, load(src + j));
  if (j < n) store(dst + j, load_partial(src + j, n - j));
}

// n floats from src (readable up to whole vectors) to dst; writes nothing past dst[n-1].
inline void copy_out(float* dst, const float* src, int n) {
  int j = 0;
  for (; j + kVW <= n; j += kVW) store(dst + j, load(src + j));
  if (j < n) store_partial(dst + j, load(src + j), n - j);
}

inline void copy_vectors(float* dst, const float* src, int n) {  // n: whole vectors
  for (int j = 0; j < n; j += kVW) store(dst + j, load(src + j));
}

// min(max(x, -c), c); NaN stays NaN.
inline vf clamp_v(vf x, float c) {
#if defined(__AVX512F__)
  // max(lo, x) and min(hi, x) return x when it is NaN
  return _mm512_maskz_min_ps(0xFFFF, splat(c), _mm512_maskz_max_ps(0xFFFF, splat(-c), x));
#elif defined(__AVX__)
  return _mm256_min_ps(splat(c), _mm256_max_ps(splat(-c), x));
#else
  const vf hi = splat(c), lo = splat(-c);
  return select(x > hi, hi, select(x < lo, lo, x));
#endif
}

inline vf abs_v(vf x) {
  vi bits;
  std::memcpy(&bits, &x, sizeof(vf));
  bits &= 0x7fffffff;
  std::memcpy(&x, &bits, sizeof(vf));
  return x;
}

// tanh as XLA's CPU float tanh (Eigen's rational approximation: odd degree-13 over even
// degree-6 polynomial of the input clamped to +-7.99881172, where it is exactly +-1 in
// float; |x| < 4e-4 returns x): within 3e-7 relative of tanh.
inline vf tanh_v(vf x) {
  const vf xc = clamp_v(x, 7.99881172180176f);
  const vf x2 = xc * xc;
  vf p = splat(-2.76076847742355e-16f);
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * xc;
  vf q = splat(1.19825839466702e-06f);
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return select(abs_v(x) < splat(0.0004f), x, p / q);
}

inline vf sigmoid_v(vf x) { return 0.5f + 0.5f * tanh_v(0.5f * x); }

inline vf floor_v(vf y) {
#if defined(__AVX512F__)
  return _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#elif defined(__AVX__)
  return _mm256_floor_ps(y);
#else
  for (int i = 0; i < kVW; ++i) y[i] = __builtin_floorf(y[i]);
  return y;
#endif
}

// lstmq.recipe.fake_quant_fixed: y = x * 2^frac; round half up by comparing the fraction;
// clip to [lo, hi]; / 2^frac (every step exact in float32 but the final rounding of y). The
// division is a multiplication by 2^-frac: the same value (q and the result are normal
// floats), without a divide's latency on every gate of every step.
inline vf fake_quant_v(vf x, float scale, float lo, float hi) {
  const vf y = x * scale;
  const vf down = floor_v(y);
  vf q = select((y - down) >= splat(0.5f), down + 1.0f, down);
  q = select(q < splat(lo), splat(lo), q);
  q = select(q > splat(hi), splat(hi), q);
  return q * splat(1.0f / scale);
}

constexpr float kPreactScale = 4096.0f;  // Q3.12
constexpr float kGateScale = 32768.0f;   // Q0.15
constexpr float kCellScale = 2048.0f;    // Q4.11
constexpr float kHiddenScale = 128.0f;   // Q0.7
inline vf fq16(vf x, float scale) { return fake_quant_v(x, scale, -32768.0f, 32767.0f); }
inline vf fq_hidden(vf x) { return fake_quant_v(x, kHiddenScale, -127.0f, 127.0f); }

constexpr int slots(bool qat) { return qat ? 11 : 6; }

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeDeleter>;

Floats zeros(size_t count) {  // 64-byte aligned, zero-filled
  size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
  if (bytes == 0) bytes = 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return Floats(p);
}

inline int whole_vectors(int n) { return ((n + kVW - 1) / kVW) * kVW; }

// ---------------------------------------------------------------------------------------
// Small matmuls: C (+)= A @ Bm. A's element (row m, reduction index k) is at
// a[m * row_stride + k * k_stride]; Bm is [K, ldb] row-major; C is [M, ldc]; both have
// `vectors` whole vectors per row. Register tiles of RB rows x CV vectors; each row is
// computed the same way whatever tile it falls in.

struct Gemm {
  const float* a;
  int row_stride, k_stride, K;
  const float* b;
  int ldb;
  float* c;
  int ldc;
  int vectors;
};

constexpr int row_tile(int cols) {
  return kAccumulators / cols >= 8   ? 8
         : kAccumulators / cols >= 4 ? 4
         : kAccumulators / cols >= 2 ? 2
                                     : 1;
}

template <int RB, int CV, bool kAccumulate>
inline void gemm_tile(const Gemm& g, const float* A, const float* Bm, float* C) {
  vf acc[RB][CV];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < CV; ++c) acc[r][c] = kAccumulate ? load(C + r * g.ldc + c * kVW) : vf{};
  for (int k = 0; k < g.K; ++k) {
    const float* b = Bm + static_cast<ptrdiff_t>(k) * g.ldb;
    const float* a = A + static_cast<ptrdiff_t>(k) * g.k_stride;
    vf bv[CV];
#pragma GCC unroll 8
    for (int c = 0; c < CV; ++c) {
      bv[c] = load(b + c * kVW);
      in_register(bv[c]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const float ar = a[r * g.row_stride];
#pragma GCC unroll 8
      for (int c = 0; c < CV; ++c) acc[r][c] += ar * bv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < CV; ++c) store(C + r * g.ldc + c * kVW, acc[r][c]);
}

template <int RB, int CV, bool kAccumulate>
inline int gemm_row_range(const Gemm& g, int r, int M, int c0) {
  for (; r + RB <= M; r += RB)
    gemm_tile<RB, CV, kAccumulate>(g, g.a + r * g.row_stride, g.b + c0, g.c + r * g.ldc + c0);
  return r;
}

template <int CV, bool kAccumulate>
void gemm_block(const Gemm& g, int M, int c0) {  // columns c0 .. c0 + CV*kVW, all rows
  constexpr int RB = row_tile(CV);
  int r = gemm_row_range<RB, CV, kAccumulate>(g, 0, M, c0);
  if constexpr (RB > 4) r = gemm_row_range<4, CV, kAccumulate>(g, r, M, c0);
  if constexpr (RB > 2) r = gemm_row_range<2, CV, kAccumulate>(g, r, M, c0);
  if constexpr (RB > 1) gemm_row_range<1, CV, kAccumulate>(g, r, M, c0);
}

template <bool kAccumulate>
void gemm(const Gemm& g, int M) {
  int c = 0;
  while (g.vectors - c > kMaxCols) {
    gemm_block<kColBlock, kAccumulate>(g, M, c * kVW);
    c += kColBlock;
  }
  switch (g.vectors - c) {
    case 6: gemm_block<6, kAccumulate>(g, M, c * kVW); break;
    case 5: gemm_block<5, kAccumulate>(g, M, c * kVW); break;
    case 4: gemm_block<4, kAccumulate>(g, M, c * kVW); break;
    case 3: gemm_block<3, kAccumulate>(g, M, c * kVW); break;
    case 2: gemm_block<2, kAccumulate>(g, M, c * kVW); break;
    case 1: gemm_block<1, kAccumulate>(g, M, c * kVW); break;
    default: break;
  }
}

struct Dims {
  int64_t instances = 1;  // product of leading (vmap) dims
  int T = 0, B = 0, H = 0;
  int Hp = 0;  // H in whole vectors: a gate block of the state and residual rows
  int Gs = 0;  // 4H in whole vectors: a packed row of pre-activations and their gradients
};

std::string shape_text(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

// Leading-dim product of `d` once its last `rank` dims are removed (-1 when rank is larger).
int64_t leading(ffi::Span<const int64_t> d, size_t rank) {
  if (d.size() < rank) return -1;
  int64_t n = 1;
  for (size_t i = 0; i + rank < d.size(); ++i) n *= d[i];
  return n;
}

ffi::Error check_common(ffi::Span<const int64_t> kd, ffi::Span<const int64_t> vd, Dims& dims) {
  if (kd.size() < 2 || kd[kd.size() - 1] != 4 * kd[kd.size() - 2])
    return ffi::Error::InvalidArgument("kernel must be [..., H, 4H], got " + shape_text(kd));
  dims.H = static_cast<int>(kd[kd.size() - 2]);
  dims.Hp = whole_vectors(dims.H);
  dims.Gs = whole_vectors(4 * dims.H);
  if (leading(kd, 2) != dims.instances)
    return ffi::Error::InvalidArgument("kernel batch dims do not match: " + shape_text(kd));
  if (vd.size() < 2 || leading(vd, 2) != dims.instances || vd[vd.size() - 2] != dims.T ||
      vd[vd.size() - 1] != dims.B)
    return ffi::Error::InvalidArgument("valid must be [..., T, B], got " + shape_text(vd));
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------
// Forward

struct ForwardWork {  // one chunk of rows (nb of them)
  Floats h, c;  // [nb, Hp] carried state
  Floats hc;    // [B, Hp] state of the valid rows, gathered (when some rows are invalid)
  Floats zc;    // [B, Gs] (+ Hp slack) pre-activations of the valid rows
  Floats zx;    // [B, Gs] (+ Hp slack) QAT: z_input of the valid rows (zc holds h @ W)
  std::vector<int> rows;
  ForwardWork(const Dims& d, int nb)
      : h(zeros(static_cast<size_t>(nb) * d.Hp)),
        c(zeros(static_cast<size_t>(nb) * d.Hp)),
        hc(zeros(static_cast<size_t>(nb) * d.Hp)),
        zc(zeros(static_cast<size_t>(nb) * d.Gs + d.Hp)),
        zx(zeros(static_cast<size_t>(nb) * d.Gs + d.Hp)),
        rows(nb) {}
};

// Zeroes lanes live.. of the four gate vectors (a gate's last vector past H).
inline void zero_lanes_from(int live, vf& zi, vf& zf, vf& zg, vf& zo) {
  const vi mask = lane_mask(live);
  zi = select(mask, zi, vf{});
  zf = select(mask, zf, vf{});
  zg = select(mask, zg, vf{});
  zo = select(mask, zo, vf{});
}

// One step of one valid row. z: pre-activations, gate g at z[g*H]; the last vector of a
// gate also reads the next gate's (or the slack's) first lanes, which are zeroed here.
// Updates h, c [Hp]; writes the row's residuals res [6Hp].
inline void cell_forward(const float* z, float* h, float* c, float* res, int H, int Hp) {
  for (int j = 0; j < Hp; j += kVW) {
    vf zi = load(z + j), zf = load(z + H + j), zg = load(z + 2 * H + j), zo = load(z + 3 * H + j);
    if (j + kVW > H) zero_lanes_from(H - j, zi, zf, zg, zo);
    const vf i = sigmoid_v(zi), f = sigmoid_v(zf), g = tanh_v(zg), o = sigmoid_v(zo);
    const vf c_new = f * load(c + j) + i * g;  // padding lanes: 0.5 * 0 + 0.5 * 0
    const vf tc = tanh_v(c_new);
    store(h + j, o * tc);
    store(c + j, c_new);
    store(res + j, i);
    store(res + Hp + j, f);
    store(res + 2 * Hp + j, g);
    store(res + 3 * Hp + j, o);
    store(res + 4 * Hp + j, c_new);
    store(res + 5 * Hp + j, tc);
  }
}

// One QAT step of one valid row: z = zx + zd (z_input, then h @ W_q added as XLA does), then
// RecurrentStep's roundings. c_new = f * c + i * g is fma(f, c, i * g), as XLA fuses it.
// Writes the row's residuals res [11Hp].
inline void cell_forward_qat(const float* zx, const float* zd, float* h, float* c, float* res,
                             int H, int Hp) {
  for (int j = 0; j < Hp; j += kVW) {
    vf zi = load(zx + j) + load(zd + j), zf = load(zx + H + j) + load(zd + H + j);
    vf zg = load(zx + 2 * H + j) + load(zd + 2 * H + j);
    vf zo = load(zx + 3 * H + j) + load(zd + 3 * H + j);
    if (j + kVW > H) zero_lanes_from(H - j, zi, zf, zg, zo);
    const vf si = sigmoid_v(fq16(zi, kPreactScale)), sf = sigmoid_v(fq16(zf, kPreactScale));
    const vf tg = tanh_v(fq16(zg, kPreactScale)), so = sigmoid_v(fq16(zo, kPreactScale));
    const vf i = fq16(si, kGateScale), f = fq16(sf, kGateScale);
    const vf g = fq16(tg, kGateScale), o = fq16(so, kGateScale);
    vf ig = i * g;
    in_register(ig);  // rounded on its own: XLA computes fma(f, c, i * g)
    const vf c_new = fq16(f * load(c + j) + ig, kCellScale);
    const vf tcr = tanh_v(c_new);
    const vf tc = fq16(tcr, kGateScale);
    store(h + j, fq_hidden(o * tc));  // padding lanes: 0
    store(c + j, c_new);
    const vf values[11] = {i, f, g, o, c_new, tc, si, sf, tg, so, tcr};
    for (int s = 0; s < 11; ++s) store(res + s * Hp + j, values[s]);
  }
}

// The kernel [H, 4H] with rows padded to whole vectors: w [H, Gs].
void pad_kernel(const float* kernel, const Dims& d, float* w) {
  for (int k = 0; k < d.H; ++k)
    copy_in(w + static_cast<size_t>(k) * d.Gs, kernel + k * 4 * d.H, 4 * d.H);
}

// The forward of rows b0 .. b0 + nb of one instance (w: pad_kernel's layout). Arrays are
// indexed as [t, b, ...] with B rows per step; the chunk touches only its own rows.
template <bool kQat>
void forward_rows(const float* z, const float* w, const bool* valid, float* out, float* res,
                  const Dims& d, int b0, int nb, ForwardWork& work) {
  const int T = d.T, B = d.B, H = d.H, Hp = d.Hp, Gs = d.Gs, R = slots(kQat) * Hp;
  float *h = work.h.get(), *c = work.c.get();
  float *hc = work.hc.get(), *zc = work.zc.get(), *zx = work.zx.get();
  for (int t = 0; t < T; ++t) {
    const float* zt = z + (static_cast<size_t>(t) * B + b0) * 4 * H;
    float* rt = res + (static_cast<size_t>(t) * B + b0) * R;
    const bool* vt = valid + static_cast<size_t>(t) * B + b0;
    int n = 0;
    for (int b = 0; b < nb; ++b) {
      if (vt[b]) {
        work.rows[n++] = b;
      } else {  // keeps the state; of its residuals only the carried c is read back
        float* rb = rt + static_cast<size_t>(b) * R;
        std::memset(rb, 0, R * sizeof(float));
        copy_vectors(rb + 4 * Hp, c + b * Hp, Hp);
      }
    }
    if (n > 0) {
      const bool all = n == nb;
      for (int j = 0; j < n; ++j) {
        const int b = work.rows[j];
        copy_in((kQat ? zx : zc) + j * Gs, zt + b * 4 * H, 4 * H);
        if (!all) copy_vectors(hc + j * Hp, h + b * Hp, Hp);
      }
      gemm<!kQat>({all ? h : hc, Hp, 1, H, w, Gs, zc, Gs, Gs / kVW}, n);
      for (int j = 0; j < n; ++j) {
        const int b = work.rows[j];
        float* rb = rt + static_cast<size_t>(b) * R;
        if constexpr (kQat)
          cell_forward_qat(zx + j * Gs, zc + j * Gs, h + b * Hp, c + b * Hp, rb, H, Hp);
        else
          cell_forward(zc + j * Gs, h + b * Hp, c + b * Hp, rb, H, Hp);
      }
    }
    float* ot = out + (static_cast<size_t>(t) * B + b0) * H;
    for (int b = 0; b < nb; ++b) copy_out(ot + b * H, h + b * Hp, H);
  }
}

// ---------------------------------------------------------------------------------------
// Backward

struct BackwardWork {  // one chunk of rows (nb of them)
  Floats dh, dc;  // [nb, Hp] carried gradients
  Floats dzc;     // [B, Gs] dz of the valid rows
  Floats dhc;     // [B, Hp] dz @ W^T of the valid rows (when some rows are invalid)
  Floats hpc;     // [B, Hp] h_prev of the valid rows (when some rows are invalid)
  std::vector<int> rows;
  BackwardWork(const Dims& d, int nb)
      : dh(zeros(static_cast<size_t>(nb) * d.Hp)),
        dc(zeros(static_cast<size_t>(nb) * d.Hp)),
        dzc(zeros(static_cast<size_t>(nb) * d.Gs)),
        dhc(zeros(static_cast<size_t>(nb) * d.Hp)),
        hpc(zeros(static_cast<size_t>(nb) * d.Hp)),
        rows(nb) {}
};

void transpose_kernel(const float* kernel, const Dims& d, float* wt) {
  const int H = d.H, Hp = d.Hp;
  constexpr int kBlock = 16;  // cache-friendly blocks
  for (int k0 = 0; k0 < H; k0 += kBlock)
    for (int j0 = 0; j0 < 4 * H; j0 += kBlock)
      for (int k = k0; k < k0 + kBlock && k < H; ++k)
        for (int j = j0; j < j0 + kBlock && j < 4 * H; ++j)
          wt[static_cast<size_t>(j) * Hp + k] = kernel[k * 4 * H + j];
}

// dz of one gate vector and the carried dc, given dh_total, dc and the residuals.
struct GateGrads {
  vf di, df, dg, d_o, dc_prev;
};

inline GateGrads gate_grads(const float* dh_total, const float* dc, const float* r,
                            const float* c_prev, int j, int Hp) {
  const vf i = load(r + j), f = load(r + Hp + j), g = load(r + 2 * Hp + j);
  const vf o = load(r + 3 * Hp + j), tc = load(r + 5 * Hp + j);
  const vf cp = c_prev ? load(c_prev + j) : vf{};
  const vf dht = load(dh_total + j);
  const vf d_o = dht * tc;
  const vf dct = load(dc + j) + dht * o * (1.0f - tc * tc);
  return {dct * g * i * (1.0f - i), dct * cp * f * (1.0f - f), dct * i * (1.0f - g * g),
          d_o * o * (1.0f - o), dct * f};
}

// QAT residuals (see cell_forward_qat); straight-through every rounding, the activation
// derivatives as jax's: sigmoid' = s * (1 - s), tanh: (d + d * t) * (1 - t).
inline GateGrads gate_grads_qat(const float* dh_total, const float* dc, const float* r,
                                const float* c_prev, int j, int Hp) {
  const vf i = load(r + j), f = load(r + Hp + j), g = load(r + 2 * Hp + j);
  const vf o = load(r + 3 * Hp + j), tc = load(r + 5 * Hp + j);
  const vf si = load(r + 6 * Hp + j), sf = load(r + 7 * Hp + j), tg = load(r + 8 * Hp + j);
  const vf so = load(r + 9 * Hp + j), tcr = load(r + 10 * Hp + j);
  const vf cp = c_prev ? load(c_prev + j) : vf{};
  const vf dht = load(dh_total + j);
  const vf dtc = dht * o;
  const vf dct = load(dc + j) + (dtc + dtc * tcr) * (1.0f - tcr);
  const vf dgi = dct * i;
  return {(dct * g) * (si * (1.0f - si)), (dct * cp) * (sf * (1.0f - sf)),
          (dgi + dgi * tg) * (1.0f - tg), (dht * tc) * (so * (1.0f - so)), dct * f};
}

template <bool kQat>
inline GateGrads grads_of(const float* dh_total, const float* dc, const float* r,
                          const float* c_prev, int j, int Hp) {
  if constexpr (kQat) return gate_grads_qat(dh_total, dc, r, c_prev, j, Hp);
  return gate_grads(dh_total, dc, r, c_prev, j, Hp);
}

// One valid row: writes dz (packed, gate g at [g*H]) to both dz_work and dz_out (storing
// twice is cheaper than reading back partial stores) and replaces dc by dc_prev.
template <bool kQat>
inline void cell_backward(const float* dh_total, float* dc, const float* r, const float* c_prev,
                          float* dz_work, float* dz_out, int H, int Hp) {
  int j = 0;
  for (; j + kVW <= H; j += kVW) {
    const GateGrads q = grads_of<kQat>(dh_total, dc, r, c_prev, j, Hp);
    const vf grads[4] = {q.di, q.df, q.dg, q.d_o};
    for (int g = 0; g < 4; ++g) {
      store(dz_work + g * H + j, grads[g]);
      store(dz_out + g * H + j, grads[g]);
    }
    store(dc + j, q.dc_prev);
  }
  if (j < H) {  // padding lanes come out zero; they must not overwrite the next gate
    const GateGrads q = grads_of<kQat>(dh_total, dc, r, c_prev, j, Hp);
    const vf grads[4] = {q.di, q.df, q.dg, q.d_o};
    for (int g = 0; g < 4; ++g) {
      store_partial(dz_work + g * H + j, grads[g], H - j);
      store_partial(dz_out + g * H + j, grads[g], H - j);
    }
    store(dc + j, q.dc_prev);
  }
}

// The backward of rows b0 .. b0 + nb of one instance (wt: transpose_kernel's layout);
// adds the chunk's kernel gradient sum over t and its rows of h_prev^T dz to dw [H, Gs]
// (zero on entry).
template <bool kQat>
void backward_rows(const float* dy, const float* res, const float* wt, const bool* valid,
                   const float* out, float* dz, float* dw, const Dims& d, int b0, int nb,
                   BackwardWork& work) {
  const int T = d.T, B = d.B, H = d.H, Hp = d.Hp, Gs = d.Gs, R = slots(kQat) * Hp;
  float *dh = work.dh.get(), *dc = work.dc.get();
  float *dzc = work.dzc.get(), *dhc = work.dhc.get(), *hpc = work.hpc.get();
  for (int t = T - 1; t >= 0; --t) {
    const float* dyt = dy + (static_cast<size_t>(t) * B + b0) * H;
    const float* rt = res + (static_cast<size_t>(t) * B + b0) * R;
    float* dzt = dz + (static_cast<size_t>(t) * B + b0) * 4 * H;
    const bool* vt = valid + static_cast<size_t>(t) * B + b0;
    for (int b = 0; b < nb; ++b) {  // dh_total = dh + dy (it is dh_prev at invalid steps)
      float* dhb = dh + b * Hp;
      int j = 0;
      for (; j + kVW <= H; j += kVW) store(dhb + j, load(dhb + j) + load(dyt + b * H + j));
      if (j < H) store(dhb + j, load(dhb + j) + load_partial(dyt + b * H + j, H - j));
    }
    int n = 0;
    for (int b = 0; b < nb; ++b) {
      if (vt[b]) {
        const float* c_prev = t > 0 ? rt - static_cast<size_t>(B) * R + b * R + 4 * Hp : nullptr;
        cell_backward<kQat>(dh + b * Hp, dc + b * Hp, rt + static_cast<size_t>(b) * R, c_prev,
                      dzc + n * Gs, dzt + b * 4 * H, H, Hp);
        work.rows[n++] = b;
      } else {
        std::memset(dzt + b * 4 * H, 0, 4 * H * sizeof(float));
      }
    }
    if (n == 0) continue;
    const bool all = n == nb;
    // dh_prev = dz @ W^T (written in place when every row is valid: dh_total is used up)
    gemm<false>({dzc, Gs, 1, 4 * H, wt, Hp, all ? dh : dhc, Hp, Hp / kVW}, n);
    if (!all)
      for (int j = 0; j < n; ++j) copy_vectors(dh + work.rows[j] * Hp, dhc + j * Hp, Hp);
    if (t == 0) continue;  // h_prev = 0
    // dW[k, :] += sum over valid rows r of h_prev[r, k] * dz[r, :]
    const float* ht = out + (static_cast<size_t>(t - 1) * B + b0) * H;
    if (all) {
      gemm<true>({ht, 1, H, n, dzc, Gs, dw, Gs, Gs / kVW}, H);
    } else {
      for (int j = 0; j < n; ++j) copy_in(hpc + j * Hp, ht + work.rows[j] * H, H);
      gemm<true>({hpc, 1, Hp, n, dzc, Gs, dw, Gs, Gs / kVW}, H);
    }
  }
}

// The leading instances, T and B of a [..., T, B, X] sequence buffer (`what` names it in
// the error), then the checks of the kernel and mask shapes against them.
ffi::Error sequence_dims(ffi::Span<const int64_t> shape, const std::string& what,
                         ffi::Span<const int64_t> kd, ffi::Span<const int64_t> vd, Dims& d) {
  if (shape.size() < 3)
    return ffi::Error::InvalidArgument(what + " must be [..., T, B, X], got " + shape_text(shape));
  d.instances = leading(shape, 3);
  d.T = static_cast<int>(shape[shape.size() - 3]);
  d.B = static_cast<int>(shape[shape.size() - 2]);
  return check_common(kd, vd, d);
}

// Rows per chunk: the batch is cut into chunks of this many rows (fixed, so results do not
// depend on the thread count), run in parallel on XLA's intra-op thread pool.
constexpr int kChunkRows = 16;

inline int chunk_count(int B) { return (B + kChunkRows - 1) / kChunkRows; }

// Runs task(0 .. total-1) on the calling thread and up to threads-1 tasks scheduled on the
// pool, each task taken once from a shared counter. The caller takes whatever the pool has
// not started, so a busy (or missing) pool only means fewer helpers, never a deadlock; it
// waits only for tasks already running elsewhere. Returns false if any task threw
// std::bad_alloc.
template <typename Task>
bool run_tasks(ffi::ThreadPool& pool, int total, const Task& task) {
  struct Shared {
    std::atomic<int> next{0}, done{0};
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::condition_variable finished;
    int total = 0;
    const Task* task = nullptr;
  };
  auto shared = std::make_shared<Shared>();
  shared->total = total;
  shared->task = &task;
  auto work = [shared] {  // holds the shared state alive: a late helper finds nothing to do
    for (int i; (i = shared->next.fetch_add(1)) < shared->total;) {
      try {
        (*shared->task)(i);
      } catch (const std::bad_alloc&) {
        shared->failed = true;
      }
      if (shared->done.fetch_add(1) + 1 == shared->total) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  const int helpers = static_cast<int>(std::min<int64_t>(pool.num_threads(), total) - 1);
  for (int i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));  // a copy each
  work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == shared->total; });
  return !shared->failed;
}

template <bool kQat>
ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z,
                           ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::PRED> valid,
                           ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> res) {
  const auto zd = z.dimensions();
  Dims d;
  ffi::Error error = sequence_dims(zd, "z_input", kernel.dimensions(), valid.dimensions(), d);
  if (error.failure()) return error;
  if (zd[zd.size() - 1] != 4 * d.H)
    return ffi::Error::InvalidArgument("z_input's last dim must be 4H, got " + shape_text(zd));
  const int R = slots(kQat) * d.Hp;
  if (res->element_count() != static_cast<size_t>(d.instances) * d.T * d.B * R)
    return ffi::Error::InvalidArgument("residuals must be [..., T, B, " +
                                       std::to_string(slots(kQat)) + "*Hp]");
  if (d.instances == 0 || d.T == 0 || d.B == 0) return ffi::Error::Success();
  const char* oom = kQat ? "LstmqLstmQatForward: out of memory" : "LstmqLstmForward: out of memory";
  try {
    const size_t tb = static_cast<size_t>(d.T) * d.B, w_size = static_cast<size_t>(d.H) * d.Gs;
    Floats weights = zeros(d.instances * w_size);
    for (int64_t n = 0; n < d.instances; ++n)
      pad_kernel(kernel.typed_data() + n * static_cast<size_t>(d.H) * 4 * d.H, d,
                 weights.get() + n * w_size);
    const int chunks = chunk_count(d.B);
    auto task = [&](int i) {
      const int64_t n = i / chunks;
      const int b0 = (i % chunks) * kChunkRows, nb = std::min(kChunkRows, d.B - b0);
      ForwardWork work(d, nb);
      forward_rows<kQat>(z.typed_data() + n * tb * 4 * d.H, weights.get() + n * w_size,
                         valid.typed_data() + n * tb, out->typed_data() + n * tb * d.H,
                         res->typed_data() + n * tb * R, d, b0, nb, work);
    };
    if (!run_tasks(pool, static_cast<int>(d.instances * chunks), task))
      return ffi::Error::Internal(oom);
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal(oom);
  }
  return ffi::Error::Success();
}

template <bool kQat>
ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                            ffi::Buffer<ffi::F32> res, ffi::Buffer<ffi::F32> kernel,
                            ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::F32> out,
                            ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> d_kernel) {
  const auto yd = dy.dimensions();
  Dims d;
  ffi::Error error = sequence_dims(yd, "d_outputs", kernel.dimensions(), valid.dimensions(), d);
  if (error.failure()) return error;
  const size_t tb = static_cast<size_t>(d.T) * d.B;
  if (yd[yd.size() - 1] != d.H)
    return ffi::Error::InvalidArgument("d_outputs' last dim must be H, got " + shape_text(yd));
  const int R = slots(kQat) * d.Hp;
  if (res.element_count() != d.instances * tb * R)
    return ffi::Error::InvalidArgument("residuals must be [..., T, B, " +
                                       std::to_string(slots(kQat)) + "*Hp]");
  if (out.element_count() != d.instances * tb * d.H)
    return ffi::Error::InvalidArgument("outputs must be [..., T, B, H]");
  if (dz->element_count() != d.instances * tb * 4 * d.H)
    return ffi::Error::InvalidArgument("dz must be [..., T, B, 4H]");
  const size_t kernel_size = static_cast<size_t>(d.H) * 4 * d.H;
  if (d_kernel->element_count() != d.instances * kernel_size)
    return ffi::Error::InvalidArgument("d_kernel must be [..., H, 4H]");
  if (d.instances > 0 && (d.T == 0 || d.B == 0))
    std::memset(d_kernel->typed_data(), 0, d.instances * kernel_size * sizeof(float));
  if (d.instances == 0 || d.T == 0 || d.B == 0) return ffi::Error::Success();
  const char* oom =
      kQat ? "LstmqLstmQatBackward: out of memory" : "LstmqLstmBackward: out of memory";
  try {
    const size_t wt_size = static_cast<size_t>(4) * d.H * d.Hp;
    const size_t dw_size = static_cast<size_t>(d.H) * d.Gs;
    const int chunks = chunk_count(d.B);
    Floats transposed = zeros(d.instances * wt_size);
    Floats partial = zeros(d.instances * chunks * dw_size);  // each chunk's kernel gradient
    for (int64_t n = 0; n < d.instances; ++n)
      transpose_kernel(kernel.typed_data() + n * kernel_size, d, transposed.get() + n * wt_size);
    auto task = [&](int i) {
      const int64_t n = i / chunks;
      const int b0 = (i % chunks) * kChunkRows, nb = std::min(kChunkRows, d.B - b0);
      BackwardWork work(d, nb);
      backward_rows<kQat>(dy.typed_data() + n * tb * d.H, res.typed_data() + n * tb * R,
                          transposed.get() + n * wt_size, valid.typed_data() + n * tb,
                          out.typed_data() + n * tb * d.H, dz->typed_data() + n * tb * 4 * d.H,
                          partial.get() + static_cast<size_t>(i) * dw_size, d, b0, nb, work);
    };
    if (!run_tasks(pool, static_cast<int>(d.instances * chunks), task))
      return ffi::Error::Internal(oom);
    for (int64_t n = 0; n < d.instances; ++n) {  // chunks summed in order: thread-count free
      float* dw = partial.get() + n * chunks * dw_size;
      for (int ch = 1; ch < chunks; ++ch) {
        const float* other = dw + static_cast<size_t>(ch) * dw_size;
        for (size_t j = 0; j < dw_size; j += kVW) store(dw + j, load(dw + j) + load(other + j));
      }
      for (int k = 0; k < d.H; ++k)
        copy_out(d_kernel->typed_data() + n * kernel_size + k * 4 * d.H,
                 dw + static_cast<size_t>(k) * d.Gs, 4 * d.H);
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal(oom);
  }
  return ffi::Error::Success();
}

}  // namespace

// The handlers' signatures (the float and QAT kernels take the same buffers).
static auto ForwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()          // XLA's intra-op pool: chunks of rows in parallel
      .Arg<ffi::Buffer<ffi::F32>>()    // z_input
      .Arg<ffi::Buffer<ffi::F32>>()    // kernel (QAT: fake-quantized)
      .Arg<ffi::Buffer<ffi::PRED>>()   // valid
      .Ret<ffi::Buffer<ffi::F32>>()    // hidden states
      .Ret<ffi::Buffer<ffi::F32>>();   // residuals
}

static auto BackwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()    // d_outputs
      .Arg<ffi::Buffer<ffi::F32>>()    // residuals
      .Arg<ffi::Buffer<ffi::F32>>()    // kernel
      .Arg<ffi::Buffer<ffi::PRED>>()   // valid
      .Arg<ffi::Buffer<ffi::F32>>()    // the forward's hidden states
      .Ret<ffi::Buffer<ffi::F32>>()    // dz
      .Ret<ffi::Buffer<ffi::F32>>();   // d_kernel
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmqLstmForward, LstmForwardImpl<false>, ForwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmqLstmBackward, LstmBackwardImpl<false>, BackwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmqLstmQatForward, LstmForwardImpl<true>, ForwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmqLstmQatBackward, LstmBackwardImpl<true>, BackwardBinding());

extern "C" int lstmq_lstm_padding() { return kVW; }
