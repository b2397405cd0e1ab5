"""Where the UResNet's training step loses to PyTorch on the CPU: the weight gradient of a conv.

For 3×3 SAME convolutions with C_in = C_out = C on N×H×W×C inputs (N = 3: the three wire
planes of one SBND event, the shapes of the Table 1 network's levels at 640×1024), times

  forward   ``lax.conv_general_dilated`` (NHWC / HWIO), what the forward pass runs;
  xla       XLA's weight gradient, ``jax.vjp`` of the forward conv with respect to w —
            what ``jax.grad`` of the network runs;
  shift     dW[a, b] = Σ x_pad[:, a:a+H, b:b+W]ᵀ · dy: nine shifted GEMMs, contraction N·H·W;
  chunked   the same with N·H·W split into blocks of ``--chunk`` rows (batched GEMMs, summed);
  im2col    ``conv_general_dilated_patches`` then one [9C × NHW]·[NHW × C] GEMM;
  blocked   im2col by slicing, in row blocks of ~1 MB, one [C × rows]·[rows × 9C] GEMM each
            (accumulated in a ``fori_loop``): the fastest in isolation from C = 16 on, yet no
            faster inside the UResNet's training step (BENCHMARKS.md);
  nchw      XLA's own weight gradient of the same conv written NCHW / OIHW,

all in float32, each checked against ``xla`` (max |a − b| / max |xla|; float32 sums of up to
N·H·W ≈ 2·10⁶ products, so ~1e-5 is rounding). Same arithmetic in every column but
``forward``'s equals it too: a slow column is a slow kernel, not more work. Times are
medians of ``--repeats`` warm calls on however many CPUs the process may use (pin with
``taskset -c 0`` for one core). The figures quoted in BENCHMARKS.md came from this script.

  taskset -c 0 python scripts/profile_conv_wgrad.py                  # ~1-2 min
  python scripts/profile_conv_wgrad.py --shapes 3x160x256x32 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recoil_jax.ops import conv as conv_ops

DEFAULT_SHAPES = "3x640x1024x8,3x320x512x16,3x160x256x32,3x80x128x64,3x40x64x128"
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """SAME, stride 1: x [N, H, W, C_in], w [k, k, C_in, C_out] → [N, H, W, C_out]."""
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)


def wgrad_xla(x: jax.Array, w: jax.Array, dy: jax.Array) -> jax.Array:
  _, vjp = jax.vjp(lambda w_: conv(x, w_), w)
  return vjp(dy)[0]


def _padded(x: jax.Array, k: int) -> jax.Array:
  p = k // 2
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def wgrad_shift(x: jax.Array, dy: jax.Array, k: int) -> jax.Array:
  n, h, w, c = x.shape
  xp, d = _padded(x, k), dy.reshape(-1, dy.shape[-1])
  taps = [xp[:, a:a + h, b:b + w].reshape(-1, c).T @ d for a in range(k) for b in range(k)]
  return jnp.stack(taps).reshape(k, k, c, -1)


def wgrad_chunked(x: jax.Array, dy: jax.Array, k: int, chunk: int) -> jax.Array:
  n, h, w, c = x.shape
  rows = n * h * w
  if rows % chunk:
    raise ValueError(f"--chunk {chunk} must divide N·H·W = {rows}")
  xp, d = _padded(x, k), dy.reshape(rows // chunk, chunk, -1)
  taps = [jnp.einsum("bki,bko->io", xp[:, a:a + h, b:b + w].reshape(rows // chunk, chunk, c), d)
          for a in range(k) for b in range(k)]
  return jnp.stack(taps).reshape(k, k, c, -1)


def wgrad_im2col(x: jax.Array, dy: jax.Array, k: int) -> jax.Array:
  c = x.shape[-1]
  patches = lax.conv_general_dilated_patches(x, (k, k), (1, 1), "SAME",
                                             dimension_numbers=_NHWC)  # channels (c, kh, kw)
  g = patches.reshape(-1, c * k * k).T @ dy.reshape(-1, dy.shape[-1])
  return g.reshape(c, k, k, -1).transpose(1, 2, 0, 3)


def wgrad_blocked(x: jax.Array, dy: jax.Array, k: int) -> jax.Array:
  """Row blocks of ~1 MB of im2col, one GEMM dyᵀ·cols per block: the library's
  ``recoil_jax.ops.conv.blocked_weight_gradient``, which the UResNet uses for its 8–64-channel
  3×3 convolutions on large maps."""
  return conv_ops.blocked_weight_gradient(x, dy, k)


def wgrad_nchw(x: jax.Array, w: jax.Array, dy: jax.Array) -> jax.Array:
  xt = x.transpose(0, 3, 1, 2)
  _, vjp = jax.vjp(lambda w_: lax.conv_general_dilated(xt, w_.transpose(3, 2, 0, 1), (1, 1),
                                                       "SAME"), w)
  return vjp(dy.transpose(0, 3, 1, 2))[0]


def routes(k: int, chunk: int) -> dict:
  """name → jitted f(x, w, dy), every one returning the weight gradient [k, k, C, C]."""
  return {
      "xla": jax.jit(wgrad_xla),
      "shift": jax.jit(lambda x, w, dy: wgrad_shift(x, dy, k)),
      "chunked": jax.jit(lambda x, w, dy: wgrad_chunked(x, dy, k, chunk)),
      "im2col": jax.jit(lambda x, w, dy: wgrad_im2col(x, dy, k)),
      "blocked": jax.jit(lambda x, w, dy: wgrad_blocked(x, dy, k)),
      "nchw": jax.jit(wgrad_nchw),
  }


def _median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of NxHxWxC")
  p.add_argument("--kernel", type=int, default=3)
  p.add_argument("--chunk", type=int, default=1536,
                 help="rows per block of 'chunked' (1536 divides N·H·W of every default shape)")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  k = args.kernel
  print(f"# weight gradient of a {k}x{k} SAME conv, float32, {len(os.sched_getaffinity(0))} "
        f"CPU(s), load {os.getloadavg()[0]:.2f}; ms (median of {args.repeats}), "
        "[max relative difference to xla]")
  fns = routes(k, args.chunk)
  print("| N×H×W×C | forward | " + " | ".join(fns) + " |")
  print("|---" * (len(fns) + 2) + "|")
  for spec in args.shapes.split(","):
    n, h, w, c = (int(v) for v in spec.split("x"))
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, w, c))
    wt = 0.1 * jax.random.normal(keys[1], (k, k, c, c))
    dy = jax.random.normal(keys[2], (n, h, w, c))
    ref = fns["xla"](x, wt, dy)
    cells = [f"{_median_ms(jax.jit(conv), (x, wt), args.repeats):.1f}"]
    for name, fn in fns.items():
      try:
        err = float(jnp.max(jnp.abs(fn(x, wt, dy) - ref)) / jnp.max(jnp.abs(ref)))
        cells.append(f"{_median_ms(fn, (x, wt, dy), args.repeats):.1f} [{err:.0e}]")
      except ValueError as e:  # chunk does not divide this shape
        cells.append(f"– ({e})")
    print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
