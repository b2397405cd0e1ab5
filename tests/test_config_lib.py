"""Tests of recoil_jax.config_lib's variant parser and of every config file's variants."""

import os

import ml_collections
import pytest

from recoil_jax import config_lib

from conftest import load_config, load_module

CONFIG_FILES = ("configs/toy.py", "configs/tpc.py", "configs/sbnd.py")


def _module(path):
  return load_module(path, "_config_under_test")


def _recording_table(log):
  def make(name):
    def apply(config):
      log.append(name)
      config.trace = config.trace + (name,)
    return apply
  return {name: make(name) for name in ("size", "a", "b", "c")}


def _config():
  config = ml_collections.ConfigDict()
  config.trace = ()
  return config


@pytest.mark.parametrize("variant,names", [
    (None, []), ("", []), ("a", ["a"]), ("a+b+c", ["a", "b", "c"]), ("c+a", ["c", "a"]),
    (" a + b ", ["a", "b"]), ("a++b+", ["a", "b"]), ("+", [])])
def test_parse_variants(variant, names):
  assert config_lib.parse_variants(variant) == names


def test_parse_variants_rejects_non_strings():
  with pytest.raises(TypeError, match="variant must be a string"):
    config_lib.parse_variants(["a", "b"])


def test_apply_variants_in_order_and_first():
  log = []
  table = _recording_table(log)
  config = _config()
  assert config_lib.apply_variants(config, "b+a", table) is config
  assert config.trace == ("b", "a") and log == ["b", "a"]
  # `first` names go first (in the order given), the others keep theirs.
  config = _config()
  config_lib.apply_variants(config, "c+size+a", table, first=("size",))
  assert config.trace == ("size", "c", "a")
  for empty in (None, ""):
    config = _config()
    config_lib.apply_variants(config, empty, table)
    assert config.trace == ()


def test_apply_variants_errors_name_the_file_the_variant_and_the_known_names():
  table = _recording_table([])
  with pytest.raises(ValueError) as e:
    config_lib.apply_variants(_config(), "a+nope", table, config_file="configs/x.py")
  message = str(e.value)
  for part in ("'nope'", "'a+nope'", "configs/x.py", "known: size, a, b, c"):
    assert part in message, message
  config = _config()
  with pytest.raises(ValueError, match=r"\['a'\] given more than once in 'a\+b\+a'"):
    config_lib.apply_variants(config, "a+b+a", table)
  assert config.trace == ()  # Nothing applied before the error.
  with pytest.raises(ValueError, match="first=.*not in the table"):
    config_lib.apply_variants(_config(), "a", table, first=("paper",))


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_variant_loads_locked(path):
  module = _module(path)
  assert module.VARIANTS and set(module.VARIANTS) == set(module._VARIANT_FNS)
  default = load_config(path)
  assert load_config(path, "").to_dict() == default.to_dict()
  assert default.task == os.path.splitext(os.path.basename(path))[0]
  for variant in module.VARIANTS:
    config = load_config(path, variant)
    assert config.is_locked, variant
    with pytest.raises(AttributeError):
      config.no_such_field = 1
  with pytest.raises(ValueError, match=rf"'no_such_variant'.*of {path}; known: smoke"):
    load_config(path, "smoke+no_such_variant")


def test_toy_smoke_goes_through_the_parser():
  smoke = load_config("configs/toy.py", "smoke")
  assert (smoke.data.num_train, smoke.train.progress_bar) == (256, False)
  assert load_config("configs/toy.py", " smoke ").to_dict() == smoke.to_dict()
  with pytest.raises(ValueError, match="given more than once"):
    load_config("configs/toy.py", "smoke+smoke")


def test_tpc_variants_compose_in_order():
  config = load_config("configs/tpc.py", "cpu_hour+homoscedastic+deep")
  assert (config.data.num_train_val, config.model.head, config.model.trunk) == (
      80000, "cosine", "deep")
  assert load_config("configs/tpc.py", "deep+kent").model.head == "kent"


def test_sbnd_size_variants_apply_first():
  default = load_config("configs/sbnd.py")
  for variant in ("batch2+paper", "paper+batch2"):
    config = load_config("configs/sbnd.py", variant)
    assert (config.data.height, config.train.global_batch_size) == (
        640, 2 * default.train.global_batch_size), variant
  smoke = load_config("configs/sbnd.py", "lr_x10+smoke")
  assert smoke.data.height == 32
  assert smoke.optimizer.learning_rate == pytest.approx(10 * default.optimizer.learning_rate)
  module = _module("configs/sbnd.py")
  assert set(module.SIZE_VARIANTS + module.TABLE2_VARIANTS) < set(module.VARIANTS)
