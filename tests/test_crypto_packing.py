import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.packing import Layout, pack, unpack

shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=3).map(tuple)
entry = st.tuples(shapes, st.sampled_from(["float32", "float64"]), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(entry, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_pack_unpack_round_trip_exact(entries, rnd):
    tensors = {}
    for i, (shape, dtype, as_torch) in enumerate(entries):
        arr = np.asarray(np.random.default_rng(rnd.randint(0, 2**31)).normal(size=shape)).astype(dtype)
        tensors[f"t{i}.{dtype}"] = torch.from_numpy(arr) if as_torch else arr
    names = list(tensors)
    rnd.shuffle(names)
    tensors = {n: tensors[n] for n in names}
    vector, layout = pack(tensors)
    assert vector.shape == (sum(int(np.prod(s)) for s, _, _ in entries),)
    back = unpack(vector, Layout.from_json(layout.to_json()))
    assert list(back) == list(tensors)
    for name, original in tensors.items():
        got = back[name]
        assert type(got) is type(original)
        assert tuple(got.shape) == tuple(original.shape)
        assert str(got.dtype) == str(original.dtype)
        a = got.numpy() if isinstance(got, torch.Tensor) else got
        b = original.numpy() if isinstance(original, torch.Tensor) else original
        assert np.array_equal(a, b)


def test_integer_tensors_are_refused():
    import pytest

    with pytest.raises(TypeError, match="not supported"):
        pack({"counts": np.arange(3)})
