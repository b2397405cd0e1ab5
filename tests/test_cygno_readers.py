"""Camera-frame readers (recoil_jax.studies.cygno.readers): npy/npz and ROOT TH2 via uproot."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from recoil_jax.studies.cygno import readers


def _th2(values_rows_cols, errors=None):
  """A TH2D with bin contents [rows = y, cols = x]; ROOT's flat bin = ix + (nx + 2)·iy."""
  v = np.asarray(values_rows_cols, np.float64)
  ny, nx = v.shape
  err2 = (v if errors is None else np.asarray(errors, np.float64)**2)
  return uproot.writing.identify.to_TH2x(
      fName=None, fTitle="", data=np.pad(v, 1).ravel(), fEntries=float(v.size),
      fTsumw=float(v.sum()), fTsumw2=float((v**2).sum()), fTsumwx=0.0, fTsumwx2=0.0,
      fTsumwy=0.0, fTsumwy2=0.0, fTsumwxy=0.0,
      fSumw2=np.pad(err2, 1).ravel(),
      fXaxis=uproot.writing.identify.to_TAxis("xaxis", "", nx, 0.0, float(nx)),
      fYaxis=uproot.writing.identify.to_TAxis("yaxis", "", ny, 0.0, float(ny)))


@pytest.fixture
def root_file(tmp_path):
  rng = np.random.default_rng(0)
  pics = [rng.integers(90, 120, (6, 9)).astype(np.float64) for _ in range(2)]
  path = tmp_path / "run1.root"
  with uproot.recreate(path) as f:
    f["pic_run1_ev0"] = _th2(pics[0])
    f["pic_run1_ev1"] = _th2(pics[1])
    f["pedmap"] = _th2(np.full((6, 9), 99.0), errors=np.full((6, 9), 2.0))
    f["not_a_histogram"] = "text"
  return str(path), pics


def test_root_pictures_read_as_rows_by_cols(root_file):
  path, pics = root_file
  assert readers.list_root_images(path) == ["pic_run1_ev0", "pic_run1_ev1", "pedmap"]
  img = readers.read_root_image(path, "pic_run1_ev1")
  assert img.dtype == np.float32 and img.shape == (6, 9)
  np.testing.assert_array_equal(img, pics[1])
  stack, keys = readers.read_root_images(path)
  assert keys == ["pic_run1_ev0", "pic_run1_ev1"] and stack.shape == (2, 6, 9)
  np.testing.assert_array_equal(readers.read_images(path), stack)
  ped, noise = readers.read_root_pedestal(path)
  np.testing.assert_allclose(ped, 99.0)
  np.testing.assert_allclose(noise, 2.0)


def test_root_errors_name_file_and_key(root_file, tmp_path):
  path, _ = root_file
  with pytest.raises(KeyError, match=r"run1\.root.*'pic_run1_ev7'.*pic_run1_ev0"):
    readers.read_root_image(path, "pic_run1_ev7")
  with pytest.raises(ValueError, match=r"run1\.root\['not_a_histogram'\].*not a TH2"):
    readers.read_root_image(path, "not_a_histogram")
  with pytest.raises(FileNotFoundError, match="missing.root"):
    readers.read_root_image(tmp_path / "missing.root", "pic")
  bad = tmp_path / "bad.root"
  bad.write_bytes(b"not root")
  with pytest.raises(ValueError, match="bad.root: not a readable ROOT file"):
    readers.read_root_image(bad, "pic")


def test_npy_and_npz(tmp_path):
  img = np.arange(12, dtype=np.uint16).reshape(3, 4)
  np.save(tmp_path / "a.npy", img)
  np.savez(tmp_path / "b.npz", frames=np.stack([img, img]), pedestal=img)
  np.testing.assert_array_equal(readers.read_images(tmp_path / "a.npy"), img)
  assert readers.read_images(tmp_path / "b.npz", "frames").shape == (2, 3, 4)
  with pytest.raises(KeyError, match=r"b\.npz: holds 2 arrays"):
    readers.read_array_images(tmp_path / "b.npz")
  with pytest.raises(KeyError, match=r"b\.npz: no array 'x'; arrays: \['frames', 'pedestal'\]"):
    readers.read_array_images(tmp_path / "b.npz", "x")
  np.save(tmp_path / "c.npy", np.zeros(5))
  with pytest.raises(ValueError, match=r"c\.npy: expected an image"):
    readers.read_images(tmp_path / "c.npy")
  np.save(tmp_path / "d.npy", np.array([[1.0, np.nan]]))
  with pytest.raises(ValueError, match=r"d\.npy: 1 non-finite"):
    readers.read_images(tmp_path / "d.npy")
  with pytest.raises(ValueError, match="unknown image format"):
    readers.read_images(tmp_path / "e.tiff")
