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
from fastai.vision.augment import Resize, RandomResizedCrop, CropPad, RandomCrop, RatioResize, FlipItem, DihedralItem, Flip
from fastai.vision.core import PILImage
from darknb.raw import (BYTES_NAME, RawError, RawInfo, describe, data_dir, real_raw_files, sample_raw_files, sample_dng,
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

def test_rawimage_from_bytes_arrays_and_tensors(small):
    ri = RAWImage.create(small, half_size=True)
    data = small.read_bytes()
    rb = RAWImage.create(data, half_size=True)
    np.testing.assert_array_equal(rb.data, ri.data)
    assert rb.path is None and ri.path==small
    np.testing.assert_array_equal(RAWImage.create(memoryview(data), half_size=True).data, ri.data)
    np.testing.assert_array_equal(RAWImage.create(ToTensor()(ri)).data, ri.data)   # 3 x H x W in [0, 1] back to uint16
    assert RAWImage.create(ri) is ri and RAWImage.create(ri.data).size==ri.size
    with pytest.raises(RawError, match=BYTES_NAME): RAWImage.create(b'not a photo')
    with pytest.raises(RawError, match='empty'): RAWImage.create(b'')
    with pytest.raises(ValueError, match='H x W x 3'): RAWImage(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match='uint16'): RAWImage(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='3 x H x W'): RAWImage.create(torch.rand(4, 5, 5))

def test_fastai_flips_and_ratio_resize_on_rawimage(small):
    ri = RAWImage.create(small, half_size=True)
    np.testing.assert_array_equal(FlipItem(p=1.)(ri, split_idx=0).data, ri.data[:, ::-1])
    assert FlipItem(p=1.)(ri, split_idx=1) is ri                       # validation: left alone
    tfm = DihedralItem(p=1.)
    random.seed(0); ks = set()
    for _ in range(40):
        out = tfm(ri, split_idx=0); ks.add(tfm.k)
        expect = TensorImage(torch.from_numpy(ri.data.astype(np.int32)).permute(2,0,1)).dihedral(tfm.k)
        np.testing.assert_array_equal(out.data, expect.permute(1,2,0).numpy())   # fastai's numbering
    assert ks==set(range(8))
    w,h = ri.size
    r = RatioResize(40)(ri)
    assert type(r) is RAWImage and r.data.dtype==np.uint16 and max(r.size)==40
    assert r.size==((40, int(h*40/w)) if w>=h else (int(w*40/h), 40))

def test_fastai_rawpy_calls(small):
    ri = RAWImage.create(small, half_size=True)
    np.testing.assert_array_equal(RAWImage.create(small, half_size=True, output_bps=16).data, ri.data)
    blk = RawImageBlock(gamma=(2.222, 4.5), output_color=rawpy.ColorSpace.sRGB, output_bps=16)  # fastai-rawpy's README
    assert blk.type_tfms[0](small).data.dtype==np.uint16
    with pytest.raises(TypeError, match=r"fastai-rawpy.*RAWImage.create\(\.\.\., \*\*params\)"):
        RAWImage.create(small, pr=rawpy.Params(half_size=True), output_bps=16)
    with pytest.raises(TypeError, match="fastai-rawpy"): RawImageBlock(pr=rawpy.Params())
    with pytest.raises(ValueError, match='16 bits only'): RawImageBlock(output_bps=8)
    with pytest.raises(ValueError, match='16 bits only'): RAWImage.create(small, output_bps=8)
    with pytest.raises(TypeError, match='half_sise'): RawImageBlock(half_sise=True)
    with pytest.raises(AttributeError, match=r'\.data'): ri.ndarr
    with pytest.raises(AttributeError, match='no attribute'): ri.nothing
    assert pickle.loads(pickle.dumps(ri)).size==ri.size                # __getattr__ does not get in the way
    tb = TensorRawImage(torch.rand(2, 3, 8, 8))                        # fastai's batch augmentations
    out = Flip(p=1.)(tb, split_idx=0)
    assert type(out) is TensorRawImage and torch.allclose(out, tb.flip(-1), atol=1e-5)

# ---- TensorRawPacked and RawPackedBlock

def test_packed_create_keeps_metadata(small):
    x = TensorRawPacked.create(small)
    info = describe(small)
    assert x.shape==(4, info.height//2, info.width//2) and x.dtype==torch.float32
    assert x.info==info and 0<=x.min() and x.max()<=1
    np.testing.assert_allclose(render_packed(x, x.info), render(small, half=True), atol=1e-5)
    assert render_packed(x[:, :8, :10], x.info, half=False).shape==(16, 20, 3)
    with pytest.raises(ValueError, match='4 x H x W'): render_packed(torch.rand(3, 4, 4))

def test_packed_create_from_bytes(small):
    x,xb = TensorRawPacked.create(small),TensorRawPacked.create(small.read_bytes())
    assert torch.equal(x, xb) and xb.info.path==BYTES_NAME
    assert {**xb.info.to_dict(), 'path':None}=={**x.info.to_dict(), 'path':None}
    assert TensorRawPacked.create(x) is x
    with pytest.raises(RawError, match=BYTES_NAME): TensorRawPacked.create(b'not a photo')

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
        with pytest.raises(RawError, match='not a Bayer mosaic'): TensorRawPacked.create(p)

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

def test_fastai_flips_on_packed_move_whole_tiles_and_keep_pairs_aligned():
    random.seed(2)
    p0 = TensorRawPacked(torch.rand(4, 10, 14), info='meta')
    target = RAWImage.create(up2(p0))                                    # the rendering a pair has at item time
    pf = FlipItem(p=1.)(p0, split_idx=0)
    assert type(pf) is TensorRawPacked and pf.info=='meta' and torch.equal(pf, p0.flip(-1))
    m = mosaic_of(p0)[0]
    assert torch.equal(mosaic_of(pf)[0], m.reshape(10, 2, 14, 2).flip(2).reshape(20, 28))  # tiles move whole: still RGGB
    assert not torch.equal(mosaic_of(pf)[0], m.flip(-1))                 # a pixel flip would make it GRBG
    tfm,ks = DihedralItem(p=1.),set()
    for _ in range(40):
        x,y = tfm((p0, target), split_idx=0); ks.add(tfm.k)
        assert torch.equal(x, p0.dihedral(tfm.k)) and x.info=='meta'
        np.testing.assert_array_equal(y.data, RAWImage.create(up2(x)).data)
        x,y = FlipItem(p=1.)((p0, target), split_idx=0)
        np.testing.assert_array_equal(y.data, RAWImage.create(up2(x)).data)
    assert ks==set(range(8))
    for k in range(8):                                                  # one numbering: AlignedDihedral's k is fastai's
        plain = TensorImage(p0.as_subclass(torch.Tensor)).dihedral(k).as_subclass(torch.Tensor)
        assert torch.equal(AlignedDihedral(ks=[k])(p0, split_idx=0).as_subclass(torch.Tensor), plain)

def test_resizing_transforms_refuse_packed_data():
    p0 = TensorRawPacked(torch.rand(4, 20, 30))
    target = RAWImage.create(up2(p0))
    for tfm in (Resize(16), RandomResizedCrop(12), CropPad(10), RandomCrop(10), RatioResize(16)):
        with pytest.raises(TypeError, match=f'{type(tfm).__name__} does not work on packed RAW data.*AlignedCrop'):
            tfm((p0, target), split_idx=0)
    assert Resize(16)(target).size==(16, 16)                            # the RAWImage alone still resizes

def test_packed_pair_with_fastai_flip_in_a_datablock(files):
    crop = AlignedCrop(16)
    for f in files:
        dls = DataBlock(blocks=(RawPackedBlock, RawImageBlock(**LINEAR)), splitter=all_in_both,
                        item_tfms=[FlipItem(p=1.), crop]).dataloaders([f], bs=1, num_workers=0)
        xb,yb = dls.train.one_batch()                                   # training: the item is flipped, then cropped
        p,full = TensorRawPacked.create(f).flip(-1),RAWImage.create(f, **LINEAR).flip_lr().to_tensor()
        t,l = crop.tl
        assert torch.equal(xb[0], p[:, t:t+16, l:l+16])                 # the target is still its input's region
        assert torch.equal(yb[0], full[:, 2*t:2*t+32, 2*l:2*l+32])
    with pytest.raises(TypeError, match='AlignedCrop'):
        DataBlock(blocks=(RawPackedBlock, RawImageBlock), splitter=all_in_both,
                  item_tfms=Resize(64)).dataloaders(files[:2], bs=2, num_workers=0).one_batch()

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
