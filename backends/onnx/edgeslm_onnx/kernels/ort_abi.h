/* The few pieces of onnxruntime's C ABI that ort_ops.c uses, declared by hand (no onnxruntime
 * header ships on the machines this builds on). Written for edgeslm, not copied from onnxruntime.
 *
 * What is relied on, and how it is checked at run time (ort_ops.c, RegisterCustomOps):
 *  - OrtApiBase: two function pointers, GetApi(version) then GetVersionString(). GetApi(ORT_ABI_VERSION)
 *    must return non-NULL (runtimes older than the version refuse it), GetVersionString must parse
 *    as 1.x with x >= ORT_ABI_VERSION.
 *  - OrtApi: a table of function pointers; onnxruntime only ever appends to it, so a slot's index is
 *    fixed once it exists. The indices below were counted in onnxruntime_c_api.h (ORT_API_VERSION 30)
 *    and are probed: CreateStatus/GetErrorCode/GetErrorMessage/ReleaseStatus round-trip a status,
 *    and GetBuildInfoString (slot 254, after all others used but KernelContext_ParallelFor) must
 *    return a string starting "ORT Build Info".
 *  - OrtCustomOp: a struct of a version and function pointers, read by onnxruntime up to the
 *    fields that exist at the version the op declares (ORT_ABI_VERSION: every field below).
 */
#ifndef EDGESLM_ORT_ABI_H
#define EDGESLM_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define ORT_ABI_VERSION 30 /* onnxruntime 1.30+; edgeslm's pinned runtime is 1.32 */

typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;
typedef struct OrtApi OrtApi; /* opaque: used only as a table of slots */
struct OrtCustomOp;

typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

/* element types (TensorProto.DataType numbering) and error codes used here */
enum { ORT_ABI_FLOAT = 1, ORT_ABI_UINT8 = 2 };
enum { ORT_ABI_OK = 0, ORT_ABI_FAIL = 1, ORT_ABI_INVALID_ARGUMENT = 2 };

/* slot indices in the OrtApi table */
enum {
    SLOT_CreateStatus = 0,
    SLOT_GetErrorCode = 1,
    SLOT_GetErrorMessage = 2,
    SLOT_CreateCustomOpDomain = 26,
    SLOT_CustomOpDomain_Add = 27,
    SLOT_AddCustomOpDomain = 28,
    SLOT_GetTensorMutableData = 51,
    SLOT_GetTensorElementType = 60,
    SLOT_GetDimensionsCount = 61,
    SLOT_GetDimensions = 62,
    SLOT_GetTensorShapeElementCount = 64,
    SLOT_GetTensorTypeAndShape = 65,
    SLOT_KernelInfoGetAttribute_int64 = 86,
    SLOT_KernelContext_GetInput = 90,
    SLOT_KernelContext_GetOutput = 91,
    SLOT_ReleaseStatus = 93,
    SLOT_ReleaseTensorTypeAndShapeInfo = 99,
    SLOT_GetBuildInfoString = 254,
    SLOT_KernelContext_ParallelFor = 274,
};

typedef OrtStatus *(*fn_CreateStatus)(int code, const char *msg);
typedef int (*fn_GetErrorCode)(const OrtStatus *);
typedef const char *(*fn_GetErrorMessage)(const OrtStatus *);
typedef OrtStatus *(*fn_CreateCustomOpDomain)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*fn_CustomOpDomain_Add)(OrtCustomOpDomain *, const struct OrtCustomOp *);
typedef OrtStatus *(*fn_AddCustomOpDomain)(OrtSessionOptions *, OrtCustomOpDomain *);
typedef OrtStatus *(*fn_GetTensorMutableData)(OrtValue *, void **out);
typedef OrtStatus *(*fn_GetTensorElementType)(const OrtTensorTypeAndShapeInfo *, int *out);
typedef OrtStatus *(*fn_GetDimensionsCount)(const OrtTensorTypeAndShapeInfo *, size_t *out);
typedef OrtStatus *(*fn_GetDimensions)(const OrtTensorTypeAndShapeInfo *, int64_t *dims, size_t n);
typedef OrtStatus *(*fn_GetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo *, size_t *out);
typedef OrtStatus *(*fn_GetTensorTypeAndShape)(const OrtValue *, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*fn_KernelInfoGetAttribute_int64)(const OrtKernelInfo *, const char *name, int64_t *out);
typedef OrtStatus *(*fn_KernelContext_GetInput)(const OrtKernelContext *, size_t index, const OrtValue **out);
typedef OrtStatus *(*fn_KernelContext_GetOutput)(OrtKernelContext *, size_t index, const int64_t *dims, size_t n,
                                                 OrtValue **out);
typedef void (*fn_ReleaseStatus)(OrtStatus *);
typedef void (*fn_ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo *);
typedef const char *(*fn_GetBuildInfoString)(void);
typedef OrtStatus *(*fn_KernelContext_ParallelFor)(const OrtKernelContext *, void (*fn)(void *, size_t), size_t total,
                                                   size_t num_batch, void *user);

typedef void (*ort_slot_t)(void);
#define ORT_CALL(api, name) ((fn_##name)(((const ort_slot_t *)(const void *)(api))[SLOT_##name]))

/* OrtCustomOp, every field up to ORT_ABI_VERSION, in order */
typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *, const OrtApi *, const OrtKernelInfo *);
    const char *(*GetName)(const struct OrtCustomOp *);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *);
    int (*GetInputType)(const struct OrtCustomOp *, size_t index);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *);
    int (*GetOutputType)(const struct OrtCustomOp *, size_t index);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *);
    void (*KernelCompute)(void *kernel, OrtKernelContext *);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *, size_t index);  /* 0 = required */
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *, size_t index);
    int (*GetInputMemoryType)(const struct OrtCustomOp *, size_t index);       /* 0 = default */
    int (*GetVariadicInputMinArity)(const struct OrtCustomOp *);
    int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *);
    int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *);
    int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *);
    OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *, const OrtApi *, const OrtKernelInfo *, void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *);
    OrtStatus *(*InferOutputShapeFn)(const struct OrtCustomOp *, OrtShapeInferContext *);
    int (*GetStartVersion)(const struct OrtCustomOp *);
    int (*GetEndVersion)(const struct OrtCustomOp *);
    size_t (*GetMayInplace)(int **input_index, int **output_index);
    void (*ReleaseMayInplace)(int *input_index, int *output_index);
    size_t (*GetAliasMap)(int **input_index, int **output_index);
    void (*ReleaseAliasMap)(int *input_index, int *output_index);
} OrtCustomOp;

#endif
