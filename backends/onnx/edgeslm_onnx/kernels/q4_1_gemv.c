/* Fused Q4_1 x Q8_1-like GEMV for decode (M = 1): y[N] = W[N,K] @ x[K].
 *
 * A feasibility measurement for issue #15 (see docs/performance.md, "A fused Q4_1 kernel:
 * feasibility"), written for this repository; not an onnxruntime op.
 *
 * Weights: Q4_1, blocks of 32 along K, w = d*q + m with q in 0..15 and d, m in fp16
 * (20 bytes per 32 weights, as a GGUF Q4_1 block). Repacked for the SIMD loop: rows in groups of
 * 16, and for each (group, block) one 320-byte record
 *     bytes   0..255  codes: 4 chunks of 64 bytes; in chunk t the byte 4*r + e holds, in its low
 *                     nibble, row r's element 8t + e, in its high nibble row r's element 8t + 4 + e
 *                     (r = 0..15, e = 0..3)
 *     bytes 256..287  d of the 16 rows (fp16)
 *     bytes 288..319  m of the 16 rows (fp16)
 * Records are stored group-major: [N/16][K/32][320], so a thread reading a range of groups
 * streams one contiguous run of memory. Requires N % 16 == 0, K % 32 == 0.
 *
 * Activations: quantized per block of 32 to int8 qx with a float scale dx = amax/127 and the
 * block sum sx = dx * sum(qx) (Q8_1-like). Per row and block:
 *     sum_i (d q_i + m)(dx qx_i) = (d dx) * sum_i q_i qx_i + m * sx
 * The integer dot is exact (u8 x s8 -> s32: vpdpbusd on AVX-512 VNNI, vpmaddubsw on AVX2), then
 * acc = fma(float(isum), d*dx, acc); acc = fma(m, sx, acc), in that order on every path, so
 * the paths agree bit for bit.
 *
 * Q8_0 (the tied lm_head): blocks of 32 int8 codes w with an fp16 scale d. Record per (group of
 * 16 rows, block): 512 bytes codes (4 chunks of 128 bytes: chunk t, byte 4*r + e of its first
 * 64 bytes = row r element 8t + e, of its last 64 bytes = row r element 8t + 4 + e), then 32
 * bytes d: 544 bytes per 16 x 32 weights (34 per 32, as GGUF Q8_0).
 *     sum_i d w_i dx qx_i = (d dx) * sum_i w_i qx_i;  acc = fma(float(isum), d*dx, acc)
 * AVX-512: vpdpbusd needs an unsigned operand: (w ^ 0x80) = w + 128 as u8, and
 * sum (w+128) qx = sum w qx + 128 * sum qx, with sum qx known per block of x.
 *
 * Threads: a persistent pthread pool; the row groups of each matrix split into T contiguous
 * ranges, a barrier after each matrix (a decode step's products depend on each other); waits
 * spin, then sleep on a futex (q41_set_spin); each thread quantizes x itself.
 * Build: gcc -O3 -shared -fPIC -pthread q4_1_gemv.c -o libq41.so -lm (no -march: runtime dispatch).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QK 32
#define ROWS 16
#define REC41 320
#define REC80 544

enum { PATH_AUTO = 0, PATH_SCALAR = 1, PATH_AVX2 = 2, PATH_AVX512 = 3 };

/* ---------- fp16 -> fp32 (scalar path) ---------- */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---------- activations: per block of 32, int8 codes, scale, sum ---------- */
void q8_1_quantize(const float *x, int K, int8_t *qx, float *dx, float *sx, int32_t *sumq) {
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int i = 0; i < QK; i++) {
            float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int s = 0;
        for (int i = 0; i < QK; i++) {
            int q = (int)nearbyintf(xb[i] * id);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            qx[b * QK + i] = (int8_t)q;
            s += q;
        }
        dx[b] = d;
        sumq[b] = s;
        sx[b] = d * (float)s;
    }
}

/* The same quantization with AVX2 (bit for bit: the same float products, cvtps rounds to nearest
 * even as nearbyintf does in the default rounding mode). */
__attribute__((target("avx2,fma,f16c")))
static void q8_1_quantize_avx2(const float *x, int K, int8_t *qx, float *dx, float *sx, int32_t *sumq) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v[4];
        for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(xb + 8 * j);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv)), hi), lo);
        __m256i s4 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s2 = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
        s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0x4e));
        s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1));
        const int sum = _mm_cvtsi128_si32(s2);
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(qx + b * QK), _mm256_permutevar8x32_epi32(p, order));
        dx[b] = d;
        sumq[b] = sum;
        sx[b] = d * (float)sum;
    }
}

