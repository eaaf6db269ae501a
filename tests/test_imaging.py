"Tests of `darknb.imaging`: RAW types, blocks, aligned augmentations and show functions, on real or generated RAW files."
import os, pickle, random
from pathlib import Path
import numpy as np
import pytest, torch, rawpy
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt

from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import ItemGetter, IntToFloatTensor, ToTensor
from fastai.data.load import fa_collate
from fastai.torch_core import TensorImage, batch_to_samples
from fastai.vision.augment import Resize, RandomResizedCrop, CropPad, FlipItem, DihedralItem
from fastai.vision.core import PILImage
from darknb.raw import (RawError, RawInfo, describe, data_dir, real_raw_files, sample_raw_files, sample_dng,
                        unpack_mosaic, pattern_from_str, render)
from darknb.imaging import (RAWImage, TensorRawImage, TensorRawPacked, RawImageBlock, RawPackedBlock, AlignedCrop,
                            AlignedDihedral, render_packed)

RGGB = pattern_from_str('RGGB')
LINEAR = dict(demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR)

@pytest.fixture(scope='module', autouse=True)
def cache(tmp_path_factory):
    "Generated sample DNGs go to a temporary folder."
    old = os.environ.get('DARKNB_CACHE')
    os.environ['DARKNB_CACHE'] = str(tmp_path_factory.mktemp('darknb-cache'))
    yield
    if old is None: os.environ.pop('DARKNB_CACHE', None)
    else: os.environ['DARKNB_CACHE'] = old

@pytest.fixture(scope='module')
def files(cache): return real_raw_files() or sample_raw_files()

@pytest.fixture(scope='module')
def small(files): return min(files, key=lambda f: describe(f).width*describe(f).height)

@pytest.fixture(scope='module')
def dark_pairs(cache):
    return [(sample_dng(s, p, 0.01), sample_dng(s, p)) for s,p in [('coffee','RGGB'), ('chelsea','BGGR'), ('astronaut','GRBG')]]

def all_in_both(items): return list(range(len(items))), list(range(len(items)))

def up2(p): return TensorRawImage(p[:3].repeat_interleave(2, -2).repeat_interleave(2, -1))
def mosaic_of(p): return TensorImage(torch.from_numpy(unpack_mosaic(p.numpy(), RGGB))[None])

# ---- RAWImage / TensorRawImage

def test_rawimage_is_16bit_float_in_unit_range(small):
    info = describe(small)
    ri = RAWImage.create(small, **LINEAR)
    assert ri.data.dtype==np.uint16 and ri.size==(info.width, info.height)
    t = ToTensor()(ri)
    assert type(t) is TensorRawImage and t.dtype==torch.float32
    assert t.shape==(3, info.height, info.width)
    assert 0<=t.min() and t.max()<=1 and t.max()>0.1
    v = t.flatten()
    assert len(v.unique())>256                               # more levels than 8 bits have
    assert torch.allclose((v*65535).round(), v*65535, atol=1e-2)  # multiples of 1/65535
    assert torch.equal(IntToFloatTensor()(t), t)             # not divided by 255 again
    assert IntToFloatTensor()(TensorRawImage(torch.tensor([[[65535]]], dtype=torch.int32))).max()==1

def test_rawimage_refuses_non_raw(tmp_path):
    bad = tmp_path/'photo.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0'*100)
    with pytest.raises(RawError, match='photo.png'): RAWImage.create(bad)
    with pytest.raises(RawError, match='missing.NEF'): RAWImage.create(tmp_path/'missing.NEF')

def test_rawimage_with_fastai_item_transforms(small):
    ri = RAWImage.create(small, half_size=True)
    assert Resize(40)(ri).size==(40,40) and Resize(40)(ri).data.dtype==np.uint16
    assert RandomResizedCrop(24)(ri, split_idx=0).size==(24,24)
    assert CropPad(30)(ri).shape==(30,30)
    np.testing.assert_array_equal(ri.flip_lr().data, ri.data[:, ::-1])
    big = ri.crop_pad((ri.size[0]+4, ri.size[1]), tl=(-2, 0))  # padded on both sides
    assert big.size==(ri.size[0]+4, ri.size[1]) and (big.data[:, :2]==0).all()

def test_fastai_transforms_still_work_on_pil_images():
    im = PILImage.create(np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8))
    assert Resize(4)(im).size==(4,4)
    np.testing.assert_array_equal(np.array(FlipItem(p=1.)(im, split_idx=0)), np.array(im)[:, ::-1])
    assert DihedralItem(p=1.)(im, split_idx=0).size in [(10,8), (8,10)]
    assert ToTensor()(im).dtype==torch.uint8 and IntToFloatTensor()(ToTensor()(im)).max()<=1

