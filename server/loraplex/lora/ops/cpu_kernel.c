/* add_lora for float32 on the CPU: y[t] += (A[s_t] x[t]) . Bt[s_t] for every adapter row t.
 *
 * Shapes (row-major, last dimension contiguous):
 *   x: [n, in] with row stride ldx; y: [n, out] with row stride ldy
 *   A: [S, R, in]; Bt: [S, R, out] (B transposed, the adapter's scale folded in)
 *   ends: [S] int32, rows [ends[s-1], ends[s]) use slot s (rows are sorted by slot)
 *
 * Why a kernel: a decode step gives each adapter one or two rows, so the work is streaming
 * every active slot's A and Bt once (hundreds of MB per step) with almost no arithmetic per
 * byte. Batched BLAS calls on such shapes reach about half the memory bandwidth; this loop
 * reads each weight once per chunk of ROWS rows, with both cores on contiguous halves.
 *
 * Work is split into chunks of up to ROWS rows of one slot; thread k of n takes chunks
 * [k*C/n, (k+1)*C/n) in slot order, so each thread streams one contiguous range of slots.
 * Every chunk writes only its own rows of y, so threads never write the same memory.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ROWS 8
/* Prefetch distance in floats: one 4 KiB page ahead of the stream. The hardware stream
 * prefetcher stops at page boundaries, so without this every new page of A or Bt starts with
 * a miss to memory; with it the kernel takes about 10% less time per decode step. */
#define AHEAD 1024

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline float sum8(v8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* u[p][r] = A[r] . x[p] (shrink), then y[p] += sum_r u[p][r] * Bt[r] (expand), np <= ROWS.
 * Always inlined with a constant np (see chunk), so the row loops unroll and the accumulators
 * stay in registers. */
static inline __attribute__((always_inline)) void chunk_rows(
    const float *restrict x, float *restrict y, const float *restrict A, const float *restrict Bt,
    const int64_t np, int64_t in, int64_t out, int64_t R, int64_t ldx, int64_t ldy) {
  float u[ROWS][R]; /* R <= 1024 (cpu_ops.MAX_RANK): at most 32 KiB of stack */
  const int64_t in8 = in & ~(int64_t)7, out8 = out & ~(int64_t)7;
  for (int64_t r = 0; r < R; r++) {
    const float *restrict a = A + r * in;
    v8 acc[ROWS];
    memset(acc, 0, sizeof acc);
    for (int64_t i = 0; i < in8; i += 8) {
      if (!(i & 15)) __builtin_prefetch(a + i + AHEAD); /* once per 64-byte line */
      const v8 va = load8(a + i);
      for (int64_t p = 0; p < np; p++) acc[p] += va * load8(x + p * ldx + i);
    }
    for (int64_t p = 0; p < np; p++) {
      float s = sum8(acc[p]);
      for (int64_t i = in8; i < in; i++) s += a[i] * x[p * ldx + i];
      u[p][r] = s;
    }
  }
  for (int64_t r = 0; r < R; r++) {
    const float *restrict b = Bt + r * out;
    for (int64_t p = 0; p < np; p++) {
      float *restrict yp = y + p * ldy;
      const float c = u[p][r];
      const v8 vc = {c, c, c, c, c, c, c, c};
      /* The first pass over b prefetches ahead of it, in a loop of its own: the same loop
       * with a p == 0 test inside measured no faster than no prefetch at all. */
      if (p == 0) {
        for (int64_t o = 0; o < out8; o += 8) {
          if (!(o & 15)) __builtin_prefetch(b + o + AHEAD);
          store8(yp + o, load8(yp + o) + vc * load8(b + o));
        }
      } else {
        for (int64_t o = 0; o < out8; o += 8) store8(yp + o, load8(yp + o) + vc * load8(b + o));
      }
      for (int64_t o = out8; o < out; o++) yp[o] += c * b[o];
    }
  }
}

/* One copy of chunk_rows per row count: about 8% faster on decode steps than one loop over
 * a variable count, which keeps the accumulators in memory. */
static void chunk(const float *restrict x, float *restrict y, const float *restrict A,
                  const float *restrict Bt, int64_t np, int64_t in, int64_t out, int64_t R,
                  int64_t ldx, int64_t ldy) {
  switch (np) {
#define ROWS_CASE(n) \
  case n: chunk_rows(x, y, A, Bt, n, in, out, R, ldx, ldy); break;
    ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4)
    ROWS_CASE(5) ROWS_CASE(6) ROWS_CASE(7) ROWS_CASE(8)
#undef ROWS_CASE
  }
}

void loraplex_add_lora_f32(const float *x, float *y, const float *A, const float *Bt,
                           const int32_t *ends, int64_t S, int64_t in, int64_t out, int64_t R,
                           int64_t ldx, int64_t ldy, int32_t num_threads) {
  int64_t total = 0;
  for (int64_t s = 0, start = 0; s < S; start = ends[s], s++)
    total += (ends[s] - start + ROWS - 1) / ROWS;
  if (num_threads < 1) num_threads = 1;
  if (num_threads > total) num_threads = total > 0 ? (int32_t)total : 1;
#pragma omp parallel num_threads(num_threads)
  {
    int64_t k = 0, n = 1;
#ifdef _OPENMP
    k = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    const int64_t first = total * k / n, last = total * (k + 1) / n;
    int64_t c = 0;
    for (int64_t s = 0, start = 0; s < S && c < last; start = ends[s], s++) {
      for (int64_t p0 = start; p0 < ends[s] && c < last; p0 += ROWS, c++) {
        if (c < first) continue;
        const int64_t np = ends[s] - p0 < ROWS ? ends[s] - p0 : ROWS;
        chunk(x + p0 * ldx, y + p0 * ldy, A + s * R * in, Bt + s * R * out, np, in, out, R,
              ldx, ldy);
      }
    }
  }
}
