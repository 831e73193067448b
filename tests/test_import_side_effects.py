"""Importing the package changes nothing in the process: no environment variables, no Pillow settings.

Nor does using it: making an S3 filesystem (whose AWS checksum settings are put in the environment only
while the client is made) and decoding an image under ``embed.max_image_pixels`` (PIL's limit is swapped
for that read only) leave the process as they found it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"

PROBE = """
import importlib, io, json, os, pkgutil
from PIL import Image, ImageFile

def state():
    return dict(os.environ), [Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES]

def changed(before, after):
    return {"env": sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k)),
            "pil": [before[1], after[1]]}

before = state()
import embedeval
for info in pkgutil.walk_packages(embedeval.__path__, "embedeval."):
    importlib.import_module(info.name)
imported = state()

from embedeval.io.storage import S3Options, Storage
from embedeval.pipeline.media import decode_image
Storage("s3://bucket/prefix", S3Options(endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="b"))
buf = io.BytesIO()
Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
assert decode_image(buf.getvalue(), max_pixels=10_000).size == (40, 30)
print(json.dumps({"import": changed(before, imported), "use": changed(imported, state())}))
"""


def test_importing_and_using_the_package_changes_no_environment_variable_and_no_pillow_setting() -> None:
    # A fresh interpreter (in this one, conftest and earlier tests have imported things already), without
    # AWS_* settings: an import that only sets them when absent would otherwise go unseen.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env["PYTHONPATH"] = str(LIB)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    for phase in ("import", "use"):
        assert seen[phase]["env"] == [], phase
        assert seen[phase]["pil"][0] == seen[phase]["pil"][1], phase
