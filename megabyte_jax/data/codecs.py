"""Byte codecs: images and audio to the raw bytes a MEGABYTE model reads, and back.

Images (the paper's ImageNet experiments) are serialized as 8-bit pixel values, channels
interleaved, in one of two scan orders:

* `"raster"`: row-major, the usual `pixels.tobytes()` of an `[H, W, C]` array.
* `"patch"`: the paper's patch scan. The image is cut into `k x k` blocks of pixels so that
  each model patch of `patch_size = k * k * C` bytes holds exactly one block (for example
  `patch_size=48` for 4x4 RGB blocks, `patch_size=192` for 8x8 RGB blocks, `patch_size=16`
  for 4x4 grayscale blocks). Blocks come in raster order; inside a block, pixels come in
  raster order, channels interleaved.

`bytes_to_image` inverts either order and zero-pads a partial byte string, so that the bytes
a model generates can be looked at as a picture.

Audio is 16-bit mono samples encoded one of three ways: `"mulaw8"` (8-bit mu-law, ITU-T
G.711), `"pcm16"` (16-bit little-endian, lossless) or `"pcm8"` (8-bit unsigned, the top byte
of each sample). `read_wav` and `write_wav` read and write PCM WAV files with the standard
library's `wave` module.
"""

from __future__ import annotations

import math
import os
import wave
from typing import Optional, Union

import numpy as np

from megabyte_jax.errors import DataError

IMAGE_ORDERS = ("raster", "patch")
AUDIO_ENCODINGS = ("mulaw8", "pcm16", "pcm8")

# WAVE format tags, to name what `wave` refuses.
_WAV_FORMATS = {2: "Microsoft ADPCM", 3: "32/64-bit IEEE float", 6: "8-bit A-law",
                7: "8-bit mu-law", 17: "IMA ADPCM", 85: "MPEG layer 3",
                0xFFFE: "WAVE_FORMAT_EXTENSIBLE"}

# ---------------------------------------------------------------------------------- images


