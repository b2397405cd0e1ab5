"""Where one UResNet step spends its time: XLA's ops from a profiler trace, beside PyTorch's.

Compiles the Table 1 UResNet (arXiv 2012.01301) train step (forward + backward + RMSProp, as
``scripts/bench_uresnet.py``) or forward at batch 1, runs warm steps, then traces one step with
``jax.profiler`` and matches every executed XLA op (thunk) to its HLO instruction in the
compiled module. Each op is put in one category:

  convolution forward / input gradient / weight gradient
      XLA keeps the source metadata (``op_name``) on forward convolutions (``jvp(...)``) and
      input gradients (``transpose(jvp(...))``); the weight-gradient convolutions it builds
      itself carry none, which is how they are told apart.
  matmul, layout copies (transpose / copy / pad / slice / concatenate only),
  reductions (BatchNorm statistics, pooling, the loss), elementwise (everything else:
  BatchNorm apply, LeakyReLU, sums, the optimizer).

and to a region of Table 1 (initial, down_i, deepest, up_i, final) from its ``op_name``;
ops without metadata are "unattributed". Page faults and system time per warm step come from
``getrusage``: XLA:CPU allocates its scratch (``memory_analysis().temp_size_in_bytes``) for
every execution, so each step touches fresh pages unless the C allocator keeps them
(``--malloc keep`` sets ``GLIBC_TUNABLES`` for this process and the peer's).

With ``--peer torch`` the CosmicTagger-style PyTorch network of ``bench_uresnet.py`` runs the
same step on the same inputs in its own process, under ``torch.profiler``, and its aten ops are
grouped into the same categories (PyTorch's convolution backward computes the input and the
weight gradient in one op).

  taskset -c 1 python scripts/profile_uresnet_step.py --size 128x256 --peer torch
  python scripts/profile_uresnet_step.py --size 640x1024 --cpus 1 --malloc keep --top 15
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:  # scripts/ is not a package; also when loaded by the tests
  sys.path.insert(0, SCRIPTS)
import bench_uresnet as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

KEEP_FREED_MEMORY = bench.KEEP_FREED_MEMORY
CATEGORIES = ("convolution forward", "convolution input gradient",
              "convolution weight gradient", "matmul", "layout copies", "reductions",
              "elementwise", "other")


# --- HLO text: instructions, their opcodes, fused computations and metadata -------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")


def parse_hlo(text: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines}, and the entry computation's name."""
  computations: dict[str, list[str]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      match = re.match(r"^(ENTRY )?%?([\w.\-]+)", line)
      if match:
        current = match.group(2)
        computations[current] = []
        entry = current if match.group(1) else entry
      continue
    if current is not None and line.startswith("  "):
      computations[current].append(line)
  return computations, entry


def _fields(line: str) -> dict | None:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  calls = re.search(r"calls=%([\w.\-]+)", line)
  op_name = re.search(r'op_name="([^"]*)"', line)
  return {"name": match.group(1), "shape": match.group(2), "opcode": match.group(3),
          "calls": calls.group(1) if calls else None,
          "op_name": op_name.group(1) if op_name else ""}


def _body(computations, name, depth=0) -> list[dict]:
  """Instructions of a computation and, recursively, of those it calls."""
  out = []
  for line in computations.get(name, []):
    fields = _fields(line)
    if fields:
      out.append(fields)
      if fields["calls"] and depth < 4:
        out += _body(computations, fields["calls"], depth + 1)
  return out


_LAYOUT_OPS = {"copy", "transpose", "bitcast", "reshape", "pad", "slice", "concatenate",
               "reverse", "broadcast", "parameter", "constant", "dynamic-slice",
               "dynamic-update-slice", "tuple", "get-tuple-element"}


def categorise(instruction: dict, computations) -> str:
  """One of ``CATEGORIES`` for a top-level instruction (module docstring)."""
  body = _body(computations, instruction["calls"]) if instruction["calls"] else [instruction]
  opcodes = {b["opcode"] for b in body}
  convs = [b for b in body if b["opcode"] == "convolution"]
  if convs:
    op_name = convs[0]["op_name"] or instruction["op_name"]
    if not convs[0]["op_name"]:
      return "convolution weight gradient"
    return "convolution input gradient" if "transpose(" in op_name else "convolution forward"
  if "dot" in opcodes:
    return "matmul"
  if opcodes <= _LAYOUT_OPS:
    return "layout copies"
  if opcodes & {"reduce", "reduce-window", "select-and-scatter", "scatter"}:
    return "reductions"
  if opcodes - _LAYOUT_OPS:
    return "elementwise"
  return "other"


def region(op_name: str) -> str:
  """Table 1 row of an op from its metadata path ('unattributed' when it has none)."""
  if not op_name:
    return "unattributed"
  match = re.search(r"/(initial|down_\d+|up_\d+|final)/", op_name + "/")
  if match:
    return match.group(1)
  if "/deepest/" in op_name:
    return "deepest"
  return "loss and optimizer" if "UResNet" not in op_name else "other network"


def summarise_trace(trace_dir: str, hlo_text: str) -> dict:
  """Per-category and per-region op time of the traced step, and the longest ops."""
  files = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[0]) as f:
    events = json.load(f)["traceEvents"]
  computations, entry = parse_hlo(hlo_text)
  instructions = {f["name"]: f for f in map(_fields, computations[entry]) if f}
  by_category: collections.Counter = collections.Counter()
  by_region: collections.Counter = collections.Counter()
  ops = []
  for event in events:
    instruction = instructions.get(event.get("name")) if event.get("ph") == "X" else None
    if instruction is None:
      continue
    ms = event["dur"] / 1e3
    category = categorise(instruction, computations)
    where = region(instruction["op_name"])
    by_category[category] += ms
    by_region[where] += ms
    ops.append((ms, instruction["name"], category, instruction["shape"].split("{")[0], where))
  ops.sort(reverse=True)
  return {"op_ms": sum(by_category.values()), "categories": dict(by_category),
          "regions": dict(by_region), "ops": ops}


