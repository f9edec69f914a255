"""The one padding policy of a tile: numpy's symmetric mirror, for arrays and tensors alike."""

import numpy as np
import pytest
import torch

from mtrs_geo.padding import mirror_indices, pad_tile


def test_mirror_indices_repeat_the_edge_pixel_then_mirror_again() -> None:
    assert mirror_indices(3, 8).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert mirror_indices(1, 4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("size", [1, 2, 5, 31])
@pytest.mark.parametrize("length", [32, 64, 100])
def test_padding_is_numpys_symmetric_mode_even_many_times_over(size: int, length: int) -> None:
    tile = np.random.default_rng(size).random((2, size, size + 3), dtype=np.float32)
    width = length + 3
    expected = np.pad(tile, ((0, 0), (0, length - size), (0, width - size - 3)), mode="symmetric")
    np.testing.assert_array_equal(pad_tile(tile, length, width), expected)


def test_a_tensor_is_padded_like_an_array_and_stays_a_tensor() -> None:
    tile = np.random.default_rng(0).random((2, 3, 20, 45), dtype=np.float32)
    padded = pad_tile(torch.from_numpy(tile), 32, 64)
    assert isinstance(padded, torch.Tensor)
    np.testing.assert_array_equal(padded.numpy(), pad_tile(tile, 32, 64))


def test_a_tile_of_the_size_asked_is_returned_as_is_and_a_larger_one_is_refused() -> None:
    tile = np.zeros((3, 32, 32), dtype=np.float32)
    assert pad_tile(tile, 32, 32) is tile
    with pytest.raises(ValueError, match="cannot pad"):
        pad_tile(tile, 16, 32)