/* ---------- Q4_1: scalar ---------- */
static void q41_rows_scalar(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                            const float *sx, float *y) {
    const int nb = K / QK;
    for (int g = g0; g < g1; g++) {
        float acc[ROWS] = {0};
        for (int b = 0; b < nb; b++) {
            const uint8_t *rec = W + ((size_t)g * nb + b) * REC41;
            const uint16_t *dh = (const uint16_t *)(rec + 256), *mh = (const uint16_t *)(rec + 288);
            const int8_t *xb = qx + b * QK;
            for (int r = 0; r < ROWS; r++) {
                int32_t isum = 0;
                for (int t = 0; t < 4; t++)
                    for (int e = 0; e < 4; e++) {
                        uint8_t v = rec[64 * t + 4 * r + e];
                        isum += (int32_t)(v & 15) * xb[8 * t + e] + (int32_t)(v >> 4) * xb[8 * t + 4 + e];
                    }
                float d = half_to_float(dh[r]), m = half_to_float(mh[r]);
                acc[r] = fmaf((float)isum, d * dx[b], acc[r]);
                acc[r] = fmaf(m, sx[b], acc[r]);
            }
        }
        memcpy(y + (size_t)g * ROWS, acc, sizeof acc);
    }
}

/* ---------- Q4_1: AVX2 + FMA + F16C ---------- */
__attribute__((target("avx2,fma,f16c")))
static void q41_rows_avx2(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                          const float *sx, float *y) {
    const int nb = K / QK;
    const __m256i low = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    for (int g = g0; g < g1; g++) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        const uint8_t *rec = W + (size_t)g * nb * REC41;
        for (int b = 0; b < nb; b++, rec += REC41) {
            const int32_t *xb = (const int32_t *)(qx + b * QK);
            __m256i p0 = _mm256_setzero_si256(), p1 = _mm256_setzero_si256();
            for (int t = 0; t < 4; t++) {
                const __m256i xl = _mm256_set1_epi32(xb[2 * t]), xh = _mm256_set1_epi32(xb[2 * t + 1]);
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)(rec + 64 * t));
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)(rec + 64 * t + 32));
                /* u8 (0..15) x s8 -> s16 pairs; 8 of them sum to at most 8*2*15*127 < 32767 */
                p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(_mm256_and_si256(v0, low), xl));
                p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), xh));
                p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(_mm256_and_si256(v1, low), xl));
                p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), xh));
            }
            const __m256 s0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(p0, ones));
            const __m256 s1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(p1, ones));
            const __m256 dxb = _mm256_set1_ps(dx[b]), sxb = _mm256_set1_ps(sx[b]);
            const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 256)));
            const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 272)));
            const __m256 m0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 288)));
            const __m256 m1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 304)));
            acc0 = _mm256_fmadd_ps(s0, _mm256_mul_ps(d0, dxb), acc0);
            acc1 = _mm256_fmadd_ps(s1, _mm256_mul_ps(d1, dxb), acc1);
            acc0 = _mm256_fmadd_ps(m0, sxb, acc0);
            acc1 = _mm256_fmadd_ps(m1, sxb, acc1);
        }
        _mm256_storeu_ps(y + (size_t)g * ROWS, acc0);
        _mm256_storeu_ps(y + (size_t)g * ROWS + 8, acc1);
    }
}

/* ---------- Q4_1: AVX-512 VNNI ---------- */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q41_rows_avx512(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                            const float *sx, float *y) {
    const int nb = K / QK;
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int g = g0; g < g1; g++) {
        __m512 acc = _mm512_setzero_ps();
        const uint8_t *rec = W + (size_t)g * nb * REC41;
        for (int b = 0; b < nb; b++, rec += REC41) {
            const int32_t *xb = (const int32_t *)(qx + b * QK);
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            for (int t = 0; t < 4; t++) {
                const __m512i v = _mm512_loadu_si512((const void *)(rec + 64 * t));
                s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v, low), _mm512_set1_epi32(xb[2 * t]));
                s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                                         _mm512_set1_epi32(xb[2 * t + 1]));
            }
            const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + 256)));
            const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + 288)));
            acc = _mm512_fmadd_ps(s, _mm512_mul_ps(d, _mm512_set1_ps(dx[b])), acc);
            acc = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[b]), acc);
        }
        _mm512_storeu_ps(y + (size_t)g * ROWS, acc);
    }
}