# --- workers ----------------------------------------------------------------------------------


def _warm_steps(run, steps: int) -> dict:
  """One warm-up call, then ``steps`` timed ones: median wall time, page faults, system time."""
  run()
  times, faults, system = [], [], []
  for _ in range(steps):
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults.append(after.ru_minflt - before.ru_minflt)
    system.append(after.ru_stime - before.ru_stime)
  return {"step_s": float(np.median(times)), "steps_s": times,
          "minor_faults": int(np.median(faults)), "system_s": float(np.median(system))}


def worker_jax(spec: dict) -> dict:
  """Compile, time warm steps, trace one; return the summary."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops import conv as conv_ops  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top

  if spec.get("blocked_max_channels") is not None:  # read when the step is traced
    conv_ops.BLOCKED_WGRAD_MAX_CHANNELS = spec["blocked_max_channels"]
  model = uresnet.UResNet(**spec["model"])
  height, width = spec["size"]
  images, labels = map(jnp.asarray, bench._inputs(1, height, width))  # pylint: disable=protected-access
  variables = bench._init(model, jax, jnp)  # pylint: disable=protected-access
  if spec["mode"] == "forward":
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
        variables, images).compile()
    run = lambda: compiled(variables, images).block_until_ready()  # noqa: E731
  else:
    opt = bench._optimizer()  # pylint: disable=protected-access
    state = [(variables["params"], variables["batch_stats"], opt.init(variables["params"]))]
    compiled = jax.jit(bench.train_step(model, opt), donate_argnums=0).lower(
        state[0], images, labels).compile()

    def run():
      state[0], loss = compiled(state[0], images, labels)
      loss.block_until_ready()

  timing = _warm_steps(run, spec["steps"])
  trace_dir = spec["trace_dir"]
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  run()
  jax.profiler.stop_trace()
  summary = summarise_trace(trace_dir, compiled.as_text())
  summary["ops"] = summary["ops"][:spec["top"]]
  return {**timing, "scratch_gb": compiled.memory_analysis().temp_size_in_bytes / 1e9,
          **summary}


_TORCH_GROUPS = (  # (category, aten op name patterns), first match wins
    ("convolution backward (input + weight)", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d", "mkldnn_conv")),
    ("matmul", ("addmm", "matmul", "mm", "bmm")),
    ("layout copies", ("copy_", "contiguous", "clone", "cat", "pad", "transpose", "permute",
                       "to", "_to_copy")),
    ("reductions", ("batch_norm", "max_pool", "sum", "mean", "nll_loss", "log_softmax",
                    "_softmax", "upsample")),
    ("elementwise", ("",)),
)


def _torch_category(name: str) -> str:
  op = name.split("::")[-1]
  if "conv" in op and "backward" in op:  # convolution_backward, _slow_conv2d_backward, …
    return _TORCH_GROUPS[0][0]
  for category, patterns in _TORCH_GROUPS:
    if any(p == "" or op == p or op.startswith(p) or p in op for p in patterns):
      return category
  return "other"


def worker_torch(spec: dict) -> dict:
  """The PyTorch peer's same step under torch.profiler (self CPU time per aten op)."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.set_num_interop_threads(1)
  torch.manual_seed(0)
  net = bench.torch_uresnet(**spec["model"])
  height, width = spec["size"]
  images, labels = bench._inputs(1, height, width)  # pylint: disable=protected-access
  x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
  weights = torch.tensor(bench.CLASS_WEIGHTS, dtype=torch.float32)
  if spec["mode"] == "forward":
    net.eval()

    def run():
      with torch.inference_mode():
        net(x)
  else:
    net.train()
    opt = torch.optim.RMSprop(net.parameters(), lr=3e-4, alpha=0.99, eps=1e-8)

    def run():
      opt.zero_grad(set_to_none=True)
      loss = bench._torch_weighted_loss(net(x), y, weights)  # pylint: disable=protected-access
      loss.backward()
      opt.step()

  timing = _warm_steps(run, spec["steps"])
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    run()
  by_category: collections.Counter = collections.Counter()
  ops = []
  for avg in prof.key_averages():
    if not avg.key.startswith("aten::"):
      continue
    ms = avg.self_cpu_time_total / 1e3
    by_category[_torch_category(avg.key)] += ms
    ops.append((ms, avg.key, _torch_category(avg.key), str(avg.count), ""))
  ops.sort(reverse=True)
  return {**timing, "op_ms": sum(by_category.values()), "categories": dict(by_category),
          "regions": {}, "ops": ops[:spec["top"]]}


