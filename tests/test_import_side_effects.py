"""Importing the package changes nothing in the process: no environment variables, no Pillow settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"

PROBE = """
import importlib, json, os, pkgutil
from PIL import Image, ImageFile
before = dict(os.environ), [Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES]
import embedeval
for info in pkgutil.walk_packages(embedeval.__path__, "embedeval."):
    importlib.import_module(info.name)
after = dict(os.environ), [Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES]
print(json.dumps({"env": sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k)),
                  "pil": [before[1], after[1]]}))
"""


def test_importing_every_module_changes_no_environment_variable_and_no_pillow_setting() -> None:
    # A fresh interpreter (in this one, conftest and earlier tests have imported things already), without
    # AWS_* settings: an import that only sets them when absent would otherwise go unseen.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env["PYTHONPATH"] = str(LIB)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["env"] == []
    assert seen["pil"][0] == seen["pil"][1]
