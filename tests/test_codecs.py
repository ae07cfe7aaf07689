"""Byte codecs: image scan orders, mu-law / PCM audio, WAV reading (real fixtures in tests/data)."""

import os
import struct
import warnings
import wave

import numpy as np
import pytest
from PIL import Image

from megabyte_jax.data import codecs
from megabyte_jax.errors import DataError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPEECH = os.path.join(DATA, "audio", "speech.wav")


def _photo(name="astronaut.png", mode="RGB"):
  with Image.open(os.path.join(DATA, "images", name)) as im:
    return np.asarray(im.convert(mode), np.uint8).reshape(im.size[1], im.size[0], -1)


def _patch_scan_reference(pixels, k):
  """The patch scan written out with loops: blocks in raster order, pixels in raster order."""
  out = []
  height, width, _ = pixels.shape
  for by in range(0, height, k):
    for bx in range(0, width, k):
      for y in range(by, by + k):
        for x in range(bx, bx + k):
          out.extend(pixels[y, x])
  return np.array(out, np.uint8)


# ---------------------------------------------------------------------------------- images


def test_raster_is_row_major_rgb():
  pixels = _photo()
  data = codecs.image_to_bytes(pixels, "raster")
  assert data.dtype == np.uint8 and data.shape == (32 * 32 * 3,)
  assert data.tobytes() == pixels.tobytes()
  assert np.array_equal(codecs.bytes_to_image(data, 32, 32, 3, "raster"), pixels)


@pytest.mark.parametrize("height,width,channels,patch_size", [
    (32, 32, 3, 48),    # 4x4 RGB blocks
    (32, 32, 3, 192),   # 8x8 RGB blocks (the paper's ImageNet-64 patch)
    (16, 24, 3, 12),    # 2x2 blocks, not square image
    (32, 32, 3, 3),     # 1x1 blocks: the same as raster
    (32, 32, 1, 16),    # grayscale 4x4
    (12, 12, 1, 9),     # grayscale 3x3
    (40, 48, 3, 192),   # 8x8 blocks of a 40x48 photo
])
def test_patch_scan_matches_reference_and_inverts(height, width, channels, patch_size):
  rng = np.random.default_rng(height * width + patch_size)
  pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  k = int(round((patch_size / channels) ** 0.5))
  data = codecs.image_to_bytes(pixels, "patch", patch_size)
  assert np.array_equal(data, _patch_scan_reference(pixels, k))
  # Each model patch is exactly one k x k block.
  first = data[:patch_size].reshape(k, k, channels)
  assert np.array_equal(first, pixels[:k, :k])
  second = data[patch_size:2 * patch_size].reshape(k, k, channels)
  assert np.array_equal(second, pixels[:k, k:2 * k])
  back = codecs.bytes_to_image(data, height, width, channels, "patch", patch_size)
  assert back.dtype == np.uint8 and np.array_equal(back, pixels)
  raster = codecs.image_to_bytes(pixels, "raster")
  assert np.array_equal(codecs.bytes_to_image(raster, height, width, channels, "raster"),
                        pixels)
  if k == 1:
    assert np.array_equal(data, raster)


@pytest.mark.parametrize("name,mode,patch_size", [("astronaut.png", "RGB", 48),
                                                  ("coffee.png", "RGB", 192),
                                                  ("camera.png", "L", 16)])
def test_real_photos_round_trip(name, mode, patch_size):
  pixels = _photo(name, mode)
  height, width, channels = pixels.shape
  for order in codecs.IMAGE_ORDERS:
    data = codecs.image_to_bytes(pixels, order, patch_size)
    assert sorted(data.tolist()) == sorted(pixels.reshape(-1).tolist())  # a permutation
    back = codecs.bytes_to_image(data.tobytes(), height, width, channels, order, patch_size)
    assert np.array_equal(back, pixels)


def test_grayscale_2d_input_is_one_channel():
  pixels = _photo("camera.png", "L")[:, :, 0]
  data = codecs.image_to_bytes(pixels, "patch", 16)
  assert np.array_equal(codecs.bytes_to_image(data, 32, 32, 1, "patch", 16)[:, :, 0], pixels)


@pytest.mark.parametrize("order,patch_size", [("raster", None), ("patch", 48)])
def test_partial_bytes_are_zero_padded(order, patch_size):
  pixels = _photo()
  data = codecs.image_to_bytes(pixels, order, patch_size)
  for n in (0, 1, 47, 48, 1000, len(data) - 1):
    image = codecs.bytes_to_image(data[:n], 32, 32, 3, order, patch_size)
    again = codecs.image_to_bytes(image, order, patch_size)
    assert np.array_equal(again[:n], data[:n])
    assert not again[n:].any()