def patch_block_size(height: int, width: int, channels: int, patch_size: int) -> int:
  """Side `k` of the square pixel block that one patch of `patch_size` bytes holds.

  Raises:
    DataError: when `patch_size` is not `k * k * channels` for a `k` dividing both the
      height and the width.
  """
  if not isinstance(patch_size, (int, np.integer)) or patch_size <= 0:
    raise DataError(f"patch_size must be a positive integer for the patch scan order, "
                    f"got {patch_size!r}")
  if patch_size % channels:
    raise DataError(f"patch scan: patch_size={patch_size} is not a multiple of the "
                    f"{channels} channel(s); use k*k*{channels} bytes for k x k pixel blocks")
  k = math.isqrt(patch_size // channels)
  if k * k * channels != patch_size:
    raise DataError(f"patch scan: patch_size={patch_size} is not k*k*{channels} for any "
                    f"integer k (a patch must hold a square block of pixels; e.g. "
                    f"{4 * 4 * channels} for 4x4 blocks, {8 * 8 * channels} for 8x8)")
  if height % k or width % k:
    raise DataError(f"patch scan: {k}x{k} pixel blocks (patch_size={patch_size}) do not "
                    f"tile a {height}x{width} image; the height and width must be "
                    f"multiples of {k}")
  return k


def _check_order(order: str) -> None:
  if order not in IMAGE_ORDERS:
    raise DataError(f"unknown image scan order {order!r}; choose one of {list(IMAGE_ORDERS)}")


def image_to_bytes(pixels: np.ndarray, order: str = "raster",
                   patch_size: Optional[int] = None) -> np.ndarray:
  """Serializes an image to bytes in raster or patch-scan order.

  Args:
    pixels: `uint8 [H, W, C]` (or `[H, W]`, read as one channel).
    order: `"raster"` (row-major, channels interleaved) or `"patch"` (square blocks of
      `patch_size` bytes, see the module docstring).
    patch_size: bytes per model patch; required for `"patch"`, ignored for `"raster"`.

  Returns:
    `uint8 [H * W * C]`.

  Raises:
    DataError: a non-uint8 or non-image array, an unknown order, or a patch size whose
      blocks are not square or do not tile the image.
  """
  _check_order(order)
  pixels = np.asarray(pixels)
  if pixels.ndim == 2:
    pixels = pixels[:, :, None]
  if pixels.ndim != 3 or pixels.dtype != np.uint8:
    raise DataError(f"an image must be a uint8 [height, width, channels] array, got "
                    f"{pixels.dtype} {list(pixels.shape)}")
  height, width, channels = pixels.shape
  if order == "raster":
    return np.ascontiguousarray(pixels).reshape(-1)
  k = patch_block_size(height, width, channels, patch_size)
  blocks = pixels.reshape(height // k, k, width // k, k, channels).transpose(0, 2, 1, 3, 4)
  return np.ascontiguousarray(blocks).reshape(-1)


def bytes_to_image(data: Union[bytes, bytearray, np.ndarray], height: int, width: int,
                   channels: int = 3, order: str = "raster",
                   patch_size: Optional[int] = None) -> np.ndarray:
  """The inverse of `image_to_bytes`: bytes back to a `uint8 [H, W, C]` image.

  A partial byte string (e.g. a model's generation stopped early) is zero-padded: the
  missing pixels come out black, in the places the scan order would have put them.

  Raises:
    DataError: more than `H * W * C` bytes, or an impossible order / patch size.
  """
  _check_order(order)
  if isinstance(data, (bytes, bytearray, memoryview)):
    flat = np.frombuffer(data, np.uint8)
  else:
    flat = np.asarray(data)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
      raise DataError("image bytes must be values in 0..255")
    flat = flat.astype(np.uint8).reshape(-1)
  total = height * width * channels
  if flat.size > total:
    raise DataError(f"{flat.size} bytes are more than one {height}x{width}x{channels} image "
                    f"({total} bytes)")
  if flat.size < total:
    flat = np.concatenate([flat, np.zeros((total - flat.size,), np.uint8)])
  if order == "raster":
    return flat.reshape(height, width, channels).copy()
  k = patch_block_size(height, width, channels, patch_size)
  blocks = flat.reshape(height // k, width // k, k, k, channels).transpose(0, 2, 1, 3, 4)
  return np.ascontiguousarray(blocks).reshape(height, width, channels)


# ----------------------------------------------------------------------------------- audio

_MULAW_BIAS = 0x84   # 132: the G.711 bias, in 16-bit units
_MULAW_CLIP = 32635  # largest magnitude before the bias would overflow the top segment


def mulaw_encode(samples: np.ndarray) -> np.ndarray:
  """16-bit linear samples to 8-bit mu-law codes (ITU-T G.711, as in Sun's g711.c)."""
  x = np.asarray(samples).astype(np.int32)
  sign = np.where(x < 0, 0x7F, 0xFF)
  # G.711 works on 14-bit magnitudes: drop the two low bits first, as the reference does.
  magnitude = np.minimum(np.abs(x >> 2), _MULAW_CLIP >> 2) + (_MULAW_BIAS >> 2)
  # Segment 0..7: the position of the highest set bit, counted from bit 6 (64 -> 1, ...).
  segment = sum((magnitude >= (64 << s)).astype(np.int32) for s in range(7))
  mantissa = (magnitude >> (segment + 1)) & 0x0F
  return (((segment << 4) | mantissa) ^ sign).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
  """8-bit mu-law codes back to 16-bit linear samples (ITU-T G.711)."""
  u = ~np.asarray(codes, np.uint8).astype(np.int32) & 0xFF
  t = (((u & 0x0F) << 3) + _MULAW_BIAS) << ((u & 0x70) >> 4)
  return np.where(u & 0x80, _MULAW_BIAS - t, t - _MULAW_BIAS).astype(np.int16)


def _check_encoding(encoding: str) -> None:
  if encoding not in AUDIO_ENCODINGS:
    raise DataError(f"unknown audio encoding {encoding!r}; choose one of "
                    f"{list(AUDIO_ENCODINGS)}")


def audio_to_bytes(samples: np.ndarray, encoding: str = "mulaw8") -> np.ndarray:
  """Encodes 16-bit mono samples as bytes.

  Args:
    samples: `int16 [n]`.
    encoding: `"mulaw8"` (1 byte per sample, G.711 mu-law), `"pcm16"` (2 bytes,
      little-endian, exact) or `"pcm8"` (1 byte, unsigned: the top 8 bits plus 128).

  Returns:
    `uint8 [n]` (mulaw8, pcm8) or `uint8 [2 n]` (pcm16).

  Raises:
    DataError: an unknown encoding or samples that are not a 1-D int16 array.
  """
  _check_encoding(encoding)
  samples = np.asarray(samples)
  if samples.ndim != 1 or samples.dtype != np.int16:
    raise DataError(f"audio samples must be a 1-D int16 array, got {samples.dtype} "
                    f"{list(samples.shape)}")
  if encoding == "mulaw8":
    return mulaw_encode(samples)
  if encoding == "pcm16":
    return np.frombuffer(samples.astype("<i2").tobytes(), np.uint8).copy()
  return ((samples.astype(np.int32) >> 8) + 128).astype(np.uint8)


def bytes_to_audio(data: Union[bytes, bytearray, np.ndarray],
                   encoding: str = "mulaw8") -> np.ndarray:
  """Decodes bytes made by `audio_to_bytes` back to `int16` samples.

  For `"pcm16"`, a trailing odd byte (half a sample, e.g. from a generation that stopped
  mid-sample) is dropped.

  Raises:
    DataError: an unknown encoding.
  """
  _check_encoding(encoding)
  if isinstance(data, (bytes, bytearray, memoryview)):
    flat = np.frombuffer(data, np.uint8)
  else:
    flat = np.asarray(data).astype(np.uint8).reshape(-1)
  if encoding == "mulaw8":
    return mulaw_decode(flat)
  if encoding == "pcm16":
    flat = flat[:flat.size - flat.size % 2]
    return np.frombuffer(flat.tobytes(), "<i2").astype(np.int16)
  return ((flat.astype(np.int32) - 128) << 8).astype(np.int16)


def read_wav(path: str, sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
  """Reads a PCM WAV file as 16-bit mono samples.

  8-bit (unsigned) samples are widened to 16 bits; several channels are averaged to one.
  Nothing is resampled.

  Args:
    path: a `.wav` file.
    sample_rate: when given, the file must have this sample rate.

  Returns:
    `(int16 [n] samples, sample rate in Hz)`.

  Raises:
    DataError: naming the file, when it is not a WAV file, is compressed or float, has 24-
      or 32-bit samples, is truncated, or has another sample rate than `sample_rate`.
  """
  try:
    with wave.open(os.fspath(path), "rb") as f:
      width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
      frames = f.getnframes()
      if width not in (1, 2):
        raise DataError(f"{path}: {8 * width}-bit WAV samples are not supported; only 8- "
                        f"and 16-bit PCM (convert with e.g. `sox in.wav -b 16 out.wav`)")
      raw = f.readframes(frames)
  except wave.Error as e:
    message = str(e)
    if message.startswith("unknown format:"):
      tag = int(message.split(":")[1])
      kind = _WAV_FORMATS.get(tag, f"format tag {tag}")
      message = (f"unsupported WAV format ({kind}); only 8- and 16-bit integer PCM is "
                 f"read (convert with e.g. `sox in.wav -b 16 -e signed-integer out.wav`)")
    else:
      message = f"not a readable WAV file ({message})"
    raise DataError(f"{path}: {message}") from e
  except EOFError as e:
    raise DataError(f"{path}: not a readable WAV file (truncated or empty)") from e
  except OSError as e:
    raise DataError(f"cannot read {path}: {e.strerror or e}") from e
  usable = len(raw) - len(raw) % (width * channels)
  if width == 1:
    samples = (np.frombuffer(raw[:usable], np.uint8).astype(np.int32) - 128) << 8
  else:
    samples = np.frombuffer(raw[:usable], "<i2").astype(np.int32)
  if channels > 1:
    samples = np.round(samples.reshape(-1, channels).mean(axis=1)).astype(np.int32)
  if sample_rate is not None and rate != sample_rate:
    raise DataError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (nothing is "
                    f"resampled; convert with e.g. `sox in.wav -r {sample_rate} out.wav`)")
  return samples.astype(np.int16), rate


def write_wav(path: str, samples: np.ndarray, sample_rate: int) -> None:
  """Writes `int16` samples (`[n]` mono or `[n, channels]`) as a 16-bit PCM WAV file.

  Raises:
    DataError: samples that are not int16, or a non-positive sample rate.
  """
  samples = np.asarray(samples)
  if samples.dtype != np.int16 or samples.ndim not in (1, 2):
    raise DataError(f"write_wav needs int16 [n] or [n, channels] samples, got "
                    f"{samples.dtype} {list(samples.shape)}")
  if int(sample_rate) <= 0:
    raise DataError(f"sample_rate must be positive, got {sample_rate}")
  channels = 1 if samples.ndim == 1 else samples.shape[1]
  with wave.open(os.fspath(path), "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(2)
    f.setframerate(int(sample_rate))
    f.writeframes(samples.astype("<i2").tobytes())
