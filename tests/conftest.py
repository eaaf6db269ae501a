"Shared pytest set-up: generated sample files go to a temporary cache, never to ~/.cache."
import os
import pytest

@pytest.fixture(scope='session', autouse=True)
def darknb_cache(tmp_path_factory):
    "Point `$DARKNB_CACHE` (where `darknb.raw.sample_dng` keeps its files) at a folder of this test session."
    old = os.environ.get('DARKNB_CACHE')
    d = tmp_path_factory.mktemp('darknb-cache')
    os.environ['DARKNB_CACHE'] = str(d)
    yield d
    if old is None: os.environ.pop('DARKNB_CACHE', None)
    else: os.environ['DARKNB_CACHE'] = old
