"""benchmarks/seg_eval_cost.py: the bound on AlignResize shapes against our own `align_size`, the synthetic
ADE20K-like folder, and smoke runs of both modes (the digits demo's 2-stage model at small sizes)."""
import json
import os
import sys

import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import seg_eval_cost  # noqa: E402

from hatnet_jax.data.segmentation.transforms import align_size  # noqa: E402


def test_shape_bound_matches_align_size_over_every_aspect():
  # Short sides 300 and 511, long sides 8..24999 in both orientations: aspects from 1/3000 to 83, in steps
  # finer than one 32 px multiple after the rescale, so every reachable shape shows up.
  sizes = [(h, w) for s in (300, 511) for w in range(8, 25000) for h, w in ((s, w), (w, s))]
  shapes = seg_eval_cost.distinct_shapes(sizes)
  assert len(shapes) == seg_eval_cost.shape_bound() == 127 == 2 * 2048 // 32 - 1
  assert all(min(s) == 512 or max(s) == 2048 for s in shapes)
  within = {s for s in shapes if max(s) <= 4 * min(s)}  # aspect <= 4: short side 512, long 512..2048
  assert len(within) == 2 * 49 - 1 and {min(s) for s in within} == {512}
  assert seg_eval_cost.shape_bound((256, 64), 32) == 15  # the digits demo's scale (L/S = 4 as well)
  assert align_size(375, 500, (2048, 512), 32) == (512, 704)  # a 4:3 ADE20K photo


def test_parse_shapes():
  assert seg_eval_cost.parse_shapes('512x512, 704X512,') == [(512, 512), (704, 512)]


def test_make_folder_writes_an_ade20k_like_split(tmp_path):
  sizes = seg_eval_cost.make_folder(str(tmp_path), 13, divide=8)
  assert len(sizes) == 13 and sizes[0] == (64, 85)
  assert len(os.listdir(tmp_path / 'images' / 'validation')) == 13
  assert len(os.listdir(tmp_path / 'annotations' / 'validation')) == 13
  assert len(os.listdir(tmp_path / 'images' / 'train')) == 1
  full = seg_eval_cost.distinct_shapes(seg_eval_cost.SIZES)
  assert full == {(512, 704), (704, 512), (512, 512), (512, 928), (768, 512), (512, 1024), (512, 2048)}


def test_shapes_mode_smallest_setting(capsys, tmp_path):
  out = tmp_path / 'rows.jsonl'
  rows = seg_eval_cost.main(['--config=configs/seg_digits.py:tiny', '--shapes=32x32,32x64', '--repeats=1',
                             f'--json_out={out}'])
  assert [r['shape'] for r in rows] == ['32x32', '32x64']
  assert all(r['compile_s'] > 0 and r['images_per_s'] > 0 for r in rows)
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows
  assert '| semfpn_hatnet_tiny | 32x64 |' in capsys.readouterr().out


@pytest.mark.slow  # two fresh processes that import TensorFlow and JAX and compile: ~1 min here
def test_e2e_second_evaluation_loads_every_program(capsys, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')  # one CPU device in the evaluations, not the tests' 8
  rows = seg_eval_cost.main(['--e2e', '--config=configs/seg_digits.py:tiny', '--images=6', '--divide=4',
                             '--scale=128,32', '--min_compile_time=0'])
  first, second = rows
  assert first['shapes'] == 3 and first['images'] == 6
  assert first['loaded'] == 0 and first['written'] >= first['shapes'] + 1  # the eval steps and the init
  assert second['written'] == 0 and second['loaded'] == first['written']
  assert first['result'] == second['result'] and 'over 6 images' in first['result']
  assert '| 2 |' in capsys.readouterr().out
