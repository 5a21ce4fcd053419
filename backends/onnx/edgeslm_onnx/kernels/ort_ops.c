/* onnxruntime custom ops over the fused GEMV of q4_1_gemv.c (issue #15; docs/performance.md,
 * "A fused Q4_1 kernel"), registered in the domain "ai.edgeslm" by RegisterCustomOps:
 *
 *   Q41MatMul(A float [..., K], B uint8 [N/16 * K/32 * 320]) -> Y float [..., N]   attributes K, N
 *   Q80MatMul(A float [..., K], B uint8 [N/16 * K/32 * 544]) -> Y float [..., N]   attributes K, N
 *
 * B is the repacked weight (q4_1_gemv.c's record layout; edgeslm_onnx/kernels/__init__.py packs it).
 * Each row of A is quantized per block of 32 to int8 (Q8_1-like, as MatMulNBits' accuracy_level 4
 * does), then Y = W A exactly on those codes. Rows of A (M > 1: prefill) are done tile by tile:
 * 4 groups of 16 outputs at a time, for all M rows, so a tile's weights stay in cache.
 *
 * Threads: onnxruntime's own intra-op pool through KernelContext_ParallelFor (the session's
 * intra_op_num_threads and spinning policy apply; nothing competes with its threads). Tiles are
 * split into contiguous batches, one per thread. EDGESLM_KERNEL_PARALLEL=0 runs on the calling
 * thread only. EDGESLM_KERNEL_PATH=scalar|avx2|avx512 forces an ISA path (tests); the default is
 * the best this CPU has.
 *
 * Built by edgeslm_onnx/kernels/__init__.py: gcc -O3 -shared -fPIC -pthread ort_ops.c -lm.
 */
#include "q4_1_gemv.c" /* one translation unit: the row kernels stay static */

#include <stdio.h>

#include "ort_abi.h"

#define TILE_GROUPS 4

static const OrtApi *g_api;
static int g_parallel = 1;
static char g_info[256];

typedef struct {
    int kind; /* 0 Q4_1, 1 Q8_0 */
    int64_t K, N;
    int path;
} kernel_t;

static OrtStatus *status(int code, const char *msg) { return ORT_CALL(g_api, CreateStatus)(code, msg); }

static int env_path(void) {
    const char *p = getenv("EDGESLM_KERNEL_PATH");
    if (!p || !*p || !strcmp(p, "auto")) return PATH_AUTO;
    if (!strcmp(p, "scalar")) return PATH_SCALAR;
    if (!strcmp(p, "avx2")) return PATH_AVX2;
    if (!strcmp(p, "avx512")) return PATH_AVX512;
    return -1;
}

/* ---------- op description ---------- */
static const char *name41(const OrtCustomOp *op) { (void)op; return "Q41MatMul"; }
static const char *name80(const OrtCustomOp *op) { (void)op; return "Q80MatMul"; }
static const char *provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 0 ? ORT_ABI_FLOAT : ORT_ABI_UINT8; }
static size_t two(const OrtCustomOp *op) { (void)op; return 2; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return ORT_ABI_FLOAT; }
static size_t one(const OrtCustomOp *op) { (void)op; return 1; }
static int required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int mem_default(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int arity1(const OrtCustomOp *op) { (void)op; return 1; }
static int start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int end_version(const OrtCustomOp *op) { (void)op; return 0x7fffffff; }
static size_t no_pairs(int **a, int **b) { *a = NULL; *b = NULL; return 0; }
static void release_pairs(int *a, int *b) { (void)a; (void)b; }

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)api;
    kernel_t *k = calloc(1, sizeof *k);
    if (!k) return status(ORT_ABI_FAIL, "edgeslm Q4_1/Q8_0 op: out of memory");
    k->kind = op->GetName == name80;
    OrtStatus *st = ORT_CALL(g_api, KernelInfoGetAttribute_int64)(info, "K", &k->K);
    if (!st) st = ORT_CALL(g_api, KernelInfoGetAttribute_int64)(info, "N", &k->N);
    if (st) {
        free(k);
        return st;
    }
    char msg[200];
    if (k->K <= 0 || k->K % QK || k->K > 65536 || k->N <= 0 || k->N % ROWS) {
        snprintf(msg, sizeof msg, "edgeslm %s: K=%lld, N=%lld: need K a multiple of 32 (<= 65536), N of 16",
                 op->GetName(op), (long long)k->K, (long long)k->N);
        free(k);
        return status(ORT_ABI_INVALID_ARGUMENT, msg);
    }
    const int want = env_path();
    k->path = want < 0 ? -1 : q41_resolve(want);
    if (k->path < 0) {
        snprintf(msg, sizeof msg, "edgeslm %s: EDGESLM_KERNEL_PATH=%s is not supported on this CPU", op->GetName(op),
                 getenv("EDGESLM_KERNEL_PATH"));
        free(k);
        return status(ORT_ABI_INVALID_ARGUMENT, msg);
    }
    *out = k;
    return NULL;
}

