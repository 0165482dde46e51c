# PCIe copy rates between pinned host memory and the GPU, alone and beside
# GEMMs (issue 8, v16: activations kept in host memory instead of
# recomputed). Prints GB/s for D2H, H2D, both at once, and the GEMM
# loop's slowdown while copies run.
import time, torch
torch.cuda.init()
dev = torch.device("cuda")
n = 32 << 20  # 32 MiB: one layer's gate_up output in bf16 (33.5 MB)
reps = 30
g = torch.empty(n, dtype=torch.uint8, device=dev)
g2 = torch.empty(n, dtype=torch.uint8, device=dev)
h = torch.empty(n, dtype=torch.uint8).pin_memory()
h2 = torch.empty(n, dtype=torch.uint8).pin_memory()
s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

def rate(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t

def d2h():
    with torch.cuda.stream(s1):
        for _ in range(reps):
            h.copy_(g, non_blocking=True)
def h2d():
    with torch.cuda.stream(s2):
        for _ in range(reps):
            g2.copy_(h2, non_blocking=True)
def both():
    d2h(); h2d()
for name, fn, k in [("d2h", d2h, 1), ("h2d", h2d, 1), ("both", both, 2)]:
    rate(fn)
    t = rate(fn)
    print(f"{name}: {k*n*reps/t/1e9:.1f} GB/s ({t/reps*1e3:.3f} ms per 32 MiB)")
a = torch.randn(1024, 3072, device=dev, dtype=torch.bfloat16)
w = torch.randn(16384, 3072, device=dev, dtype=torch.bfloat16)
def gemms():
    for _ in range(200):
        a @ w.t()
rate(gemms)
t0 = rate(gemms)
torch.cuda.synchronize()
t = time.perf_counter()
both(); gemms()
torch.cuda.synchronize()
t1 = time.perf_counter() - t
print(f"200 gate_up GEMMs: {t0*1e3:.1f} ms alone, {t1*1e3:.1f} ms with {2*reps} copies of 32 MiB beside")
