"Tests of the bundled default model: what ships, how it was made, and how well it restores data it never saw."
from pathlib import Path
import numpy as np
import pytest
from darknb.raw import data_dir, describe, sample_dng
from darknb.unet import default_model_path
from darknb import default_model as D

GAIN_AMP_SCENE, GAIN_NLM_SCENE = 6.0, 2.0  # measured: 6.5-9.6 and 2.5-3.6 dB (notebook 07b)

@pytest.fixture(scope='module')
def bundled():
    return D.load_default_model()

def test_bundled_model_is_small_and_records_its_recipe(bundled):
    net,info = bundled
    assert default_model_path().stat().st_size < 10*2**20
    assert info['task']=='raw' and info['in_ch']==4
    rec = info['meta']['recipe']
    # the recipe written in notebook 07b is the one inside the file, and it names no folder of the machine it was made on
    assert (rec['arch'], rec['arch_kwargs']['width'], rec['patch'], rec['lr'], rec['seed']) == ('denoiser', 32, 96, 3e-3, 0)
    assert tuple(rec['ratio'])==(50, 300) and rec['noise']=='eld'
    assert '/' not in rec['source'] and '\\' not in rec['source']

def test_quality_on_a_generated_photo_it_never_saw(bundled):
    "The held-out scene as a generated RAW file: the network beats amplification and non-local means at every ratio."
    df = D.evaluate(bundled[0], [sample_dng('motorcycle', 'RGGB')])
    assert list(df.ratio)==[100, 250, 300]
    assert (df.gain_vs_amplified>=GAIN_AMP_SCENE).all(), df.to_string()
    assert (df.gain_vs_classical>=GAIN_NLM_SCENE).all(), df.to_string()

HELD_OUT = [data_dir('raw')/n for n in D.HELD_OUT_CAMERAS] if data_dir('raw') else []

@pytest.mark.skipif(not HELD_OUT or not all(f.exists() for f in HELD_OUT), reason='the real test data ($DARKNB_DATA) is not present')
def test_quality_on_cameras_it_never_saw(bundled):
    "On real files of unseen cameras (α7S II noise rescaled to their 12-bit span) the network is ahead of both baselines everywhere."
    df = D.evaluate(bundled[0], HELD_OUT)
    assert len(df)==6
    assert (df.gain_vs_amplified>=5).all(), df.to_string()
    assert (df.gain_vs_classical>=0.5).all(), df.to_string()
    d1 = df[df.file=='RAW_NIKON_D1.NEF']   # the project's goal, still met on the Nikon D1 (not on the Canon D30 at x100)
    assert (d1.gain_vs_amplified>=8).all() and (d1.gain_vs_classical>=1.5).all(), df.to_string()

def test_build_training_set(tmp_path):
    fs = D.build_training_set(tmp_path/'train', per_scene=1, seed=3)
    names = [f.name for f in fs]
    assert len(names)==len(set(names)) and all(f.exists() for f in fs)
    assert not any(s in n for s in D.HELD_OUT_SCENES for n in names)        # the held-out photo stays out
    assert not any(n in names for n in D.HELD_OUT_CAMERAS)                   # and so do the held-out cameras
    infos = [describe(f) for f in fs]
    assert all(i.cfa=='bayer' for i in infos)
    assert len({i.pattern for i in infos})>1 and len({i.white_level for i in infos})>1  # several phases and bit depths
    if data_dir('raw') and all((data_dir('raw')/n).exists() for n in D.TRAIN_CAMERAS):
        assert all((tmp_path/'train'/n).is_symlink() for n in D.TRAIN_CAMERAS)  # real files are linked, never copied
    # the same seed gives the same files; an existing folder is never overwritten
    again = D.build_training_set(tmp_path/'again', per_scene=1, seed=3, real=False)
    a = {f.name: f.read_bytes() for f in fs if not f.is_symlink()}
    assert a=={f.name: f.read_bytes() for f in again}
    with pytest.raises(FileExistsError): D.build_training_set(tmp_path/'train', per_scene=1, seed=3)