@pytest.mark.parametrize("shape,patch_size,message", [
    ((32, 32, 3), 50, "not a multiple"),
    ((32, 32, 3), 12 * 3, "not k\\*k\\*3"),
    ((30, 30, 3), 48, "do not tile"),
    ((32, 32, 1), 12, "not k\\*k\\*1"),
    ((32, 32, 3), None, "positive integer"),
    ((32, 32, 3), 0, "positive integer"),
])
def test_impossible_patch_scans_are_refused(shape, patch_size, message):
  pixels = np.zeros(shape, np.uint8)
  with pytest.raises(DataError, match=message):
    codecs.image_to_bytes(pixels, "patch", patch_size)
  with pytest.raises(DataError, match=message):
    codecs.bytes_to_image(b"", *shape, "patch", patch_size)


def test_bad_image_input_is_refused():
  with pytest.raises(DataError, match="scan order"):
    codecs.image_to_bytes(np.zeros((4, 4, 3), np.uint8), "zigzag")
  with pytest.raises(DataError, match="uint8"):
    codecs.image_to_bytes(np.zeros((4, 4, 3), np.float32), "raster")
  with pytest.raises(DataError, match="more than one"):
    codecs.bytes_to_image(bytes(49), 4, 4, 3, "raster")


# ----------------------------------------------------------------------------------- audio


def _all_int16():
  return np.arange(-32768, 32768).astype(np.int16)


