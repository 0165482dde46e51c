// attnfloor: where the time of Phi-3-mini's attention kernels goes (issue 8,
// v20). attn_fwd_bf16_h_rp96 and attn_bwd_bf16_hh_rp96 (attention_tc.cuh,
// the step's attention: B 16 rows of S 64 tokens, 32 heads of 96 values,
// RoPE over the whole head, qkv and dqkv in bfloat16) and their v20 forms
// (the backend's _rp96v entry points) are timed as the backend launches
// them, the v20 forms' outputs compared with the others' bit for bit; then
// each cut after a phase (the bodies' STOP: timing only; "loads" reads the
// operands into shared memory and stops, and so on). Last, ab_div_mk
// against __fdiv_rn for every float in [2^-100, 1] and 1,024 divisors.
// (The variants tried in v20, BENCHMARKS.md, were copies of the bodies in
// attnfloor_fwd.cuh and attnfloor_bwd.cuh: in git history at b0f4b29.)
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false -I../../../cuda/kernels -o /tmp/attnfloor attnfloor.cu && /tmp/attnfloor
// (on the GPU machine; -fmad=false as the backend's PTX).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cmath>
#include "attention_tc.cuh"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

const int B = 16, S = 64, H = 32, D = 96, HALF = 48, T = B * S, W = 3 * H * D;

// fwd<V20, STOP>, bwd<V20, STOP>: the backend's bodies at the step's
// shapes (SPEC, DC 96); V20 false is the _rp96 kernel, true the _rp96v.
template <bool V20, int STOP>
__global__ void __launch_bounds__(AB_THREADS, 4) fwd(float* out, float* lse, const bf16_t* qkv, const int* pos, i64 B,
        i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, const float2* cs, i64 half) {
    attn_fwd_bf16_body<bf16_t, true, 96, V20, STOP>(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}
template <bool V20, int STOP>
__global__ void __launch_bounds__(AB_THREADS, 2) bwd(bf16_t* dqkv, const float* dout, const float* out,
        const float* lse, const bf16_t* qkv, const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window,
        double scale_d, i64 accum, const float2* cs, i64 half) {
    attn_bwd_bf16_body<bf16_t, bf16_t, true, 96, V20, STOP>(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, window,
                                                            scale_d, accum, cs, half);
}

// ---------------------------------------------------------------------------
// Host side.

struct Set { bf16_t* qkv; float *dout, *out, *lse; bf16_t* dqkv; };
const int SETS = 4;  // 4 x ~70 MB: past the L2 cache
Set sets[SETS];
int* pos;
float2* cs;
float *out2, *lse2;
bf16_t* dqkv2;

static unsigned short h_bf16(float f) { unsigned u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return (unsigned short)(u >> 16); }

template <typename F>
float timeit(F launch, int n = 100) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    for (int i = 0; i < 10; i++) launch(sets[i % SETS]);
    CK(cudaEventRecord(a));
    for (int i = 0; i < n; i++) launch(sets[i % SETS]);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaGetLastError());
    return 1000.0f * ms / n;
}

template <typename X>
bool same(const char* what, const X* a, const X* b, size_t n) {
    std::vector<X> x(n), y(n);
    CK(cudaMemcpy(x.data(), a, n * sizeof(X), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(y.data(), b, n * sizeof(X), cudaMemcpyDeviceToHost));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&x[i], &y[i], sizeof(X)) != 0) { if (!bad) first = i; bad++; }
    if (bad) printf("  %s: %zu of %zu differ (first at %zu)\n", what, bad, n, first);
    return bad == 0;
}

const double scale = 1.0 / sqrt(96.0);
int fwd_smem = 2 * 64 * (104 + 2 * 104) + 4 * 4 * 64;
int bwd_smem = 2 * 4 * 64 * 104 + 2 * 2 * 64 * 72 + 4 * 2 * 64 + 8 * 64 * 48;

#define FWD_ARGS(s) s.out, s.lse, s.qkv, pos, (i64)B, (i64)S, (i64)H, (i64)H, (i64)D, (i64)0, scale, cs, (i64)HALF
#define BWD_ARGS(s) s.dqkv, s.dout, s.out, s.lse, s.qkv, pos, (i64)B, (i64)S, (i64)H, (i64)H, (i64)D, (i64)0, scale, (i64)0, cs, (i64)HALF

