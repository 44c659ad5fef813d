/* add_lora on the CPU: y[t] += (A[s_t] x[t]) . Bt[s_t] for every adapter row t, x and y float32.
 *
 * Shapes (row-major, last dimension contiguous):
 *   x: [n, in] with row stride ldx; y: [n, out] with row stride ldy
 *   A: [S, R, in]; Bt: [S, R, out] (B transposed, the adapter's scale folded in), elements of
 *     `kind`: KIND_F32, KIND_BF16 or KIND_F16; 16-bit elements are widened to float32 as they
 *     are loaded, and all sums are float32
 *   ends: [S] int32, rows [ends[s-1], ends[s]) use slot s (rows are sorted by slot)
 *   ranks: [S] int32, slot s's real rank (0 <= ranks[s] <= R), or NULL: every slot has rank R.
 *     Rows r >= ranks[s] of a slot are never read (they are zero padding).
 *
 * Why a kernel: a decode step gives each adapter one or two rows, so the work is streaming
 * every active slot's A and Bt once (hundreds of MB per step) with almost no arithmetic per
 * byte. Batched BLAS calls on such shapes reach about half the memory bandwidth; this loop
 * reads each weight once per chunk of ROWS rows, with both cores on contiguous ranges; only a
 * slot's real rank, and 16-bit tables halve the bytes again.
 *
 * Work is split into chunks of up to ROWS rows of one slot, a chunk costing its slot's rank
 * (the rows of A and Bt it streams). Thread k of n takes the chunks that start in
 * [k*W/n, (k+1)*W/n) of the total cost W, in slot order, so each thread streams one
 * contiguous range of slots and mixed ranks still split evenly. Every chunk writes only its
 * own rows of y, so threads never write the same memory.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define ROWS 8
/* Prefetch distance in bytes: one 4 KiB page ahead of the stream. The hardware stream
 * prefetcher stops at page boundaries, so without this every new page of A or Bt starts with
 * a miss to memory; with it the kernel takes about 10% less time per decode step. */
#define AHEAD 4096

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2 };

typedef float v8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline v8 bits_to_v8(u32x8 w) {
  v8 v;
  memcpy(&v, &w, sizeof v);
  return v;
}

/* bfloat16 is the top half of a float32: widen and shift. (GCC 12 compiles the generic form
 * into two 128-bit halves and a merge: about 1.3x slower per step than one AVX2 widening.) */
static inline v8 load8_bf16(const uint16_t *p) {
#if defined(__AVX2__)
  v8 v;
  const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
  memcpy(&v, &w, sizeof v);
  return v;
#else
  u16x8 h;
  memcpy(&h, p, sizeof h);
  return bits_to_v8(__builtin_convertvector(h, u32x8) << 16);
#endif
}

/* IEEE half -> float32, exactly. With F16C (checked when the kernel is built) one instruction;
 * otherwise the same in integer lanes: normal numbers re-bias the exponent, subnormals (and
 * zero) are their mantissa times 2^-24, infinities and NaNs keep their mantissa. */
static inline v8 load8_f16(const uint16_t *p) {
#if defined(__F16C__)
  v8 v;
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
  memcpy(&v, &f, sizeof v);
  return v;
#else
  u16x8 h;
  memcpy(&h, p, sizeof h);
  const u32x8 w = __builtin_convertvector(h, u32x8);
  const u32x8 sign = (w & 0x8000) << 16, em = w & 0x7fff;
  const u32x8 normal = (em << 13) + ((127 - 15) << 23);
  const u32x8 special = (em << 13) | 0x7f800000;
  const v8 tiny = __builtin_convertvector(em, v8) * (1.0f / 16777216.0f);
  u32x8 tiny_bits;
  memcpy(&tiny_bits, &tiny, sizeof tiny_bits);
  const u32x8 is_tiny = (u32x8)(em < 0x0400), is_special = (u32x8)(em >= 0x7c00);
  const u32x8 bits = (normal & ~(is_tiny | is_special)) | (special & is_special) |
                     (tiny_bits & is_tiny);
  return bits_to_v8(bits | sign);
#endif
}

/* Eight elements of a table of `kind` starting at element i, as float32. `kind` is a
 * constant wherever this is inlined, so the switch disappears. */
static inline __attribute__((always_inline)) v8 load8w(const void *p, int64_t i, int kind) {
  switch (kind) {
    case KIND_BF16: return load8_bf16((const uint16_t *)p + i);
    case KIND_F16: return load8_f16((const uint16_t *)p + i);
    default: return load8((const float *)p + i);
  }
}

/* One element (the tails past the last multiple of 8), through the same conversions. */
static inline __attribute__((always_inline)) float load1w(const void *p, int64_t i, int kind) {
  if (kind == KIND_F32) return ((const float *)p)[i];
  uint16_t h[8] = {((const uint16_t *)p)[i]};
  return load8w(h, 0, kind)[0];
}

static inline __attribute__((always_inline)) const void *offset(const void *p, int64_t i,
                                                                int kind) {
  return (const char *)p + i * (kind == KIND_F32 ? 4 : 2);
}

