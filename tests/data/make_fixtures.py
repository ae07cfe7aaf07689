"""Regenerates the files in tests/data (not run by the tests; see README.md here).

Needs, outside the project's requirements: the scikit-image wheel's bundled photos (unzipped
to SKIMAGE_DATA, default /tmp/skimg/skimage/data), `espeak-ng` on the PATH, and scipy (for
resampling the speech to 8 kHz). Run with the project's Python:

    python tests/data/make_fixtures.py
"""

import io
import os
import subprocess
import tempfile
import wave

import numpy as np
from PIL import Image
from scipy import signal

HERE = os.path.dirname(os.path.abspath(__file__))
SKIMAGE_DATA = os.environ.get("SKIMAGE_DATA", "/tmp/skimg/skimage/data")
SPEECH = "Raw bytes can speak, too."


def crop(name, top, left, height, width, mode):
  with Image.open(os.path.join(SKIMAGE_DATA, name)) as im:
    return im.convert(mode).crop((left, top, left + width, top + height))


def main():
  images = os.path.join(HERE, "images")
  bad = os.path.join(HERE, "bad")
  audio = os.path.join(HERE, "audio")
  for d in (images, bad, audio):
    os.makedirs(d, exist_ok=True)
  # Photos: 32x32 (and one 40x48, to exercise resizing) crops of scikit-image's CC0 /
  # public-domain samples.
  crop("astronaut.png", 80, 176, 32, 32, "RGB").save(os.path.join(images, "astronaut.png"))
  crop("coffee.png", 250, 320, 40, 48, "RGB").save(os.path.join(images, "coffee.png"))
  crop("chelsea.png", 100, 150, 32, 32, "RGB").save(os.path.join(images, "chelsea.jpg"),
                                                   quality=90)
  crop("camera.png", 60, 220, 32, 32, "L").save(os.path.join(images, "camera.png"))
  # An unreadable image: the first 200 bytes of a real PNG.
  buf = io.BytesIO()
  crop("astronaut.png", 0, 0, 32, 32, "RGB").save(buf, format="PNG")
  with open(os.path.join(bad, "truncated.png"), "wb") as f:
    f.write(buf.getvalue()[:200])
  # Speech: espeak-ng (22.05 kHz, 16-bit), resampled to 8 kHz.
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "speech.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", raw, SPEECH], check=True)
    with wave.open(raw, "rb") as f:
      rate = f.getframerate()
      x = np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float64)
  assert rate == 22050, rate
  y = signal.resample_poly(x, 160, 441)
  y = np.clip(np.round(y), -32768, 32767).astype("<i2")
  with wave.open(os.path.join(audio, "speech.wav"), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(8000)
    f.writeframes(y.tobytes())
  # An unsupported WAV: the first 0.1 s of the speech as 24-bit PCM.
  head = y[:800].astype(np.int32) << 8
  packed = np.stack([(head >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)
  with wave.open(os.path.join(bad, "speech_24bit.wav"), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(3)
    f.setframerate(8000)
    f.writeframes(packed.tobytes())


if __name__ == "__main__":
  main()
