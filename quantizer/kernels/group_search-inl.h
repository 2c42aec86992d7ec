// Per-target error-minimising group scale search (re-included once per Highway target): the
// SIMD form of quantizer/search.cc's scalar reference, byte-identical to it on every target.
//
// The reference evaluates candidate f16 scales one after another: quantize the group to the
// nearest codes, weighted squared error in double (summed in element order), a least-squares
// refit of the scale (double sums, element order) and, depending on the best error so far,
// the refit scale too. Every one of those numbers depends only on the group and the scale h,
// not on the order of the candidates. So here the candidate scales are the SIMD lanes: one pass
// over the group's elements computes, for up to 2 * Lanes(double) scales at once, the error and
// the refit sums, each lane summing in the reference's element order with the reference's
// operations (float quantize and difference, double products and sums; this TU is built with
// -ffp-contract=off so no FMA changes a rounding). The results go into a per-group memo keyed
// by h; the reference's sequence of decisions (which candidate is best, whether a refit is
// tried, the coarse-to-fine grid, the polish) is then replayed over the memo, evaluating any
// scale the prefetched batches missed on demand. The batches are speculative (they also
// evaluate refits the replay may skip), which costs lanes, not results.
#if defined(TESSERA_KERNELS_GROUP_SEARCH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TESSERA_KERNELS_GROUP_SEARCH_INL_H_
#undef TESSERA_KERNELS_GROUP_SEARCH_INL_H_
#else
#define TESSERA_KERNELS_GROUP_SEARCH_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "hwy/highway.h"
#include "quantizer/kernels/ref.h"

HWY_BEFORE_NAMESPACE();
namespace tessera::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace gsearch {

constexpr size_t kMaxGroup = 128;
// Distinct scales one group can need: RTN + 15 coarse + 12 fine candidates, their refits, the
// polish (<= 4) and on-demand misses: < 100. A full memo falls back to evaluating in place.
constexpr size_t kMemo = 128;

// f16 of a scale; -0 / underflow -> 0 (search.cc's ScaleBits).
HWY_INLINE uint16_t ScaleBits(float s) {
  const uint16_t h = tessera::F32ToF16(s);
  return tessera::F16ToF32(h) == 0.0f ? uint16_t{0} : h;
}

// search.cc's RoundClamp.
HWY_INLINE int RoundClamp(float v, float lo, float hi) {
  v = std::min(std::max(v, lo), hi);
  constexpr float kMagic = 12582912.0f;
  return static_cast<int>((v + kMagic) - kMagic);
}

// f16 bits of v with ScaleBits' rule (+-0 -> 0), and the f32 value of f16 bits, per lane.
// F16C (AVX2 and up) converts with round-to-nearest-even, exactly as core/half.h; Highway's
// portable fallbacks (SCALAR, EMU128) truncate, so those targets use core/half.h lane by lane.
template <class DF>
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, DF>> ScaleBitsV(DF df, hn::Vec<DF> v) {
  const hn::Rebind<uint16_t, DF> du16;
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  static_assert(sizeof(hn::TFromD<DF>) == 4, "f32 lanes");
  constexpr size_t kMax = 16 / sizeof(float);  // at most 4 lanes on these targets
  float in[kMax];
  uint16_t out[kMax];
  hn::StoreU(v, df, in);
  for (size_t i = 0; i < hn::Lanes(df); ++i) out[i] = ScaleBits(in[i]);
  return hn::LoadU(du16, out);
#else
  (void)df;
  const hn::Rebind<hwy::float16_t, DF> df16;
  const auto h = hn::BitCast(du16, hn::DemoteTo(df16, v));
  return hn::IfThenZeroElse(hn::Eq(hn::And(h, hn::Set(du16, 0x7FFF)), hn::Zero(du16)), h);
#endif
}
template <class DF>
HWY_INLINE hn::Vec<DF> F16ValueV(DF df, hn::Vec<hn::Rebind<uint16_t, DF>> h) {
#if HWY_TARGET == HWY_SCALAR
  return hn::Set(df, tessera::F16ToF32(hn::GetLane(h)));
#else
  const hn::Rebind<hwy::float16_t, DF> df16;
  return hn::PromoteTo(df, hn::BitCast(df16, h));
#endif
}

struct SymMemo {
  size_t n;
  uint16_t h[kMemo];
  uint16_t refit[kMemo];  // the least-squares refit's f16 scale of h's codes; 0: no refit
  double err[kMemo];
  // Index of h: every scale a group needs lies near its RTN scale, of either sign, so a
  // direct-mapped window of kWin f16 codes per sign around |RTN| (memo index + 1, 0 = empty)
  // finds it without hashing; the rare scale outside the window is searched linearly.
  static constexpr uint32_t kWin = 1024;
  static constexpr uint8_t kPending = 255;  // queued in a Prefetch batch (never seen by Find)
  static_assert(kMemo < kPending, "memo indices + 1 fit below kPending");
  uint32_t center;
  uint8_t slot[2 * kWin];