/* ---------- Q8_0: scalar ---------- */
static void q80_rows_scalar(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                            const int32_t *sumq, float *y) {
    (void)sumq;
    const int nb = K / QK;
    for (int g = g0; g < g1; g++) {
        float acc[ROWS] = {0};
        for (int b = 0; b < nb; b++) {
            const uint8_t *rec = W + ((size_t)g * nb + b) * REC80;
            const uint16_t *dh = (const uint16_t *)(rec + 512);
            const int8_t *xb = qx + b * QK;
            for (int r = 0; r < ROWS; r++) {
                int32_t isum = 0;
                for (int t = 0; t < 4; t++)
                    for (int e = 0; e < 4; e++)
                        isum += (int32_t)(int8_t)rec[128 * t + 4 * r + e] * xb[8 * t + e] +
                                (int32_t)(int8_t)rec[128 * t + 64 + 4 * r + e] * xb[8 * t + 4 + e];
                acc[r] = fmaf((float)isum, half_to_float(dh[r]) * dx[b], acc[r]);
            }
        }
        memcpy(y + (size_t)g * ROWS, acc, sizeof acc);
    }
}

/* ---------- Q8_0: AVX2 (sign trick: |w| u8 x sign(x, w) s8; |w| <= 127 so no saturation) ---------- */
__attribute__((target("avx2,fma,f16c")))
static inline __m256i dot8_avx2(__m256i w, __m256i x) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

__attribute__((target("avx2,fma,f16c")))
static void q80_rows_avx2(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                          const int32_t *sumq, float *y) {
    (void)sumq;
    const int nb = K / QK;
    for (int g = g0; g < g1; g++) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        const uint8_t *rec = W + (size_t)g * nb * REC80;
        for (int b = 0; b < nb; b++, rec += REC80) {
            const int32_t *xb = (const int32_t *)(qx + b * QK);
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
            for (int t = 0; t < 4; t++) {
                const __m256i xl = _mm256_set1_epi32(xb[2 * t]), xh = _mm256_set1_epi32(xb[2 * t + 1]);
                const uint8_t *c = rec + 128 * t;
                s0 = _mm256_add_epi32(s0, dot8_avx2(_mm256_loadu_si256((const __m256i *)c), xl));
                s1 = _mm256_add_epi32(s1, dot8_avx2(_mm256_loadu_si256((const __m256i *)(c + 32)), xl));
                s0 = _mm256_add_epi32(s0, dot8_avx2(_mm256_loadu_si256((const __m256i *)(c + 64)), xh));
                s1 = _mm256_add_epi32(s1, dot8_avx2(_mm256_loadu_si256((const __m256i *)(c + 96)), xh));
            }
            const __m256 dxb = _mm256_set1_ps(dx[b]);
            const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 512)));
            const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 528)));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(d0, dxb), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(d1, dxb), acc1);
        }
        _mm256_storeu_ps(y + (size_t)g * ROWS, acc0);
        _mm256_storeu_ps(y + (size_t)g * ROWS + 8, acc1);
    }
}

/* ---------- Q8_0: AVX-512 VNNI ((w ^ 0x80) = w + 128 unsigned, minus 128 * sum(qx)) ---------- */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q80_rows_avx512(const uint8_t *W, int K, int g0, int g1, const int8_t *qx, const float *dx,
                            const int32_t *sumq, float *y) {
    const int nb = K / QK;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int g = g0; g < g1; g++) {
        __m512 acc = _mm512_setzero_ps();
        const uint8_t *rec = W + (size_t)g * nb * REC80;
        for (int b = 0; b < nb; b++, rec += REC80) {
            const int32_t *xb = (const int32_t *)(qx + b * QK);
            __m512i s0 = _mm512_set1_epi32(-128 * sumq[b]), s1 = _mm512_setzero_si512();
            for (int t = 0; t < 4; t++) {
                const uint8_t *c = rec + 128 * t;
                s0 = _mm512_dpbusd_epi32(s0, _mm512_xor_si512(_mm512_loadu_si512((const void *)c), flip),
                                         _mm512_set1_epi32(xb[2 * t]));
                s1 = _mm512_dpbusd_epi32(s1, _mm512_xor_si512(_mm512_loadu_si512((const void *)(c + 64)), flip),
                                         _mm512_set1_epi32(xb[2 * t + 1]));
            }
            const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + 512)));
            acc = _mm512_fmadd_ps(s, _mm512_mul_ps(d, _mm512_set1_ps(dx[b])), acc);
        }
        _mm512_storeu_ps(y + (size_t)g * ROWS, acc);
    }
}