// div_check: ab_div_mk against __fdiv_rn for every float x in [2^-100, 1]
// (and 0) and the divisors s[blockIdx.y]; bad counts the differences.
extern "C" __global__ void div_check(const float* sv, unsigned long long* bad) {
    const float s = sv[blockIdx.y], r = __frcp_rn(s);
    const bool fast = s >= 1.0f && s <= 0x1p100f;
    const unsigned lo = 0x0d800000u, hi = 0x3f800000u;  // 2^-100 .. 1
    unsigned long long n = 0;
    for (unsigned u = lo + blockIdx.x * blockDim.x + threadIdx.x; u <= hi; u += gridDim.x * blockDim.x) {
        const float x = __uint_as_float(u);
        n += __float_as_uint(ab_div_mk(x, s, r, fast)) != __float_as_uint(__fdiv_rn(x, s));
    }
    if (threadIdx.x == 0 && blockIdx.x == 0) n += __float_as_uint(ab_div_mk(0.0f, s, r, fast)) != 0u;
    if (n) atomicAdd(bad, n);
}

bool (*check_outputs)();

template <typename K>
void attr(K k, int smem) { CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem)); }

// one times kernel k (launched by launch(k, set)). With check (set 0 with
// the spare outputs of the kind it compares), it first runs into those
// and compares them with set 0's, the _rp96 kernels' outputs, before the
// timing runs overwrite set 0's (attnfloor's first form compared after
// them: a kernel with itself).
template <typename Kern, typename L>
void one(const char* name, Kern k, int smem, L launch, const Set* check = nullptr) {
    attr(k, smem);
    bool ok = true;
    if (check) {
        Set s = *check;
        if (s.out == out2) CK(cudaMemset(out2, 0xff, (size_t)T * H * D * 4));
        if (s.dqkv == dqkv2) CK(cudaMemset(dqkv2, 0xff, (size_t)T * W * 2));
        launch(k, s);
        CK(cudaDeviceSynchronize());
        ok = check_outputs();
    }
    const float us = timeit([&](Set& s) { launch(k, s); });
    printf("  %-32s %7.2f%s\n", name, us, !check ? "" : ok ? "  same bits" : "  DIFFERENT");
}