def test_mulaw_known_codes():
  # G.711: zero is 0xFF, the extremes are 0x80 (+) and 0x00 (-), decoded to +-32124.
  assert codecs.audio_to_bytes(np.array([0, 32767, -32768], np.int16)).tolist() == [
      0xFF, 0x80, 0x00]
  assert codecs.bytes_to_audio(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [
      0, 0, 32124, -32124]


def test_mulaw_error_within_g711_bounds():
  x = _all_int16()
  codes = codecs.audio_to_bytes(x, "mulaw8")
  assert codes.dtype == np.uint8 and codes.shape == x.shape
  y = codecs.bytes_to_audio(codes, "mulaw8")
  assert y.dtype == np.int16
  xi, yi = x.astype(np.int32), y.astype(np.int32)
  in_range = np.abs(xi) <= 32124
  # The quantization step of segment s is 2**(s+3) in 16-bit units: the decoded value is the
  # middle of its step, give or take the 2 low bits G.711 drops before coding.
  segment = ((~codes.astype(np.int32)) & 0x70) >> 4
  half_step = 2 ** (segment + 2)
  assert np.all(np.abs(yi - xi)[in_range] <= half_step[in_range] + 3)
  assert np.all(np.abs(yi - xi)[in_range] <= np.abs(xi[in_range]) / 32 + 8)
  assert np.all(np.abs(yi[~in_range]) == 32124)     # clipped
  assert np.all(np.sign(yi[np.abs(xi) > 8]) == np.sign(xi[np.abs(xi) > 8]))
  # Decoding is the left inverse of encoding on the 256 codes.
  levels = codecs.bytes_to_audio(np.arange(256, dtype=np.uint8), "mulaw8")
  recoded = codecs.audio_to_bytes(levels, "mulaw8")
  assert np.array_equal(codecs.bytes_to_audio(recoded, "mulaw8"), levels)


def test_mulaw_matches_the_reference_g711_of_the_standard_library():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13
  x = _all_int16()
  reference = np.frombuffer(audioop.lin2ulaw(x.tobytes(), 2), np.uint8)
  assert np.array_equal(codecs.audio_to_bytes(x, "mulaw8"), reference)
  codes = np.arange(256, dtype=np.uint8)
  reference = np.frombuffer(audioop.ulaw2lin(codes.tobytes(), 2), np.int16)
  assert np.array_equal(codecs.bytes_to_audio(codes, "mulaw8"), reference)


def test_pcm16_is_exact_little_endian():
  x = _all_int16()
  data = codecs.audio_to_bytes(x, "pcm16")
  assert data.tobytes() == x.astype("<i2").tobytes()
  assert np.array_equal(codecs.bytes_to_audio(data, "pcm16"), x)
  # An odd trailing byte (half a sample) is dropped.
  assert np.array_equal(codecs.bytes_to_audio(data[:7], "pcm16"), x[:3])


def test_pcm8_is_the_top_byte_unsigned():
  x = _all_int16()
  data = codecs.audio_to_bytes(x, "pcm8")
  assert data.min() == 0 and data.max() == 255 and data[x == 0][0] == 128
  assert np.array_equal(codecs.bytes_to_audio(data, "pcm8"), (x.astype(np.int32) >> 8 << 8))


def test_real_speech_round_trips():
  samples, rate = codecs.read_wav(SPEECH)
  assert rate == 8000 and samples.dtype == np.int16 and samples.shape == (15243,)
  assert np.abs(samples).max() > 5000  # real speech, not silence
  with wave.open(SPEECH, "rb") as f:
    assert codecs.audio_to_bytes(samples, "pcm16").tobytes() == f.readframes(f.getnframes())
  decoded = codecs.bytes_to_audio(codecs.audio_to_bytes(samples, "mulaw8"), "mulaw8")
  error = np.abs(decoded.astype(np.int32) - samples)
  assert np.all(error <= np.abs(samples.astype(np.int32)) / 32 + 8)
  snr = 10 * np.log10(np.sum(samples.astype(np.float64) ** 2) / np.sum(error ** 2.0))
  assert snr > 30  # mu-law keeps about 38 dB on speech


def test_bad_audio_input_is_refused():
  with pytest.raises(DataError, match="unknown audio encoding"):
    codecs.audio_to_bytes(np.zeros(4, np.int16), "alaw")
  with pytest.raises(DataError, match="unknown audio encoding"):
    codecs.bytes_to_audio(b"ab", "flac")
  with pytest.raises(DataError, match="int16"):
    codecs.audio_to_bytes(np.zeros(4, np.float32), "pcm16")


# ------------------------------------------------------------------------------------- WAV


def _write_raw_wav(path, data, channels, rate, width):
  with wave.open(str(path), "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(data)


def test_write_then_read_wav(tmp_path):
  samples, rate = codecs.read_wav(SPEECH)
  path = tmp_path / "copy.wav"
  codecs.write_wav(path, samples, rate)
  again, again_rate = codecs.read_wav(path)
  assert again_rate == rate and np.array_equal(again, samples)


def test_8_bit_and_stereo_are_converted(tmp_path):
  samples, rate = codecs.read_wav(SPEECH)
  unsigned = ((samples.astype(np.int32) >> 8) + 128).astype(np.uint8)
  _write_raw_wav(tmp_path / "u8.wav", unsigned.tobytes(), 1, rate, 1)
  eight, _ = codecs.read_wav(tmp_path / "u8.wav")
  assert np.array_equal(eight, (samples.astype(np.int32) >> 8 << 8))
  # 8-bit WAV -> pcm8 bytes is the file's own data, exactly.
  assert np.array_equal(codecs.audio_to_bytes(eight, "pcm8"), unsigned)
  left, right = samples, (samples // 2).astype(np.int16)
  codecs.write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), rate)
  mono, _ = codecs.read_wav(tmp_path / "stereo.wav")
  expected = np.round((left.astype(np.float64) + right) / 2).astype(np.int16)
  assert np.array_equal(mono, expected)


def test_sample_rate_check(tmp_path):
  assert codecs.read_wav(SPEECH, sample_rate=8000)[1] == 8000
  with pytest.raises(DataError, match="speech.wav: sample rate 8000 Hz, expected 16000"):
    codecs.read_wav(SPEECH, sample_rate=16000)


def _float_wav(path, samples):
  data = samples.astype("<f4").tobytes()
  fmt = struct.pack("<HHIIHH", 3, 1, 8000, 8000 * 4, 4, 32)
  body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
      struct.pack("<I", len(data)) + data
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_unsupported_wavs_are_refused_naming_file_and_format(tmp_path):
  bad = os.path.join(DATA, "bad", "speech_24bit.wav")
  with pytest.raises(DataError, match=r"speech_24bit\.wav: 24-bit WAV samples"):
    codecs.read_wav(bad)
  _float_wav(tmp_path / "float.wav", np.zeros(100))
  with pytest.raises(DataError, match=r"float\.wav: unsupported WAV format \(32/64-bit IEEE "
                     r"float\)"):
    codecs.read_wav(tmp_path / "float.wav")
  _write_raw_wav(tmp_path / "i32.wav", bytes(400), 1, 8000, 4)
  with pytest.raises(DataError, match=r"i32\.wav: 32-bit"):
    codecs.read_wav(tmp_path / "i32.wav")
  with pytest.raises(DataError, match=r"astronaut\.png: not a readable WAV"):
    codecs.read_wav(os.path.join(DATA, "images", "astronaut.png"))
  (tmp_path / "empty.wav").write_bytes(b"")
  with pytest.raises(DataError, match=r"empty\.wav: not a readable WAV"):
    codecs.read_wav(tmp_path / "empty.wav")
  with pytest.raises(DataError, match="cannot read"):
    codecs.read_wav(tmp_path / "missing.wav")