  HWY_INLINE void Clear(uint16_t h_center) {
    n = 0;
    center = h_center & 0x7FFFu;
    memset(slot, 0, sizeof(slot));
  }
  HWY_INLINE uint32_t Slot(uint16_t v) const {  // >= 2 * kWin: outside the window
    const uint32_t off = (v & 0x7FFFu) + kWin / 2 - center;
    return off < kWin ? off + (v >> 15) * kWin : 2 * kWin;
  }
  HWY_INLINE int Find(uint16_t v) const {
    const uint32_t p = Slot(v);
    if (p < 2 * kWin) return static_cast<int>(slot[p]) - 1;
    for (size_t i = 0; i < n; ++i)
      if (h[i] == v) return static_cast<int>(i);
    return -1;
  }
  // Appends (n < kMemo, v not present).
  HWY_INLINE void Add(uint16_t v, uint16_t r, double e) {
    h[n] = v;
    refit[n] = r;
    err[n] = e;
    ++n;
    const uint32_t p = Slot(v);
    if (p < 2 * kWin) slot[p] = static_cast<uint8_t>(n);
  }
};

// Accumulates, for K vectors of candidate scales (d, inv = 1 / d), the reference's sums over
// the group's elements in element order: err = sum w (x - l d)^2, sxl = sum w x l and
// sll = sum w l^2 (double). kUnit (every w_i = 1): the products by w are exact no-ops and are
// skipped, and sll is summed in float, exact there (|l| <= 32, G <= 128: < 2^24).
template <bool kUnit, size_t K, class DD>
HWY_INLINE void EvalLanes(DD dd, const float* HWY_RESTRICT x, const double* HWY_RESTRICT wd,
                          const double* HWY_RESTRICT wx, size_t G, int H, const hn::Vec<hn::Rebind<float, DD>>* d,
                          hn::Vec<DD>* e, hn::Vec<DD>* sx, hn::Vec<DD>* sl) {
  static_assert(K == 1 || K == 2, "one or two vectors of scales");
  const hn::Rebind<float, DD> df;
  const auto lo = hn::Set(df, static_cast<float>(-H));
  const auto hi = hn::Set(df, static_cast<float>(H - 1));
  const auto magic = hn::Set(df, 12582912.0f);
  // Named accumulators (not arrays) so that they stay in registers.
  const auto d0 = d[0], d1 = d[K - 1];
  const auto inv0 = hn::Div(hn::Set(df, 1.0f), d0), inv1 = hn::Div(hn::Set(df, 1.0f), d1);
  auto e0 = hn::Zero(dd), e1 = hn::Zero(dd), sx0 = hn::Zero(dd), sx1 = hn::Zero(dd);
  auto sl0 = hn::Zero(dd), sl1 = hn::Zero(dd);
  auto sf0 = hn::Zero(df), sf1 = hn::Zero(df);
  for (size_t i = 0; i < G; ++i) {
    const auto xi = hn::Set(df, x[i]);
    const auto wxi = hn::Set(dd, wx[i]);
    const auto r0 = hn::Sub(hn::Add(hn::Min(hn::Max(hn::Mul(xi, inv0), lo), hi), magic), magic);
    const auto f0 = hn::PromoteTo(dd, hn::Sub(xi, hn::Mul(r0, d0)));
    if constexpr (kUnit) {
      e0 = hn::Add(e0, hn::Mul(f0, f0));
      sx0 = hn::Add(sx0, hn::Mul(wxi, hn::PromoteTo(dd, r0)));
      sf0 = hn::Add(sf0, hn::Mul(r0, r0));
    } else {
      const auto wi = hn::Set(dd, wd[i]);
      const auto l0 = hn::PromoteTo(dd, r0);
      e0 = hn::Add(e0, hn::Mul(hn::Mul(wi, f0), f0));
      sx0 = hn::Add(sx0, hn::Mul(wxi, l0));
      sl0 = hn::Add(sl0, hn::Mul(hn::Mul(wi, l0), l0));
    }
    if constexpr (K == 2) {
      const auto r1 = hn::Sub(hn::Add(hn::Min(hn::Max(hn::Mul(xi, inv1), lo), hi), magic), magic);
      const auto f1 = hn::PromoteTo(dd, hn::Sub(xi, hn::Mul(r1, d1)));
      if constexpr (kUnit) {
        e1 = hn::Add(e1, hn::Mul(f1, f1));
        sx1 = hn::Add(sx1, hn::Mul(wxi, hn::PromoteTo(dd, r1)));
        sf1 = hn::Add(sf1, hn::Mul(r1, r1));
      } else {
        const auto wi = hn::Set(dd, wd[i]);
        const auto l1 = hn::PromoteTo(dd, r1);
        e1 = hn::Add(e1, hn::Mul(hn::Mul(wi, f1), f1));
        sx1 = hn::Add(sx1, hn::Mul(wxi, l1));
        sl1 = hn::Add(sl1, hn::Mul(hn::Mul(wi, l1), l1));
      }
    }
  }
  if constexpr (kUnit) {
    sl0 = hn::PromoteTo(dd, sf0);
    sl1 = hn::PromoteTo(dd, sf1);
  }
  e[0] = e0;
  sx[0] = sx0;
  sl[0] = sl0;
  if constexpr (K == 2) {
    e[1] = e1;
    sx[1] = sx1;
    sl[1] = sl1;
  }
}

// Evaluates the scales hs[0, nc) (nonzero) of one group: error and refit, appended to the
// memo. wd[i] = double(w_i), wx[i] = double(w_i) * double(x_i).
template <bool kUnit, class DD>
HWY_INLINE void EvalSymBatch(DD dd, const float* HWY_RESTRICT x, const double* HWY_RESTRICT wd,
                             const double* HWY_RESTRICT wx, size_t G, int H, const uint16_t* hs, size_t nc,
                             SymMemo* memo) {
  const hn::Rebind<float, DD> df;
  const hn::Rebind<uint16_t, DD> du16;
  const size_t N = hn::Lanes(dd);
  HWY_ALIGN uint16_t hv[2 * hn::MaxLanes(dd)], rv[2 * hn::MaxLanes(dd)];
  HWY_ALIGN double ev[2 * hn::MaxLanes(dd)];
  for (size_t c0 = 0; c0 < nc;) {
    // Two vectors of scales at a time (independent add chains), one for a short remainder.
    const size_t K = nc - c0 > N ? 2 : 1;
    const size_t cn = std::min(nc - c0, K * N);
    for (size_t j = 0; j < K * N; ++j) hv[j] = hs[c0 + (j < cn ? j : 0)];  // pad with a valid scale
    hn::Vec<decltype(df)> d[2];
    hn::Vec<DD> e[2], sx[2], sl[2];
    for (size_t k = 0; k < K; ++k) d[k] = F16ValueV(df, hn::Load(du16, hv + k * N));
    if (K == 2) {
      EvalLanes<kUnit, 2>(dd, x, wd, wx, G, H, d, e, sx, sl);
    } else {
      EvalLanes<kUnit, 1>(dd, x, wd, wx, G, H, d, e, sx, sl);
    }
    // The refit scale: f16 of float(sxl / sll) where sll > 0, else none (0: float 0 -> f16 0).
    const auto zero = hn::Zero(dd);
    for (size_t k = 0; k < K; ++k) {
      hn::Store(e[k], dd, ev + k * N);
      const auto q = hn::DemoteTo(df, hn::IfThenElse(hn::Gt(sl[k], zero), hn::Div(sx[k], sl[k]), zero));
      hn::Store(ScaleBitsV(df, q), du16, rv + k * N);
    }
    for (size_t j = 0; j < cn && memo->n < kMemo; ++j) memo->Add(hv[j], rv[j], ev[j]);
    c0 += cn;
  }
}

struct SymSearch {
  const float* x;
  const double* wd;
  const double* wx;
  size_t G;
  int H;
  bool unit;  // every weight is 1
  SymMemo memo;