/* ---------- dispatch ---------- */
int q41_supported(int path) {
    __builtin_cpu_init();
    switch (path) {
    case PATH_SCALAR: return 1;
    case PATH_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case PATH_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
}

/* the path actually used for `path` (0 = the best this CPU supports) */
int q41_resolve(int path) {
    if (path != PATH_AUTO) return q41_supported(path) ? path : -1;
    if (q41_supported(PATH_AVX512)) return PATH_AVX512;
    if (q41_supported(PATH_AVX2)) return PATH_AVX2;
    return PATH_SCALAR;
}

/* ---------- threads: a persistent pthread pool ----------
 * Workers wait for a new job generation; every wait (workers for a job, threads at the barrier
 * after each product, the caller for the workers to finish) spins `g_spin` pauses, then sleeps
 * on a futex. q41_set_spin(n) sets it (0: sleep at once). libgomp's spinning barrier, used
 * first, cost ~4 ms a barrier when both threads landed on one core under load (0.47 s a step). */
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXT 64

static int g_spin = 2000; /* ~0.1 ms at ~50 ns a pause */

void q41_set_spin(int spins) { __atomic_store_n(&g_spin, spins < 0 ? 0 : spins, __ATOMIC_RELAXED); }

static void futex_wait(int *addr, int val) { syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0); }
static void futex_wake(int *addr) { syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0); }

/* wait while *addr == val: spin, then sleep (sleepers counted so that wakers skip the syscall) */
static void wait_while(int *addr, int val, int *sleepers) {
    const int spins = __atomic_load_n(&g_spin, __ATOMIC_RELAXED);
    for (int i = 0; i < spins; i++) {
        if (__atomic_load_n(addr, __ATOMIC_ACQUIRE) != val) return;
        _mm_pause();
    }
    while (__atomic_load_n(addr, __ATOMIC_SEQ_CST) == val) {
        __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(addr, __ATOMIC_SEQ_CST) == val) futex_wait(addr, val);
        __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
    }
}

static void publish(int *addr, int val, int *sleepers) {
    __atomic_store_n(addr, val, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0) futex_wake(addr);
}

typedef void (*rows41_fn)(const uint8_t *, int, int, int, const int8_t *, const float *, const float *, float *);
typedef void (*rows80_fn)(const uint8_t *, int, int, int, const int8_t *, const float *, const int32_t *, float *);

typedef struct {
    int count, nt, path, kmax;
    const int *kind, *N, *K;
    const uint8_t *const *W;
    const float *const *x;
    float *const *y;
    rows41_fn f41;
    rows80_fn f80;
} job_t;

static struct {
    pthread_mutex_t lock;  /* one gemv_many at a time */
    int started;           /* workers running */
    int gen, gen_sleepers; /* job generation */
    int done, done_sleepers;
    int bar_count, bar_gen, bar_sleepers;
    job_t job;
} P = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 0, {0}};

static void barrier(int nt) {
    const int g = __atomic_load_n(&P.bar_gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&P.bar_count, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&P.bar_count, 0, __ATOMIC_RELAXED);
        publish(&P.bar_gen, g + 1, &P.bar_sleepers);
    } else {
        wait_while(&P.bar_gen, g, &P.bar_sleepers);
    }
}

static void run_share(const job_t *j, int me) {
    const int nbmax = j->kmax / QK;
    int8_t qx[j->kmax] __attribute__((aligned(64)));
    float dx[nbmax], sx[nbmax];
    int32_t sumq[nbmax];
    for (int i = 0; i < j->count; i++) {
        const int groups = j->N[i] / ROWS;
        const int g0 = (int)((long)groups * me / j->nt), g1 = (int)((long)groups * (me + 1) / j->nt);
        if (j->path == PATH_SCALAR)
            q8_1_quantize(j->x[i], j->K[i], qx, dx, sx, sumq);
        else
            q8_1_quantize_avx2(j->x[i], j->K[i], qx, dx, sx, sumq);
        if (j->kind[i] == 0)
            j->f41(j->W[i], j->K[i], g0, g1, qx, dx, sx, j->y[i]);
        else
            j->f80(j->W[i], j->K[i], g0, g1, qx, dx, sumq, j->y[i]);
        if (j->nt > 1) barrier(j->nt);
    }
}

static void *worker(void *arg) {
    const int me = (int)(intptr_t)arg; /* 1.. */
    int seen = 0;
    for (;;) {
        wait_while(&P.gen, seen, &P.gen_sleepers);
        seen = __atomic_load_n(&P.gen, __ATOMIC_ACQUIRE);
        const job_t *j = &P.job;
        if (me < j->nt) {
            run_share(j, me);
            const int d = __atomic_add_fetch(&P.done, 1, __ATOMIC_ACQ_REL);
            if (__atomic_load_n(&P.done_sleepers, __ATOMIC_SEQ_CST) > 0) futex_wake(&P.done);
            (void)d;
        }
    }
    return NULL;
}