static void *create_kernel_v1(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
    void *k = NULL;
    OrtStatus *st = create_kernel(op, api, info, &k);
    if (st) {
        fprintf(stderr, "edgeslm custom op: %s\n", ORT_CALL(g_api, GetErrorMessage)(st));
        ORT_CALL(g_api, ReleaseStatus)(st);
    }
    return k;
}

static void destroy_kernel(void *k) { free(k); }

/* ---------- compute ---------- */
typedef struct {
    const kernel_t *k;
    const uint8_t *W;
    int M, groups;
    const int8_t *qx;
    const float *dx, *sx;
    const int32_t *sumq;
    float *y;
} job_t2;

static void run_tile(void *arg, size_t t) {
    const job_t2 *j = arg;
    const int g0 = (int)t * TILE_GROUPS;
    const int g1 = g0 + TILE_GROUPS < j->groups ? g0 + TILE_GROUPS : j->groups;
    gemm_groups(j->k->kind, j->W, (int)j->k->N, (int)j->k->K, j->M, j->qx, j->dx, j->sx, j->sumq, j->y, g0, g1,
                j->k->path);
}

#define TRY(expr)                     \
    do {                              \
        if ((st = (expr)) != NULL) goto done; \
    } while (0)

static OrtStatus *compute(void *kernel, OrtKernelContext *ctx) {
    const kernel_t *k = kernel;
    OrtStatus *st = NULL;
    OrtTensorTypeAndShapeInfo *ia = NULL, *ib = NULL;
    void *scratch = NULL;
    char msg[256];
    const OrtValue *a, *b;
    TRY(ORT_CALL(g_api, KernelContext_GetInput)(ctx, 0, &a));
    TRY(ORT_CALL(g_api, KernelContext_GetInput)(ctx, 1, &b));
    TRY(ORT_CALL(g_api, GetTensorTypeAndShape)(a, &ia));
    TRY(ORT_CALL(g_api, GetTensorTypeAndShape)(b, &ib));
    size_t rank, nbytes;
    int64_t dims[16];
    TRY(ORT_CALL(g_api, GetDimensionsCount)(ia, &rank));
    if (rank < 1 || rank > 16) {
        snprintf(msg, sizeof msg, "edgeslm MatMul op: input A has rank %zu (1..16)", rank);
        st = status(ORT_ABI_INVALID_ARGUMENT, msg);
        goto done;
    }
    TRY(ORT_CALL(g_api, GetDimensions)(ia, dims, rank));
    TRY(ORT_CALL(g_api, GetTensorShapeElementCount)(ib, &nbytes));
    const size_t rec = k->kind ? REC80 : REC41;
    const size_t want = (size_t)(k->N / ROWS) * (size_t)(k->K / QK) * rec;
    if (dims[rank - 1] != k->K || nbytes != want) {
        snprintf(msg, sizeof msg, "edgeslm MatMul op: A's last dimension %lld (K=%lld), B has %zu bytes (expected %zu)",
                 (long long)dims[rank - 1], (long long)k->K, nbytes, want);
        st = status(ORT_ABI_INVALID_ARGUMENT, msg);
        goto done;
    }
    int64_t M = 1;
    for (size_t i = 0; i + 1 < rank; i++) M *= dims[i];
    dims[rank - 1] = k->N;
    OrtValue *out;
    TRY(ORT_CALL(g_api, KernelContext_GetOutput)(ctx, 0, dims, rank, &out));
    if (M == 0) goto done;
    void *pa, *pb, *py;
    TRY(ORT_CALL(g_api, GetTensorMutableData)((OrtValue *)a, &pa));
    TRY(ORT_CALL(g_api, GetTensorMutableData)((OrtValue *)b, &pb));
    TRY(ORT_CALL(g_api, GetTensorMutableData)(out, &py));
    const int K = (int)k->K, nb = K / QK;
    /* scratch: qx (M*K int8), dx, sx (M*nb float), sumq (M*nb int32) */
    const size_t qbytes = ((size_t)M * K + 63) & ~(size_t)63;
    scratch = aligned_alloc(64, (qbytes + (size_t)M * nb * 12 + 63) & ~(size_t)63); /* C11: a multiple of 64 */
    if (!scratch) {
        st = status(ORT_ABI_FAIL, "edgeslm MatMul op: out of memory");
        goto done;
    }
    int8_t *qx = scratch;
    float *dx = (float *)((char *)scratch + qbytes), *sx = dx + (size_t)M * nb;
    int32_t *sumq = (int32_t *)(sx + (size_t)M * nb);
    q8_1_quantize_rows(pa, (int)M, K, qx, dx, sx, sumq, k->path);
    const int groups = (int)(k->N / ROWS);
    job_t2 j = {k, pb, (int)M, groups, qx, dx, sx, sumq, py};
    const size_t tiles = (size_t)(groups + TILE_GROUPS - 1) / TILE_GROUPS;
    if (g_parallel && tiles > 1) {
        TRY(ORT_CALL(g_api, KernelContext_ParallelFor)(ctx, run_tile, tiles, 0, &j));
    } else {
        for (size_t t = 0; t < tiles; t++) run_tile(&j, t);
    }
done:
    if (ia) ORT_CALL(g_api, ReleaseTensorTypeAndShapeInfo)(ia);
    if (ib) ORT_CALL(g_api, ReleaseTensorTypeAndShapeInfo)(ib);
    free(scratch);
    return st;
}