  template <class DD>
  HWY_INLINE void Eval(DD dd, const uint16_t* hs, size_t n) {
    if (unit) {
      EvalSymBatch<true>(dd, x, wd, wx, G, H, hs, n, &memo);
    } else {
      EvalSymBatch<false>(dd, x, wd, wx, G, H, hs, n, &memo);
    }
  }

  // Memo index of h (nonzero), evaluating it if needed (a full memo starts over: results
  // are pure functions of h, so forgetting costs time only).
  template <class DD>
  HWY_INLINE size_t Get(DD dd, uint16_t h) {
    const int i = memo.Find(h);
    if (i >= 0) return static_cast<size_t>(i);
    if (memo.n == kMemo) memo.Clear(static_cast<uint16_t>(memo.center));
    Eval(dd, &h, 1);
    return memo.n - 1;
  }
  // Evaluates the distinct nonzero scales of hs[0, n) not in the memo yet, in one batch.
  template <class DD>
  HWY_INLINE void Prefetch(DD dd, const uint16_t* hs, size_t n) {
    uint16_t todo[kMemo];
    size_t nt = 0;
    for (size_t i = 0; i < n && memo.n + nt < kMemo; ++i) {
      const uint16_t h = hs[i];
      if (h == 0) continue;
      const uint32_t p = memo.Slot(h);
      if (p < 2 * SymMemo::kWin) {  // in the window: present, or already queued (kPending)
        if (memo.slot[p] != 0) continue;
        memo.slot[p] = SymMemo::kPending;  // Add (in Eval) overwrites it with the index
      } else if (memo.Find(h) >= 0 || std::find(todo, todo + nt, h) != todo + nt) {
        continue;
      }
      todo[nt++] = h;
    }
    if (nt) Eval(dd, todo, nt);
  }
};

// One symmetric group (search.cc's SearchGroupSymLevels): the chosen f16 scale and the signed
// levels l in [-H, H - 1].
template <class DD>
HWY_INLINE void SearchGroupSymT(DD dd, const float* HWY_RESTRICT x, const float* HWY_RESTRICT w, size_t G, int H,
                                int* HWY_RESTRICT l, uint16_t* HWY_RESTRICT scale) {
  HWY_ALIGN double wd[kMaxGroup], wx[kMaxGroup];
  float vmax = -INFINITY, amax = 0.0f;
  bool unit = true;
  for (size_t i = 0; i < G; ++i) {
    vmax = std::max(vmax, x[i]);
    amax = std::max(amax, std::fabs(x[i]));
    unit = unit && (!w || w[i] == 1.0f);
    const double wi = w ? static_cast<double>(w[i]) : 1.0;
    wd[i] = wi;
    wx[i] = wi * static_cast<double>(x[i]);
  }
  const float m = (vmax >= amax) ? amax : -amax;
  const float fh = static_cast<float>(H);
  const uint16_t h_rtn = ScaleBits(m / -fh);
  uint16_t best_h = h_rtn;
  if (amax > 0.0f && h_rtn != 0) {
    SymSearch s;  // not value-initialised: the memo's arrays are written before they are read
    s.x = x;
    s.wd = wd;
    s.wx = wx;
    s.G = G;
    s.H = H;
    s.unit = unit;
    s.memo.Clear(h_rtn);
    // The candidate grid (search.cc): extreme mapped to -(H + t) and +(H - 1 + t), t in steps
    // of H / 64; coarse every 4th step, then the fine steps within 3 of each side's best.
    // Side 1: k in [-12, 16], side 2: k in [-8, 16]; c1 / c2 hold every step's f16 scale.
    constexpr int kLo1 = -12, kHi1 = 16, kLo2 = -8, kHi2 = 16;
    const float step = fh / 64.0f;
    // Every step's f16 scale of both sides, m / (sign * (base + step * k)) in float lanes.
    const hn::Rebind<float, DD> df;
    const hn::Rebind<uint16_t, DD> du16;
    const size_t NF = hn::Lanes(df);
    constexpr size_t kN1 = kHi1 - kLo1 + 1, kN2 = kHi2 - kLo2 + 1, kPad = 2 * hn::MaxLanes(dd);
    HWY_ALIGN uint16_t c1[kN1 + kPad], c2[kN2 + kPad];
    auto grid = [&](uint16_t* c, size_t n, int lo, float base, float sign) HWY_ATTR {
      for (size_t i = 0; i < n; i += NF) {
        const auto k = hn::Iota(df, static_cast<float>(lo) + static_cast<float>(i));
        const auto den = hn::Mul(hn::Set(df, sign), hn::Add(hn::Set(df, base), hn::Mul(hn::Set(df, step), k)));
        hn::Store(ScaleBitsV(df, hn::Div(hn::Set(df, m), den)), du16, c + i);
      }
    };
    grid(c1, kN1, kLo1, fh, -1.0f);
    grid(c2, kN2, kLo2, fh - 1.0f, 1.0f);
    auto cand = [&](int sidx, int k) -> uint16_t { return sidx == 1 ? c1[k - kLo1] : c2[k - kLo2]; };
    // The candidates in the reference's order: side 1 coarse, side 1 fine, side 2 coarse,
    // side 2 fine; each with its error e0 and refit r once evaluated.
    struct Cand {
      uint16_t h, r;
      double e0;
    };
    Cand seq[32];
    size_t ns = 0;
    uint16_t batch[kMemo];
    size_t nb = 0;
    batch[nb++] = h_rtn;
    for (int k = kLo1; k <= kHi1; k += 4) batch[nb++] = cand(1, k);
    for (int k = kLo2; k <= kHi2; k += 4) batch[nb++] = cand(2, k);
    s.Prefetch(dd, batch, nb);
    auto fill = [&](Cand* c) {  // e0 = INFINITY for h = 0 (the reference skips it)
      if (c->h == 0) {
        c->e0 = INFINITY;
        c->r = 0;
      } else {
        const size_t i = s.Get(dd, c->h);
        c->e0 = s.memo.err[i];
        c->r = s.memo.refit[i];
      }
    };
    // Each side's best coarse candidate by its own (pre-refit) error, as the reference.
    Cand co1[8], co2[7];
    auto coarse = [&](Cand* co, int sidx, int lo, int hi) {
      int kbest = lo;
      double ebest = INFINITY;
      for (int k = lo, j = 0; k <= hi; k += 4, ++j) {
        co[j].h = cand(sidx, k);
        fill(&co[j]);
        if (co[j].e0 < ebest) ebest = co[j].e0, kbest = k;
      }
      return kbest;
    };
    const int kb1 = coarse(co1, 1, kLo1, kHi1);
    const int kb2 = coarse(co2, 2, kLo2, kHi2);
    Cand fi1[6], fi2[6];
    size_t nf1 = 0, nf2 = 0;
    for (int k = std::max(kLo1, kb1 - 3); k <= std::min(kHi1, kb1 + 3); ++k)
      if ((k - kLo1) % 4 != 0) fi1[nf1++].h = cand(1, k);
    for (int k = std::max(kLo2, kb2 - 3); k <= std::min(kHi2, kb2 + 3); ++k)
      if ((k - kLo2) % 4 != 0) fi2[nf2++].h = cand(2, k);
    // The replay (below) tries a candidate's refit only if its e0 <= 1.5 * the best error so
    // far, which is at most the smallest e0 considered so far: refits failing that bound are
    // never needed and are not prefetched. Second batch: the fine candidates and the refits of
    // RTN and of the coarse candidates that can need one (bound over RTN and the coarse ones,
    // a superset).
    size_t n2 = 0;
    for (size_t j = 0; j < nf1; ++j) batch[n2++] = fi1[j].h;
    for (size_t j = 0; j < nf2; ++j) batch[n2++] = fi2[j].h;
    const size_t i_rtn = s.Get(dd, h_rtn);
    const double e_rtn = s.memo.err[i_rtn];
    batch[n2++] = s.memo.refit[i_rtn];
    double run = e_rtn;
    for (const Cand& c : co1) {
      run = std::min(run, c.e0);
      if (c.h != 0 && c.e0 <= 1.5 * run) batch[n2++] = c.r;
    }
    for (const Cand& c : co2) {
      run = std::min(run, c.e0);
      if (c.h != 0 && c.e0 <= 1.5 * run) batch[n2++] = c.r;
    }
    s.Prefetch(dd, batch, n2);
    for (size_t j = 0; j < nf1; ++j) fill(&fi1[j]);
    for (size_t j = 0; j < nf2; ++j) fill(&fi2[j]);
    for (const Cand& c : co1) seq[ns++] = c;
    for (size_t j = 0; j < nf1; ++j) seq[ns++] = fi1[j];
    for (const Cand& c : co2) seq[ns++] = c;
    for (size_t j = 0; j < nf2; ++j) seq[ns++] = fi2[j];
    // Third batch: the refits the fine candidates can need (bound in the exact order).
    size_t n3 = 0;
    run = e_rtn;
    for (size_t j = 0; j < ns; ++j) {
      run = std::min(run, seq[j].e0);
      const bool fine = (j >= 8 && j < 8 + nf1) || j >= 15 + nf1;
      if (fine && seq[j].h != 0 && seq[j].e0 <= 1.5 * run) batch[n3++] = seq[j].r;
    }
    s.Prefetch(dd, batch, n3);

    // Replay the reference's decisions.
    double best_err = e_rtn;
    for (size_t j = 0; j < ns; ++j) {
      const Cand& c = seq[j];
      if (c.h == 0) continue;
      if (c.e0 < best_err) best_err = c.e0, best_h = c.h;
      if (c.e0 <= 1.5 * best_err && c.r != 0 && c.r != c.h) {
        const double e2 = s.memo.err[s.Get(dd, c.r)];
        if (e2 < best_err) best_err = e2, best_h = c.r;
      }
    }
    // Polish: codes <-> least-squares scale while it improves.
    for (int it = 0; it < 4; ++it) {
      const uint16_t r = s.memo.refit[s.Get(dd, best_h)];
      if (r == 0 || r == best_h) break;
      const double e = s.memo.err[s.Get(dd, r)];
      if (!(e < best_err)) break;
      best_err = e;
      best_h = r;
    }
  }
  *scale = best_h;
  if (l == nullptr) return;  // the caller computes the codes
  const float d = tessera::F16ToF32(best_h);
  if (d == 0.0f) {
    for (size_t i = 0; i < G; ++i) l[i] = 0;
    return;
  }
  const float inv = 1.0f / d;
  for (size_t i = 0; i < G; ++i) l[i] = RoundClamp(x[i] * inv, -fh, fh - 1.0f);
}

}  // namespace gsearch