/* y_i = W_i @ x_i for i < count, in order, each split across `threads`; kind_i: 0 = Q4_1, 1 = Q8_0.
 * Returns 0, or -1 if the path is not supported here or a shape is not a multiple of 16 x 32. */
int gemv_many(int count, const int *kind, const uint8_t *const *W, const int *N, const int *K,
              const float *const *x, float *const *y, int path, int threads) {
    path = q41_resolve(path);
    if (path < 0) return -1;
    int kmax = QK;
    for (int i = 0; i < count; i++) {
        if (N[i] % ROWS || K[i] % QK || K[i] <= 0 || K[i] > 65536) return -1;
        kmax = K[i] > kmax ? K[i] : kmax;
    }
    threads = threads < 1 ? 1 : threads > MAXT ? MAXT : threads;
    job_t j = {count, threads, path, kmax, kind, N, K, W, x, y,
               path == PATH_AVX512 ? q41_rows_avx512 : path == PATH_AVX2 ? q41_rows_avx2 : q41_rows_scalar,
               path == PATH_AVX512 ? q80_rows_avx512 : path == PATH_AVX2 ? q80_rows_avx2 : q80_rows_scalar};
    if (threads == 1) {
        run_share(&j, 0);
        return 0;
    }
    pthread_mutex_lock(&P.lock);
    while (P.started < threads - 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)(intptr_t)(P.started + 1)) != 0) {
            pthread_mutex_unlock(&P.lock);
            return -2;
        }
        pthread_detach(t);
        P.started++;
    }
    P.job = j;
    __atomic_store_n(&P.done, 0, __ATOMIC_RELAXED);
    publish(&P.gen, P.gen + 1, &P.gen_sleepers);
    run_share(&j, 0);
    for (int d; (d = __atomic_load_n(&P.done, __ATOMIC_ACQUIRE)) != threads - 1;)
        wait_while(&P.done, d, &P.done_sleepers);
    pthread_mutex_unlock(&P.lock);
    return 0;
}

int q41_gemv(const uint8_t *W, int N, int K, const float *x, float *y, int path, int threads) {
    const int kind = 0;
    return gemv_many(1, &kind, &W, &N, &K, &x, &y, path, threads);
}

int q80_gemv(const uint8_t *W, int N, int K, const float *x, float *y, int path, int threads) {
    const int kind = 1;
    return gemv_many(1, &kind, &W, &N, &K, &x, &y, path, threads);
}

/* ---------- for the onnxruntime custom op (ort_ops.c): the caller quantizes and threads ----------
 * Quantize M rows of x (M x K) into qx (M x K), dx, sx, sumq (M x K/32), with the path's quantizer. */
void q8_1_quantize_rows(const float *x, int M, int K, int8_t *qx, float *dx, float *sx, int32_t *sumq, int path) {
    const int nb = K / QK;
    for (int m = 0; m < M; m++) {
        const size_t o = (size_t)m * K, ob = (size_t)m * nb;
        if (path == PATH_SCALAR)
            q8_1_quantize(x + o, K, qx + o, dx + ob, sx + ob, sumq + ob);
        else
            q8_1_quantize_avx2(x + o, K, qx + o, dx + ob, sx + ob, sumq + ob);
    }
}

/* y (M x N) rows' groups [g0, g1) of 16 outputs, from quantized rows (q8_1_quantize_rows); kind 0 =
 * Q4_1 (320-byte records), 1 = Q8_0 (544); path resolved (q41_resolve). Each group range is read
 * once per row, so callers pass small ranges (a few groups: stays in L1/L2 across the M rows). */
void gemm_groups(int kind, const uint8_t *W, int N, int K, int M, const int8_t *qx, const float *dx,
                 const float *sx, const int32_t *sumq, float *y, int g0, int g1, int path) {
    const int nb = K / QK;
    const rows41_fn f41 = path == PATH_AVX512 ? q41_rows_avx512 : path == PATH_AVX2 ? q41_rows_avx2 : q41_rows_scalar;
    const rows80_fn f80 = path == PATH_AVX512 ? q80_rows_avx512 : path == PATH_AVX2 ? q80_rows_avx2 : q80_rows_scalar;
    for (int m = 0; m < M; m++) {
        const size_t ob = (size_t)m * nb;
        if (kind == 0)
            f41(W, K, g0, g1, qx + (size_t)m * K, dx + ob, sx + ob, y + (size_t)m * N);
        else
            f80(W, K, g0, g1, qx + (size_t)m * K, dx + ob, sumq + ob, y + (size_t)m * N);
    }
}
