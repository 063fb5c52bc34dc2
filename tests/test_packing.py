import pytest
import torch

from vptq_lab.core.packing import merge_codes, pack_codes, packed_words, split_codes, unpack_codes


def test_worked_example_lsb_first():
    # codes 5, 1, 7 at 3 bits: stream 101|100|111 from bit 0 -> 0b111_001_101
    assert pack_codes(torch.tensor([5, 1, 7]), 3).tolist() == [0b111001101]


def test_codes_straddle_words_and_rows_are_padded():
    codes = torch.tensor([[(1 << 17) - 1, 1, 2]])  # 17-bit codes: the 2nd one crosses bit 32
    words = pack_codes(codes, 17)
    assert words.shape == (1, packed_words(3, 17)) == (1, 2)
    assert int(words[0, 0]) & 0xFFFFFFFF == ((1 << 17) - 1) | (1 << 17)
    assert int(words[0, 1]) >> 19 == 0  # the tail of the last word is zero padding
    assert torch.equal(unpack_codes(words, 17, 3), codes)


@pytest.mark.parametrize("bits", range(1, 33))
def test_round_trip_every_width(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << min(bits, 62), (2, 3, 29), generator=gen, dtype=torch.int64) % (1 << bits)
    words = pack_codes(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (2, 3, packed_words(29, bits))
    assert torch.equal(unpack_codes(words, bits, 29), codes)


def test_merge_split_round_trip():
    idx, res = torch.tensor([3, 0, 4095]), torch.tensor([255, 1, 0])
    merged = merge_codes(idx, res, 12)
    assert merged.tolist() == [3 | 255 << 12, 1 << 12, 4095]
    back_idx, back_res = split_codes(merged, 12, 8)
    assert torch.equal(back_idx, idx) and torch.equal(back_res, res)
    assert split_codes(idx, 12, 0)[1] is None


def test_out_of_range_codes_and_bad_shapes():
    with pytest.raises(ValueError, match="out of range for 3 bits"):
        pack_codes(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_codes(torch.zeros(1, 3, dtype=torch.int32), 4, 3)