HWY_MAYBE_UNUSED static void SearchGroupSym(const float* HWY_RESTRICT x, const float* HWY_RESTRICT w, size_t group,
                                            int half_levels, int* HWY_RESTRICT q, uint16_t* HWY_RESTRICT scale) {
  const hn::ScalableTag<double> dd;
  gsearch::SearchGroupSymT(dd, x, w, group, half_levels, q, scale);
}

HWY_MAYBE_UNUSED static void QuantizeRowI4SymSearch(const float* HWY_RESTRICT x, const float* HWY_RESTRICT w,
                                                    size_t n, size_t group, uint8_t* HWY_RESTRICT codes,
                                                    uint16_t* HWY_RESTRICT scales) {
  const hn::ScalableTag<double> dd;
  // The nibbles of the chosen scale in float lanes: the reference's RoundClamp(x / d) + 8,
  // packed as kernels.h's layout (element j low, j + group / 2 high).
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t N = hn::Lanes(df), half = group / 2;
  const auto lo = hn::Set(df, -8.0f), hi = hn::Set(df, 7.0f), magic = hn::Set(df, 12582912.0f);
  const auto eight = hn::Set(di, 8);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    gsearch::SearchGroupSymT(dd, xg, w ? w + g * group : nullptr, group, 8, nullptr, scales + g);
    uint8_t* cg = codes + g * half;
    const float d = tessera::F16ToF32(scales[g]);
    if (d == 0.0f) {
      memset(cg, 0x88, half);
      continue;
    }
    const auto inv = hn::Set(df, 1.0f / d);
    auto code = [&](const float* p) HWY_ATTR {
      const auto v = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, p), inv), lo), hi);
      return hn::Add(hn::Sub(hn::BitCast(di, hn::Add(v, magic)), hn::BitCast(di, magic)), eight);
    };
    for (size_t j = 0; j < half; j += N)
      hn::StoreU(hn::DemoteTo(du8, hn::Or(code(xg + j), hn::ShiftLeft<4>(code(xg + j + half)))), du8, cg + j);
  }
}

HWY_MAYBE_UNUSED static void QuantizeRowI6SymSearch(const float* HWY_RESTRICT x, const float* HWY_RESTRICT w,
                                                    size_t n, size_t group, uint8_t* HWY_RESTRICT codes,
                                                    uint16_t* HWY_RESTRICT scales) {
  const hn::ScalableTag<double> dd;
  int l[gsearch::kMaxGroup];
  for (size_t g = 0; g < n / group; ++g) {
    gsearch::SearchGroupSymT(dd, x + g * group, w ? w + g * group : nullptr, group, 32, l, scales + g);
    PackI6_ref(l, group, group, codes + g * (3 * group / 4));
  }
}

}  // namespace tessera::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // TESSERA_KERNELS_GROUP_SEARCH_INL_H_