int main(int argc, char** argv) {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("# %s, %d SMs; B %d S %d H %d D %d\n", p.name, p.multiProcessorCount, B, S, H, D);
    srand(1);
    std::vector<unsigned short> hq((size_t)T * W);
    std::vector<float> hd((size_t)T * H * D);
    for (int s = 0; s < SETS; s++) {
        for (auto& v : hq) v = h_bf16((float)rand() / RAND_MAX * 4 - 2);
        for (auto& v : hd) v = (float)rand() / RAND_MAX * 2 - 1;
        CK(cudaMalloc(&sets[s].qkv, hq.size() * 2));
        CK(cudaMalloc(&sets[s].dqkv, hq.size() * 2));
        CK(cudaMalloc(&sets[s].dout, hd.size() * 4));
        CK(cudaMalloc(&sets[s].out, hd.size() * 4));
        CK(cudaMalloc(&sets[s].lse, (size_t)H * T * 4));
        CK(cudaMemcpy(sets[s].qkv, hq.data(), hq.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(sets[s].dout, hd.data(), hd.size() * 4, cudaMemcpyHostToDevice));
    }
    std::vector<int> hp(T);
    std::vector<float2> hc((size_t)T * HALF);
    for (int t = 0; t < T; t++) {
        // packed rows: sequences of 13..30 tokens restart their positions
        int i = t % S;
        hp[t] = i < 20 ? i : (i < 45 ? i - 20 : i - 45);
        for (int k = 0; k < HALF; k++) {
            double f = pow(10000.0, -2.0 * k / 96.0) * hp[t];
            hc[(size_t)t * HALF + k] = make_float2((float)cos(f), (float)sin(f));
        }
    }
    CK(cudaMalloc(&pos, T * 4));
    CK(cudaMalloc(&cs, hc.size() * 8));
    CK(cudaMemcpy(pos, hp.data(), T * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(cs, hc.data(), hc.size() * 8, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&out2, hd.size() * 4));
    CK(cudaMalloc(&lse2, (size_t)H * T * 4));
    CK(cudaMalloc(&dqkv2, hq.size() * 2));

    dim3 grid(H, B);
    auto lf = [&](auto k, Set& s) { k<<<grid, 256, fwd_smem>>>(FWD_ARGS(s)); };
    auto lb = [&](auto k, Set& s) { k<<<grid, 256, bwd_smem>>>(BWD_ARGS(s)); };
    attr(fwd<false, 0>, fwd_smem);
    attr(bwd<false, 0>, bwd_smem);
    // Reference outputs: every set's out and lse (the backward's inputs),
    // set 0's dqkv.
    for (int s = 0; s < SETS; s++) lf(fwd<false, 0>, sets[s]);
    lb(bwd<false, 0>, sets[0]);
    CK(cudaDeviceSynchronize());

    printf("forward (us a launch, 4 sets of operands in turn)\n");
    check_outputs = []() -> bool { return same("out", out2, sets[0].out, (size_t)T * H * D) & same("lse", lse2, sets[0].lse, (size_t)H * T); };
    Set fcheck = sets[0];
    fcheck.out = out2, fcheck.lse = lse2;
    one("attn_fwd_bf16_h_rp96", fwd<false, 0>, fwd_smem, lf);
    one("attn_fwd_bf16_h_rp96v (v20)", fwd<true, 0>, fwd_smem, lf, &fcheck);
    one("_rp96: loads only", fwd<false, 1>, fwd_smem, lf);
    one("_rp96: + scores, softmax", fwd<false, 2>, fwd_smem, lf);
    one("_rp96v: loads only", fwd<true, 1>, fwd_smem, lf);
    one("_rp96v: + scores, softmax", fwd<true, 2>, fwd_smem, lf);
    // The timing cuts wrote over the sets' outputs: the backward's inputs
    // and set 0's reference dqkv again.
    for (int s = 0; s < SETS; s++) lf(fwd<false, 0>, sets[s]);
    lb(bwd<false, 0>, sets[0]);
    CK(cudaDeviceSynchronize());
    printf("backward\n");
    check_outputs = []() -> bool { return same("dqkv", dqkv2, sets[0].dqkv, (size_t)T * W); };
    Set bcheck = sets[0];
    bcheck.dqkv = dqkv2;
    one("attn_bwd_bf16_hh_rp96", bwd<false, 0>, bwd_smem, lb);
    one("attn_bwd_bf16_hh_rp96v (v20)", bwd<true, 0>, bwd_smem, lb, &bcheck);
    one("_rp96: loads, di", bwd<false, 1>, bwd_smem, lb);
    one("_rp96: + P, dS", bwd<false, 2>, bwd_smem, lb);
    one("_rp96: + dV", bwd<false, 3>, bwd_smem, lb);
    one("_rp96v: loads, di", bwd<true, 1>, bwd_smem, lb);
    one("_rp96v: + P, dS", bwd<true, 2>, bwd_smem, lb);
    one("_rp96v: + dV (staged)", bwd<true, 3>, bwd_smem, lb);

    // ab_div_mk: every x in [2^-100, 1] against 1024 divisors in [1, 64]:
    // 1, 64, each power of two and its neighbours, the rest drawn.
    std::vector<float> sv;
    for (int e = 0; e <= 6; e++) {
        const float p2 = ldexpf(1.0f, e);
        sv.push_back(p2);
        sv.push_back(nextafterf(p2, 0.0f));
        sv.push_back(nextafterf(p2, 100.0f));
    }
    while (sv.size() < 1024) sv.push_back(1.0f + 63.0f * (float)rand() / RAND_MAX);
    float* dsv;
    unsigned long long* dbad;
    CK(cudaMalloc(&dsv, sv.size() * 4));
    CK(cudaMalloc(&dbad, 8));
    CK(cudaMemcpy(dsv, sv.data(), sv.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(dbad, 0, 8));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0));
    div_check<<<dim3(1056, (unsigned)sv.size()), 256>>>(dsv, dbad);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    unsigned long long bad;
    CK(cudaMemcpy(&bad, dbad, 8, cudaMemcpyDeviceToHost));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    printf("ab_div_mk against __fdiv_rn: %zu divisors x %u quotients (every float in [2^-100, 1] and 0): %llu differ (%.0f ms)\n",
           sv.size(), 0x3f800000u - 0x0d800000u + 2, bad, ms);
    return 0;
}