# --- parent -----------------------------------------------------------------------------------


def _run(kind: str, spec: dict, args) -> dict:
  env = dict(os.environ)
  root = os.path.dirname(SCRIPTS)
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  if args.malloc == "keep":
    env["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker-{kind}", json.dumps(spec)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                        preexec_fn=(lambda: os.sched_setaffinity(0, args.cpu_set))
                        if args.cpu_set else None)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
  raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}): {tail}")


def _print(name: str, result: dict, top: int) -> None:
  step_ms = 1e3 * result["step_s"]
  print(f"\n{name}: {result['step_s']:.3f} s per step (median of "
        f"{len(result['steps_s'])}; {', '.join(f'{t:.3f}' for t in result['steps_s'])}), "
        f"{result['minor_faults']} minor page faults and {result['system_s']:.2f} s system "
        f"time per step" + (f", XLA scratch {result['scratch_gb']:.2f} GB"
                            if "scratch_gb" in result else ""))
  print(f"  traced op time {result['op_ms']:.0f} ms ({100 * result['op_ms'] / step_ms:.0f} % "
        "of the step's wall time)")
  print(f"  {'category':40s} {'ms':>9s} {'% of ops':>9s}")
  for category, ms in sorted(result["categories"].items(), key=lambda kv: -kv[1]):
    print(f"  {category:40s} {ms:9.1f} {100 * ms / result['op_ms']:8.1f}%")
  if result["regions"]:
    print("  by Table 1 row: " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(result["regions"].items(), key=lambda kv: -kv[1])
        ) + " (ms)")
  print(f"  longest {min(top, len(result['ops']))} ops (ms, op, category, shape / calls, row):")
  for ms, op, category, shape, where in result["ops"][:top]:
    print(f"    {ms:8.2f}  {op:32s} {category:30s} {shape:28s} {where}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="128x256", help="H x W per plane")
  p.add_argument("--mode", choices=("train", "forward"), default="train")
  p.add_argument("--model", type=json.loads, default={}, help="UResNet overrides (JSON)")
  p.add_argument("--steps", type=int, default=3, help="warm steps timed before the trace")
  p.add_argument("--top", type=int, default=12, help="longest ops to list")
  p.add_argument("--peer", choices=("none", "torch"), default="none")
  p.add_argument("--cpus", type=int, default=0,
                 help="pin each worker to this many CPUs (0: inherit the affinity)")
  p.add_argument("--malloc", choices=("default", "keep"), default="default",
                 help="keep: glibc keeps freed memory (GLIBC_TUNABLES, both workers)")
  p.add_argument("--blocked-max-channels", type=int, default=None,
                 help="override recoil_jax.ops.conv.BLOCKED_WGRAD_MAX_CHANNELS (0: XLA's "
                 "weight gradients everywhere)")
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--worker-jax", help=argparse.SUPPRESS)
  p.add_argument("--worker-torch", help=argparse.SUPPRESS)
  args = p.parse_args()
  for kind, worker in (("jax", worker_jax), ("torch", worker_torch)):
    payload = getattr(args, f"worker_{kind}")
    if payload:
      print("RESULT " + json.dumps(worker(json.loads(payload))))
      return
  height, width = (int(v) for v in args.size.lower().split("x"))
  available = sorted(os.sched_getaffinity(0))
  if args.cpus > len(available):
    p.error(f"--cpus {args.cpus}: only {len(available)} CPUs available")
  args.cpu_set = set(available[-args.cpus:]) if args.cpus else None
  spec = {"size": [height, width], "mode": args.mode, "model": args.model,
          "steps": args.steps, "top": args.top,
          "blocked_max_channels": args.blocked_max_channels}
  print(f"UResNet 3x{height}x{width}, batch 1, {args.mode}; CPUs "
        f"{sorted(args.cpu_set or available)}; malloc {args.malloc}; "
        f"1-min load {os.getloadavg()[0]:.2f}")
  results = {}
  with tempfile.TemporaryDirectory() as trace_dir:
    results["recoil_jax"] = _run("jax", dict(spec, trace_dir=trace_dir), args)
  _print("recoil_jax (XLA ops from the jax.profiler trace)", results["recoil_jax"], args.top)
  if args.peer == "torch":
    model = {k: v for k, v in args.model.items() if k != "small_map_convs"}
    results["torch"] = _run("torch", dict(spec, model=model), args)
    _print("torch (aten ops, self CPU time, torch.profiler)", results["torch"], args.top)
    print(f"\nrecoil_jax / torch step time: "
          f"{results['recoil_jax']['step_s'] / results['torch']['step_s']:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