static void compute_v1(void *kernel, OrtKernelContext *ctx) {
    OrtStatus *st = compute(kernel, ctx);
    if (st) {
        fprintf(stderr, "edgeslm custom op: %s\n", ORT_CALL(g_api, GetErrorMessage)(st));
        ORT_CALL(g_api, ReleaseStatus)(st);
    }
}

#define OP(getname)                                                                                          \
    {ORT_ABI_VERSION, create_kernel_v1, getname, provider, input_type, two, output_type, one, compute_v1,    \
     destroy_kernel, required, required, mem_default, arity1, arity1, arity1, arity1, create_kernel, compute, \
     NULL, start_version, end_version, no_pairs, release_pairs, no_pairs, release_pairs}

static OrtCustomOp g_op41 = OP(name41), g_op80 = OP(name80);

/* "ort=<version> api=<n> path=<isa> parallel=<0|1>" after a successful registration, else "" */
const char *edgeslm_ops_info(void) { return g_info; }

/* the ABI checks of ort_abi.h; NULL if they pass, else why not */
static const char *check_abi(const OrtApiBase *base, const OrtApi **api_out) {
    if (!base || !base->GetApi || !base->GetVersionString) return "no OrtApiBase";
    const char *v = base->GetVersionString();
    int major = 0, minor = 0;
    if (!v || sscanf(v, "%d.%d", &major, &minor) != 2) return "onnxruntime's version string does not parse";
    if (major != 1 || minor < ORT_ABI_VERSION) return "onnxruntime older than 1.30 (the ops are declared against API 30)";
    const OrtApi *api = base->GetApi(ORT_ABI_VERSION);
    if (!api) return "onnxruntime refuses API version 30";
    OrtStatus *st = ((fn_CreateStatus)((const ort_slot_t *)(const void *)api)[SLOT_CreateStatus])(
        ORT_ABI_INVALID_ARGUMENT, "edgeslm-abi-probe");
    if (!st) return "CreateStatus probe returned NULL";
    const int code = ORT_CALL(api, GetErrorCode)(st);
    const char *m = ORT_CALL(api, GetErrorMessage)(st);
    const int ok = code == ORT_ABI_INVALID_ARGUMENT && m && !strcmp(m, "edgeslm-abi-probe");
    ORT_CALL(api, ReleaseStatus)(st);
    if (!ok) return "the CreateStatus/GetErrorCode/GetErrorMessage slots do not round-trip";
    const char *b = ORT_CALL(api, GetBuildInfoString)();
    if (!b || strncmp(b, "ORT Build Info", 14)) return "the GetBuildInfoString slot (254) does not answer as expected";
    *api_out = api;
    return NULL;
}

OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = NULL;
    const char *why = check_abi(base, &api);
    if (why) {
        fprintf(stderr, "edgeslm custom ops: %s\n", why);
        if (api || (base && base->GetApi && (api = base->GetApi(ORT_ABI_VERSION)) != NULL))
            return ((fn_CreateStatus)((const ort_slot_t *)(const void *)api)[SLOT_CreateStatus])(ORT_ABI_FAIL, why);
        return NULL; /* cannot report through onnxruntime; the session then fails on the unknown op */
    }
    g_api = api;
    const char *par = getenv("EDGESLM_KERNEL_PARALLEL");
    g_parallel = !(par && !strcmp(par, "0"));
    if (env_path() < 0 || q41_resolve(env_path()) < 0)
        return status(ORT_ABI_INVALID_ARGUMENT, "edgeslm custom ops: EDGESLM_KERNEL_PATH is not one of "
                                                "auto/scalar/avx2/avx512 supported by this CPU");
    OrtCustomOpDomain *domain;
    OrtStatus *st = ORT_CALL(api, CreateCustomOpDomain)("ai.edgeslm", &domain);
    if (!st) st = ORT_CALL(api, CustomOpDomain_Add)(domain, &g_op41);
    if (!st) st = ORT_CALL(api, CustomOpDomain_Add)(domain, &g_op80);
    if (!st) st = ORT_CALL(api, AddCustomOpDomain)(options, domain);
    /* the domain must outlive every session created with these options: it is never released */
    if (!st) {
        static const char *names[] = {"?", "scalar", "avx2", "avx512"};
        snprintf(g_info, sizeof g_info, "ort=%s api=%d path=%s parallel=%d", base->GetVersionString(), ORT_ABI_VERSION,
                 names[q41_resolve(env_path())], g_parallel);
    }
    return st;
}