static inline float sum8(v8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* u[p][r] = A[r] . x[p] (shrink), then y[p] += sum_r u[p][r] * Bt[r] (expand), np <= ROWS,
 * for the slot's first R rows (its real rank). Always inlined with a constant np and kind
 * (see chunk), so the row loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void chunk_rows(
    const float *restrict x, float *restrict y, const void *restrict A, const void *restrict Bt,
    const int64_t np, const int kind, int64_t in, int64_t out, int64_t R, int64_t ldx,
    int64_t ldy) {
  float u[ROWS][R]; /* R <= 1024 (cpu_ops.MAX_RANK): at most 32 KiB of stack */
  const int64_t in8 = in & ~(int64_t)7, out8 = out & ~(int64_t)7;
  const int64_t ahead = AHEAD / (kind == KIND_F32 ? 4 : 2), line = 64 / (kind == KIND_F32 ? 4 : 2);
  for (int64_t r = 0; r < R; r++) {
    const void *restrict a = offset(A, r * in, kind);
    v8 acc[ROWS];
    memset(acc, 0, sizeof acc);
    for (int64_t i = 0; i < in8; i += 8) {
      if (!(i & (line - 1))) __builtin_prefetch(offset(a, i + ahead, kind)); /* once a line */
      const v8 va = load8w(a, i, kind);
      for (int64_t p = 0; p < np; p++) acc[p] += va * load8(x + p * ldx + i);
    }
    for (int64_t p = 0; p < np; p++) {
      float s = sum8(acc[p]);
      for (int64_t i = in8; i < in; i++) s += load1w(a, i, kind) * x[p * ldx + i];
      u[p][r] = s;
    }
  }
  for (int64_t r = 0; r < R; r++) {
    const void *restrict b = offset(Bt, r * out, kind);
    for (int64_t p = 0; p < np; p++) {
      float *restrict yp = y + p * ldy;
      const float c = u[p][r];
      const v8 vc = {c, c, c, c, c, c, c, c};
      /* The first pass over b prefetches ahead of it, in a loop of its own: the same loop
       * with a p == 0 test inside measured no faster than no prefetch at all. */
      if (p == 0) {
        for (int64_t o = 0; o < out8; o += 8) {
          if (!(o & (line - 1))) __builtin_prefetch(offset(b, o + ahead, kind));
          store8(yp + o, load8(yp + o) + vc * load8w(b, o, kind));
        }
      } else {
        for (int64_t o = 0; o < out8; o += 8)
          store8(yp + o, load8(yp + o) + vc * load8w(b, o, kind));
      }
      for (int64_t o = out8; o < out; o++) yp[o] += c * load1w(b, o, kind);
    }
  }
}

/* One copy of chunk_rows per table kind and row count: about 8% faster on decode steps than
 * one loop over a variable count, which keeps the accumulators in memory. */
#define ROWS_CASES(k)                                                            \
  switch (np) {                                                                  \
    ROWS_CASE(1, k) ROWS_CASE(2, k) ROWS_CASE(3, k) ROWS_CASE(4, k)              \
    ROWS_CASE(5, k) ROWS_CASE(6, k) ROWS_CASE(7, k) ROWS_CASE(8, k)              \
  }
#define ROWS_CASE(n, k) \
  case n: chunk_rows(x, y, A, Bt, n, k, in, out, R, ldx, ldy); break;

static void chunk(const float *restrict x, float *restrict y, const void *restrict A,
                  const void *restrict Bt, int64_t np, int kind, int64_t in, int64_t out,
                  int64_t R, int64_t ldx, int64_t ldy) {
  switch (kind) {
    case KIND_BF16: ROWS_CASES(KIND_BF16) break;
    case KIND_F16: ROWS_CASES(KIND_F16) break;
    default: ROWS_CASES(KIND_F32) break;
  }
}
#undef ROWS_CASE
#undef ROWS_CASES

/* 1 when float16 tables are widened by F16C instructions, 0 when in integer lanes. */
int loraplex_add_lora_f16c(void) {
#if defined(__F16C__)
  return 1;
#else
  return 0;
#endif
}

void loraplex_add_lora(const float *x, float *y, const void *A, const void *Bt,
                       const int32_t *ends, const int32_t *ranks, int64_t S, int64_t in,
                       int64_t out, int64_t R, int64_t ldx, int64_t ldy, int32_t kind,
                       int32_t num_threads) {
  int64_t total = 0, chunks = 0; /* total cost (sum of ranks streamed), chunks with a cost */
  for (int64_t s = 0, start = 0; s < S; start = ends[s], s++) {
    const int64_t n = (ends[s] - start + ROWS - 1) / ROWS, rank = ranks ? ranks[s] : R;
    total += n * rank;
    chunks += rank ? n : 0;
  }
  if (num_threads < 1) num_threads = 1;
  if (num_threads > chunks) num_threads = chunks > 0 ? (int32_t)chunks : 1;
  const int64_t esize = kind == KIND_F32 ? 4 : 2;
#pragma omp parallel num_threads(num_threads)
  {
    int64_t k = 0, n = 1;
#ifdef _OPENMP
    k = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    const int64_t first = total * k / n, last = total * (k + 1) / n;
    int64_t cost = 0; /* the cost of the chunks before this one */
    for (int64_t s = 0, start = 0; s < S && cost < last; start = ends[s], s++) {
      const int64_t rank = ranks ? ranks[s] : R;
      if (!rank) continue; /* an empty slot (or one with no weights): nothing to add */
      const char *a = (const char *)A + s * R * in * esize;
      const char *b = (const char *)Bt + s * R * out * esize;
      for (int64_t p0 = start; p0 < ends[s] && cost < last; p0 += ROWS, cost += rank) {
        if (cost < first) continue;
        const int64_t np = ends[s] - p0 < ROWS ? ends[s] - p0 : ROWS;
        chunk(x + p0 * ldx, y + p0 * ldy, a, b, np, kind, in, out, rank, ldx, ldy);
      }
    }
  }
}
