"""scripts/profile_uresnet_step.py: HLO ops are put in the right categories and Table 1 rows,
and a traced step of a tiny UResNet is summarised (in-process; no timing asserted)."""

import pytest

from conftest import load_module

TINY = dict(initial_filters=2, depth=2, deepest_filters=8, deepest_blocks=1)

HLO = """HloModule jit_step

%fused_wgrad (p0: f32[1,8,8,4], p1: f32[1,8,8,4]) -> f32[4,3,3,4] {
  %p0 = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %p1 = f32[1,8,8,4]{3,2,1,0} parameter(1)
  ROOT %convolution.9 = f32[4,3,3,4]{3,2,1,0} convolution(%p0, %p1), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf
}

%fused_bn (p0: f32[1,8,8,4]) -> f32[1,8,8,4] {
  %p0 = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %c = f32[] constant(0.01)
  %b = f32[1,8,8,4]{3,2,1,0} broadcast(%c), dimensions={}
  ROOT %m = f32[1,8,8,4]{3,2,1,0} multiply(%p0, %b)
}

%fused_copy (p0: f32[1,8,8,4]) -> f32[4,8,8,1] {
  %p0 = f32[1,8,8,4]{3,2,1,0} parameter(0)
  ROOT %t = f32[4,8,8,1]{3,2,1,0} transpose(%p0), dimensions={3,1,2,0}
}

ENTRY %main (a: f32[1,8,8,4], w: f32[3,3,4,4]) -> f32[1,8,8,4] {
  %a = f32[1,8,8,4]{3,2,1,0} parameter(0)
  %w = f32[3,3,4,4]{3,2,1,0} parameter(1)
  %conv_general_dilated.1 = f32[1,8,8,4]{3,2,1,0} convolution(%a, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/jvp(UResNet)/vmap(encoder)/down_1/blocks/res_0/block_0/conv/conv_general_dilated"}
  %convolution.2 = f32[1,8,8,4]{3,2,1,0} convolution(%a, %w), window={size=3x3 pad=1_1x1_1 rhs_reversal=1x1}, dim_labels=b01f_01oi->b01f, metadata={op_name="jit(step)/transpose(jvp(UResNet))/deepest/blocks/res_0/block_1/conv/conv_general_dilated"}
  %wgrad_fusion = f32[4,3,3,4]{3,2,1,0} fusion(%a, %a), kind=kCustom, calls=%fused_wgrad
  %bn_fusion = f32[1,8,8,4]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_bn, metadata={op_name="jit(step)/jvp(UResNet)/vmap(decoder)/up_0/blocks/res_1/jit(leaky_relu)/mul"}
  %copy_fusion = f32[4,8,8,1]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_copy
  ROOT %r = f32[1,8,8,4]{3,2,1,0} add(%conv_general_dilated.1, %convolution.2), metadata={op_name="jit(step)/rmsprop/add"}
}
"""


@pytest.fixture(scope="module")
def prof():
  return load_module("scripts/profile_uresnet_step.py")


def test_categories_and_rows_of_hlo_instructions(prof):
  computations, entry = prof.parse_hlo(HLO)
  assert entry == "main"
  entries = {f["name"]: f for f in map(prof._fields, computations[entry]) if f}  # pylint: disable=protected-access
  want = {"conv_general_dilated.1": ("convolution forward", "down_1"),
          "convolution.2": ("convolution input gradient", "deepest"),
          "wgrad_fusion": ("convolution weight gradient", "unattributed"),
          "bn_fusion": ("elementwise", "up_0"),
          "copy_fusion": ("layout copies", "unattributed"),
          "r": ("elementwise", "loss and optimizer")}
  for name, (category, row) in want.items():
    assert prof.categorise(entries[name], computations) == category, name
    assert prof.region(entries[name]["op_name"]) == row, name


@pytest.mark.slow  # ~8 s (a profiler trace); the categorisation test above is in the default suite.
def test_a_traced_step_of_a_tiny_uresnet_is_summarised(prof, tmp_path):
  # lax convolutions: on maps this small small_map_convs would make every one a matmul.
  model = dict(TINY, small_map_convs=False)
  result = prof.worker_jax({"size": [16, 32], "mode": "train", "model": model, "steps": 1,
                            "top": 5, "trace_dir": str(tmp_path)})
  assert result["op_ms"] > 0 and len(result["ops"]) == 5
  for category in ("convolution forward", "convolution input gradient",
                   "convolution weight gradient", "elementwise"):
    assert result["categories"].get(category, 0) > 0, category
  assert {"initial", "down_0", "deepest", "up_0"} <= set(result["regions"])
  assert result["scratch_gb"] > 0 and result["minor_faults"] >= 0
