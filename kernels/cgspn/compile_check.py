"""Compile every C-GSPN Triton kernel ahead of time for a GPU target, without a GPU.

Catches lowering errors (layouts, gather, barriers inside loops) and local-memory arrays in the
PTX on a CPU machine, and reports registers per thread and ptxas stack (spill) bytes from
``cuobjdump -res-usage`` of the cubin (the cuobjdump Triton ships; informative only: the device's
Triton/ptxas may allocate differently): ``python -m kernels.cgspn.compile_check [--arch 90]``. Must run without
``TRITON_INTERPRET`` (under the interpreter the kernels are not compilable objects).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread and stack bytes of a compiled kernel, from Triton's bundled cuobjdump
    (empty if it is absent)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool) or not cubin:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    return {key.lower(): int(m.group(1)) for key in ("REG", "STACK") if (m := re.search(rf"{key}:(\d+)", out))}


def compile_all(arch: int = 90) -> list[dict]:
    """Compile each kernel at a representative configuration; one dict per kernel (name, spills)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.cgspn import gate_norm, scan_pairs
    from kernels.cgspn import scan_directions as directions
    from kernels.cgspn import scan_quad as quad
    from kernels.cgspn.scan_common import SHIFT_GATHER, SHIFT_SCRATCH

    target = GPUTarget("cuda", arch, 32)
    SIZES = ("L", "P", "C", "N", "H", "W", "HW")  # extents: not specialized (any value)

    def build(kernel, constexprs: dict, pointers: dict, num_warps: int) -> dict:
        fn = kernel.fn if hasattr(kernel, "configs") else kernel  # under @triton.autotune, or plain
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in constexprs:
                signature[name] = "constexpr"
                continue
            signature[name] = "i32" if name.startswith("s_") or name in SIZES else pointers.get(name, "*fp32")
            if name not in SIZES:
                # what the JIT tells the compiler at run time for 16-aligned pointers and strides
                # (C multiple of 16): without it loads are not vectorized and registers double
                attrs[(i,)] = [["tt.divisibility", 16]]
        source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                           attrs=attrs)
        compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
        return {"kernel": fn.__name__, "constexprs": constexprs, "num_warps": num_warps,
                "spills": ".local" in compiled.asm["ptx"], **resource_usage(compiled.asm.get("cubin", b""))}

    bf16 = {n: "*bf16" for n in ("x", "lam", "u", "g", "y", "h", "h_fwd", "h_rev", "out_v", "out_h", "hs", "dh", "adj", "dgs",
                                 "dy", "du", "dx", "dlam", "dg")}
    out = []
    for shift in (SHIFT_GATHER, SHIFT_SCRATCH):
        for bc, warps in ((4, 4), (8, 4), (16, 8)):
            for depth in (1, 2):
                for bp, w in ((128, max(1, warps // 2)), (256, warps)):
                    fwd = dict(SHIFT=shift, WIDE=False, DEPTH=depth, BP=bp, BC=bc)
                    out.append(build(quad._scan_quad_fwd_kernel, fwd, bf16, w))
            out.append(build(quad._scan_quad_bwd_kernel, dict(SHIFT=shift, WIDE=False, BP=256, BC=bc), bf16, warps))
        out.append(build(quad._scan_quad_fwd_kernel, dict(SHIFT=shift, WIDE=True, DEPTH=1, BP=256, BC=8), bf16, 8))
        out.append(build(quad._scan_quad_bwd_kernel, dict(SHIFT=shift, WIDE=True, BP=256, BC=8), bf16, 8))
        for first, final in ((True, False), (False, True)):
            pair = dict(FIRST=first, FINAL=final, STORE_H=True, SHIFT=shift, BP=256, BC=8)
            out.append(build(scan_pairs._scan_pair_fwd_kernel, pair, bf16, 8))
        fwd = dict(REVERSE=True, NORMALIZE=True, SHIFT=shift, BP=128, BC=16)
        out.append(build(directions._propagate_fwd_kernel, fwd, bf16, 8))
        bwd = dict(REVERSE=False, NORMALIZE=True, ACCUMULATE=True, SHIFT=shift, BP=256, BC=16)
        out.append(build(directions._propagate_bwd_kernel, bwd, bf16, 16))
    for kernel in (quad._combine_kernel, quad._bwd_prologue_kernel, quad._bwd_epilogue_kernel):
        out.append(build(kernel, dict(BN=64, BC=64), bf16, 4))
    out.append(build(gate_norm._normalize_gates_kernel, dict(VERTICAL=True, HORIZONTAL=True, BN=64, BC=32), bf16, 4))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: Hopper)")
    args = parser.parse_args(argv)
    results = compile_all(args.arch)
    for r in results:
        regs = f", {r['reg']} registers, {r.get('stack', 0)} B stack" if "reg" in r else ""
        print(f"{r['kernel']:28s} {r['constexprs']} warps={r['num_warps']}: compiled{regs}{' (SPILLS)' if r['spills'] else ''}")
    return 1 if any(r["spills"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