def test_rawimageblock_batches(files):
    dls = DataBlock(blocks=(RawImageBlock(half_size=True), CategoryBlock), get_y=lambda p: p.suffix.upper(),
                    splitter=all_in_both, item_tfms=Resize(48)).dataloaders(files, bs=len(files), num_workers=0)
    xb,yb = dls.valid.one_batch()
    assert type(xb) is TensorRawImage and xb.shape==(len(files), 3, 48, 48)
    assert xb.min()>=0 and xb.max()<=1 and xb.max()>0.1     # in [0, 1], not squashed to [0, 1/255]

# ---- TensorRawPacked and RawPackedBlock

def test_packed_create_keeps_metadata(small):
    x = TensorRawPacked.create(small)
    info = describe(small)
    assert x.shape==(4, info.height//2, info.width//2) and x.dtype==torch.float32
    assert x.info==info and 0<=x.min() and x.max()<=1
    np.testing.assert_allclose(render_packed(x, x.info), render(small, half=True), atol=1e-5)
    assert render_packed(x[:, :8, :10], x.info, half=False).shape==(16, 20, 3)
    with pytest.raises(ValueError, match='4 x h x w'): render_packed(torch.rand(3, 4, 4))

def test_packed_metadata_through_ops_and_collation(files):
    fs = (files*2)[:2]
    a,b = [TensorRawPacked.create(f)[:, :8, :8] for f in fs]
    assert (a*2).info==a.info and a.flip(-1).float().info==a.info
    bt = fa_collate([(a, 0), (b, 1)])[0]
    assert type(bt) is TensorRawPacked and bt.info==[a.info, b.info]
    assert bt[1].info==b.info and bt[1:].info==[b.info] and bt[torch.tensor([True, False])].info==[a.info]
    assert [o.info for o in batch_to_samples(bt)]==[a.info, b.info]
    assert pickle.loads(pickle.dumps(bt)).info==bt.info
    assert torch.cat([bt, bt]).info==bt.info*2
    assert IntToFloatTensor()(TensorRawPacked(torch.tensor([[[65535]]], dtype=torch.int32))).max()==1
    assert torch.equal(IntToFloatTensor()(bt), bt)

def test_packed_block_batches_align_with_targets(files):
    dls = DataBlock(blocks=(RawPackedBlock, RawImageBlock(**LINEAR)), splitter=all_in_both,
                    item_tfms=[AlignedCrop(32), AlignedDihedral()]).dataloaders(files, bs=len(files), num_workers=0)
    xb,yb = dls.valid.one_batch()  # validation: centred crops, no flips
    assert type(xb) is TensorRawPacked and type(yb) is TensorRawImage
    assert xb.shape==(len(files), 4, 32, 32) and yb.shape==(len(files), 3, 64, 64)
    assert xb.min()>=0 and xb.max()<=1 and xb.max()>0.1 and yb.max()<=1
    assert [i.path for i in xb.info]==[str(f) for f in files]
    assert all(isinstance(i, RawInfo) and i.cfa=='bayer' for i in xb.info)
    for k,f in enumerate(files):  # the batch holds the matching regions of input and target
        p,full = TensorRawPacked.create(f),RAWImage.create(f, **LINEAR).to_tensor()
        t,l = (p.shape[1]-32)//2,(p.shape[2]-32)//2
        assert torch.equal(xb[k], p[:, t:t+32, l:l+32])
        assert torch.equal(yb[k], full[:, 2*t:2*t+64, 2*l:2*l+64])
    tb = dls.train.one_batch()[0]
    assert type(tb) is TensorRawPacked and len(tb.info)==len(files)

def test_edge_cases_refused_by_packed_block(tmp_path, small):
    bad = tmp_path/'notes.txt'; bad.write_text('not a photo')
    edge = data_dir('raw/edge-cases')
    paths = [small, bad] + (sorted(p for p in edge.iterdir() if p.is_file()) if edge else [])
    dsets = DataBlock(blocks=(RawPackedBlock,), splitter=all_in_both).datasets(paths)  # reads the first item
    for i,p in enumerate(paths[1:], 1):
        with pytest.raises(RawError, match=p.name): dsets.valid[i]

@pytest.mark.skipif(data_dir('raw/edge-cases') is None, reason='real edge-case files absent')
def test_edge_cases_are_not_mosaics():
    for p in sorted(q for q in data_dir('raw/edge-cases').iterdir() if q.is_file()):
        with pytest.raises(RawError, match='not a mosaic'): TensorRawPacked.create(p)

# ---- aligned augmentations

def test_aligned_crop_and_dihedral_keep_pairs_aligned():
    random.seed(1)
    p0 = TensorRawPacked(torch.rand(4, 30, 50), info='meta')
    crop,dih = AlignedCrop(12), AlignedDihedral()
    ks,tls = set(),set()
    for _ in range(40):
        x,half,rgb = dih(crop((p0, p0*0.5, up2(p0)), split_idx=0), split_idx=0)
        ks.add(dih.k); tls.add(crop.tl)
        assert x.shape==(4, 12, 12) and rgb.shape==(3, 24, 24)
        assert torch.equal(half, x*0.5) and torch.equal(rgb, up2(x)) and x.info=='meta'
        x,mos = crop((p0, mosaic_of(p0)), split_idx=0)
        t,l = crop.tl
        assert torch.equal(mos, mosaic_of(x))                            # the mosaic keeps its phase...
        assert torch.equal(mos[0], mosaic_of(p0)[0, 2*t:2*t+24, 2*l:2*l+24])  # ...being cut at even offsets
    assert len(ks)>4 and len(tls)>10
    x,y = AlignedDihedral()((p0, up2(p0)), split_idx=1)                 # no flips when validating
    assert torch.equal(x, p0) and torch.equal(y, up2(p0))

def test_aligned_crop_errors():
    p0 = TensorRawPacked(torch.rand(4, 20, 30))
    with pytest.raises(ValueError, match='cannot crop'): AlignedCrop(25)((p0,), split_idx=0)
    with pytest.raises(ValueError, match='not aligned'): AlignedCrop(8)((p0, TensorImage(torch.rand(3, 30, 60))), split_idx=0)

# ---- show_batch / show_results

def _images_drawn(): return sum(len(a.images) for a in plt.gcf().axes)

def test_show_batch_and_show_results_draw(dark_pairs):
    blk = DataBlock(blocks=(RawPackedBlock, RawImageBlock(**LINEAR)), get_x=ItemGetter(0), get_y=ItemGetter(1),
                    splitter=all_in_both, item_tfms=AlignedCrop(24))
    dls = blk.dataloaders(dark_pairs, bs=3, num_workers=0)
    b = dls.valid.one_batch()
    assert b[0].max()<0.02 and b[1].max()>0.5                # dark input, bright target
    plt.close('all'); dls.valid.show_batch(b, max_n=3, exposure=100)
    assert _images_drawn()==6
    assert [a.get_title() for a in plt.gcf().axes[::2]]==[p[0].name for p in dark_pairs]
    out = TensorRawImage(torch.stack([torch.from_numpy(render_packed(x, x.info, 100, half=False)).permute(2,0,1) for x in b[0]]))
    plt.close('all'); dls.valid.show_results(b, out, max_n=2, exposure=100)
    assert _images_drawn()==6
    plt.close('all')

def test_show_packed_targets_and_predictions_without_metadata(dark_pairs):
    blk = DataBlock(blocks=(RawPackedBlock, RawPackedBlock), get_x=ItemGetter(0), get_y=ItemGetter(1),
                    splitter=all_in_both, item_tfms=AlignedCrop(16))
    dls = blk.dataloaders(dark_pairs, bs=3, num_workers=0)
    b = dls.valid.one_batch()
    plt.close('all'); dls.valid.show_batch(b, max_n=2)
    assert _images_drawn()==4
    pred = torch.from_numpy(b[1].numpy().copy())             # a plain tensor: no metadata
    plt.close('all'); dls.valid.show_results(b, pred, max_n=2)
    axs = plt.gcf().axes
    assert _images_drawn()==6
    drawn = np.asarray(axs[2].images[0].get_array())         # first prediction, shown with its input's metadata
    np.testing.assert_allclose(drawn, render_packed(b[1][0], b[0][0].info), atol=1e-6)
    plt.close('all')

def test_show_results_for_raw_renderings(dark_pairs):
    dls = DataBlock(blocks=(RawImageBlock(half_size=True), RawImageBlock(half_size=True)), get_x=ItemGetter(0),
                    get_y=ItemGetter(1), splitter=all_in_both, item_tfms=AlignedCrop(16)).dataloaders(dark_pairs, bs=3, num_workers=0)
    b = dls.valid.one_batch()
    assert type(b[0]) is TensorRawImage and type(b[1]) is TensorRawImage
    plt.close('all'); dls.valid.show_results(b, b[1], max_n=2)
    assert _images_drawn()==6
    plt.close('all')
