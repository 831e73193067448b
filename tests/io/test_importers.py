"""`embedeval import`: manifests from Karpathy JSON, Sketchy, TU-Berlin and ImageFolder layouts.

Each test writes a tiny source in exactly the dataset's format, runs the CLI and compares the whole
manifest; the manifest reader must then accept every row with paths that lead back to the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedeval.cli import main
from embedeval.io.manifest import load_manifest


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _sentences(*raws: str) -> list[dict]:
    return [{"raw": r, "tokens": r.lower().rstrip(" .").split(), "imgid": 0, "sentid": k} for k, r in enumerate(raws)]


FLICKR = {
    "images": [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1],
         "sentences": _sentences("Two young guys with shaggy hair look at their hands .", "Two friends enjoy time .")},
        {"filename": "10002456.jpg", "imgid": 1, "split": "val", "sentids": [2],
         "sentences": _sentences("Several men in hard hats are operating a giant pulley system .")},
        {"filename": "1000268201.jpg", "imgid": 2, "split": "test", "sentids": [3, 4],
         "sentences": _sentences("A child in a pink dress is climbing up stairs .", "  ")},
        {"filename": "1000344755.jpg", "imgid": 3, "split": "test", "sentids": [5],
         "sentences": _sentences("Someone in a blue shirt and hat is standing on stair .")},
    ],
    "dataset": "flickr30k",
}


def test_flickr30k_karpathy_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import duckdb
    import polars as pl

    data = tmp_path / "flickr30k"
    data.mkdir()
    (data / "dataset_flickr30k.json").write_text(json.dumps(FLICKR))
    for name in ("1000092795.jpg", "10002456.jpg", "1000268201.jpg"):  # 1000344755.jpg is missing on purpose
        _png(data / "flickr30k-images" / name)
    out = data / "manifest.parquet"
    code, stdout, err = _run(["import", "karpathy", str(data / "dataset_flickr30k.json"),
                              "--images", str(data / "flickr30k-images"), "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == (f"manifest: {out} (4 rows; columns id, image, captions, split, "
                                      "karpathy_split)")
    assert _rows(out) == [
        {"id": "1000092795", "image": "flickr30k-images/1000092795.jpg",
         "captions": ["Two young guys with shaggy hair look at their hands .", "Two friends enjoy time ."],
         "split": "train", "karpathy_split": "train"},
        {"id": "10002456", "image": "flickr30k-images/10002456.jpg",
         "captions": ["Several men in hard hats are operating a giant pulley system ."],
         "split": "train", "karpathy_split": "val"},
        {"id": "1000268201", "image": "flickr30k-images/1000268201.jpg",
         "captions": ["A child in a pink dress is climbing up stairs .", "  "],
         "split": "test", "karpathy_split": "test"},
        {"id": "1000344755", "image": "flickr30k-images/1000344755.jpg",
         "captions": ["Someone in a blue shirt and hat is standing on stair ."],
         "split": "test", "karpathy_split": "test"},
    ]
    assert pl.read_parquet(out).height == 4
    assert duckdb.sql(f"select count(*), sum(len(captions)) from '{out}'").fetchall() == [(4, 6)]
    # The reader accepts every row (the missing image is the embed stage's to quarantine) and finds the files.
    manifest = load_manifest(str(out))
    assert manifest.table.num_rows == 4
    assert manifest.table.column("image").to_pylist()[0] == str(data / "flickr30k-images" / "1000092795.jpg")
    assert [(r["id"], r["reason"]) for r in manifest.quarantine.rows] == [("1000268201", "empty caption")]


COCO = {
    "images": [
        {"filepath": "val2014", "sentids": [1], "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "test", "cocoid": 391895, "sentences": _sentences("A man with a red helmet on a small moped .")},
        {"filepath": "val2014", "sentids": [2], "filename": "COCO_val2014_000000522418.jpg", "imgid": 1,
         "split": "restval", "cocoid": 522418, "sentences": _sentences("A woman wearing a net on her head .")},
        {"filepath": "train2014", "sentids": [3], "filename": "COCO_train2014_000000057870.jpg", "imgid": 2,
         "split": "train", "cocoid": 57870, "sentences": _sentences("A restaurant has modern wooden tables .")},
        {"filepath": "val2014", "sentids": [4], "filename": "COCO_val2014_000000184613.jpg", "imgid": 3,
         "split": "test", "cocoid": 184613, "sentences": _sentences("A child holding a flowered umbrella .")},
        {"filepath": "val2014", "sentids": [5], "filename": "COCO_val2014_000000403013.jpg", "imgid": 4,
         "split": "val", "cocoid": 403013, "sentences": _sentences("A kitchen with a stove .")},
        {"filepath": "val2014", "sentids": [6], "filename": "COCO_val2014_000000562150.jpg", "imgid": 5,
         "split": "test", "cocoid": 562150, "sentences": _sentences("Two dogs on a couch .")},
    ],
    "dataset": "coco",
}


def test_coco_karpathy_json_all_splits_and_a_test_fold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dataset_coco.json").write_text(json.dumps(COCO))
    out = tmp_path / "coco.parquet"
    code, _, err = _run(["import", "karpathy", str(tmp_path / "dataset_coco.json"), "--images", str(tmp_path / "coco"),
                         "--out", str(out)], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert [(r["id"], r["image"], r["split"], r["karpathy_split"]) for r in rows] == [
        ("391895", "coco/val2014/COCO_val2014_000000391895.jpg", "test", "test"),
        ("522418", "coco/val2014/COCO_val2014_000000522418.jpg", "train", "restval"),
        ("57870", "coco/train2014/COCO_train2014_000000057870.jpg", "train", "train"),
        ("184613", "coco/val2014/COCO_val2014_000000184613.jpg", "test", "test"),
        ("403013", "coco/val2014/COCO_val2014_000000403013.jpg", "train", "val"),
        ("562150", "coco/val2014/COCO_val2014_000000562150.jpg", "test", "test"),
    ]
    assert rows[1]["captions"] == ["A woman wearing a net on her head ."]
    # The test split, then its second fold of size 1 (folds as in the 1k-of-5k protocol).
    fold = tmp_path / "fold.parquet"
    code, stdout, err = _run(["import", "karpathy", str(tmp_path / "dataset_coco.json"), "--images",
                              str(tmp_path / "coco"), "--split", "test", "--offset", "1", "--limit", "1",
                              "--out", str(fold)], capsys)
    assert code == 0, err
    assert _rows(fold) == [{"id": "184613", "image": "coco/val2014/COCO_val2014_000000184613.jpg",
                            "captions": ["A child holding a flowered umbrella ."], "split": "test",
                            "karpathy_split": "test"}]
    assert "1 images, 1 captions, 1 test" in stdout
    code, _, err = _run(["import", "karpathy", str(tmp_path / "dataset_coco.json"), "--images", str(tmp_path / "coco"),
                         "--split", "test", "--offset", "3", "--out", str(fold)], capsys)
    assert code == 1
    assert err.splitlines() == [f"embedeval: error: {tmp_path / 'dataset_coco.json'}: no image left to import "
                                "(6 in the file, 3 in splits test, offset 3)"]


def test_images_outside_the_manifest_folder_need_an_allowed_root(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(FLICKR))
    images = tmp_path / "elsewhere" / "images"
    _png(images / "1000092795.jpg")
    out = tmp_path / "catalogue" / "manifest.parquet"
    argv = ["import", "karpathy", str(tmp_path / "dataset_flickr30k.json"), "--images", str(images),
            "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert err.splitlines() == [f"embedeval: error: images root {images} is outside the manifest's folder "
                                f"{out.parent} and the allowed roots: write the manifest into a folder that contains "
                                f"it, or pass --allowed-root {images} (and list it under allowed_roots in the run "
                                "config)"]
    assert not out.exists()
    code, stdout, err = _run([*argv, "--allowed-root", str(tmp_path / "elsewhere")], capsys)
    assert code == 0, err
    assert _rows(out)[0]["image"] == str(images / "1000092795.jpg")
    assert f"note: paths under {images} are absolute" in stdout
    manifest = load_manifest(str(out), allowed_roots=[str(tmp_path / "elsewhere")])
    assert manifest.table.num_rows == 4 and not [r for r in manifest.quarantine.rows if r["reason"] != "empty caption"]


def _flickr_with(change) -> dict:  # noqa: ANN001
    data = json.loads(json.dumps(FLICKR))
    change(data)
    return data


@pytest.mark.parametrize("content,message", [
    ('{"images": [', "is not valid JSON: Expecting value at line 1 column 13"),
    ('[1, 2]', "the top level must be a JSON object with the key 'images'"),
    ('{"dataset": "flickr30k"}', "has no key 'images'"),
    (json.dumps(_flickr_with(lambda d: d["images"][1].pop("sentences"))), "images[1] has no key 'sentences'"),
    (json.dumps(_flickr_with(lambda d: d["images"][2]["sentences"][1].pop("raw"))),
     "images[2].sentences[1] has no key 'raw'"),
    (json.dumps(_flickr_with(lambda d: d["images"][0].update(split="dev"))),
     "images[0]: split 'dev' is not one of train, val, test, restval"),
    (json.dumps(_flickr_with(lambda d: d["images"][3].update(filename="../../etc/passwd"))),
     "images[3]: path '../../etc/passwd' leaves the images root"),
    (json.dumps(_flickr_with(lambda d: d["images"][3].update(filename="1000092795.png"))),
     "images[3] and images[0] both give the id '1000092795'"),
    (json.dumps({**COCO, "images": [{k: v for k, v in COCO["images"][0].items() if k != "cocoid"}]}),
     "images[0] has no key 'cocoid'"),
    (json.dumps({**COCO, "images": [{k: v for k, v in COCO["images"][0].items() if k != "filepath"}]}),
     "images[0] has no key 'filepath'"),
])
def test_malformed_karpathy_json_is_one_line_naming_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    source = tmp_path / "dataset.json"
    source.write_text(content)
    code, _, err = _run(["import", "karpathy", str(source), "--images", str(tmp_path), "--out",
                         str(tmp_path / "m.parquet")], capsys)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embedeval: error: {source}") and message in lines[0], lines
    assert not (tmp_path / "m.parquet").exists()


def _sketchy(root: Path) -> None:
    photo, sketch = root / "photo" / "tx_000000000000", root / "sketch" / "tx_000000000000"
    _png(photo / "airplane" / "n02691156_10151.jpg")
    _png(photo / "airplane" / "n02691156_196.jpg")
    _png(photo / "hot-air_balloon" / "n03541923_1058.jpg")
    _png(sketch / "airplane" / "n02691156_10151-1.png")
    _png(sketch / "airplane" / "n02691156_10151-2.png")
    _png(sketch / "airplane" / "n02691156_196-1.png")
    _png(sketch / "hot-air_balloon" / "n03541923_1058-3.png")
    _png(sketch / "hot-air_balloon" / "n03541923_9999-1.png")       # its photo is not there
    _png(root / "photo" / "tx_000100000000" / "airplane" / "n02691156_10151.jpg")  # another augmentation
    (sketch / "airplane" / "invalid.txt").write_text("not an image")
    (sketch / "airplane" / ".DS_Store").write_bytes(b"\0")


def test_sketchy_photos_sketches_and_unseen_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "Sketchy"
    _sketchy(root)
    (tmp_path / "unseen.txt").write_text("# zero-shot split\nhot-air_balloon\n\n")
    out = root / "manifest.parquet"
    code, stdout, err = _run(["import", "sketchy", str(root), "--unseen", str(tmp_path / "unseen.txt"),
                              "--out", str(out)], capsys)
    assert code == 0, err
    p, s = "photo/tx_000000000000", "sketch/tx_000000000000"
    assert _rows(out) == [
        {"id": "airplane/n02691156_10151", "image": f"{p}/airplane/n02691156_10151.jpg", "sketch": None,
         "label": "airplane", "photo_id": None, "class_split": "seen"},
        {"id": "airplane/n02691156_196", "image": f"{p}/airplane/n02691156_196.jpg", "sketch": None,
         "label": "airplane", "photo_id": None, "class_split": "seen"},
        {"id": "hot-air_balloon/n03541923_1058", "image": f"{p}/hot-air_balloon/n03541923_1058.jpg", "sketch": None,
         "label": "hot-air_balloon", "photo_id": None, "class_split": "unseen"},
        {"id": "airplane/n02691156_10151-1", "image": None, "sketch": f"{s}/airplane/n02691156_10151-1.png",
         "label": "airplane", "photo_id": "airplane/n02691156_10151", "class_split": "seen"},
        {"id": "airplane/n02691156_10151-2", "image": None, "sketch": f"{s}/airplane/n02691156_10151-2.png",
         "label": "airplane", "photo_id": "airplane/n02691156_10151", "class_split": "seen"},
        {"id": "airplane/n02691156_196-1", "image": None, "sketch": f"{s}/airplane/n02691156_196-1.png",
         "label": "airplane", "photo_id": "airplane/n02691156_196", "class_split": "seen"},
        {"id": "hot-air_balloon/n03541923_1058-3", "image": None, "sketch": f"{s}/hot-air_balloon/n03541923_1058-3.png",
         "label": "hot-air_balloon", "photo_id": "hot-air_balloon/n03541923_1058", "class_split": "unseen"},
        {"id": "hot-air_balloon/n03541923_9999-1", "image": None, "sketch": f"{s}/hot-air_balloon/n03541923_9999-1.png",
         "label": "hot-air_balloon", "photo_id": None, "class_split": "unseen"},
    ]
    assert "3 photos, 5 sketches, 2 classes, 1 unseen classes, 2 skipped files" in stdout
    assert "1 sketches name no photo of their class" in stdout
    manifest = load_manifest(str(out))
    assert manifest.table.num_rows == 8 and len(manifest.quarantine) == 0
    assert manifest.modalities() == ["image", "sketch"]


def test_tu_berlin_sketches_with_unseen_names_written_differently(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "TU-Berlin" / "png"
    for cls, n in (("airplane", 1), ("airplane", 2), ("alarm clock", 81), ("angel", 161)):
        _png(root / cls / f"{n}.png")
    (root / "filelist.txt").write_text("airplane/1.png\n")
    (tmp_path / "unseen.txt").write_text("Alarm_Clock\nangel\n")
    out = tmp_path / "tub.parquet"
    code, stdout, err = _run(["import", "tu-berlin", str(root), "--unseen", str(tmp_path / "unseen.txt"),
                              "--out", str(out)], capsys)
    assert code == 0, err
    rel = "TU-Berlin/png"
    assert _rows(out) == [
        {"id": "airplane/1", "sketch": f"{rel}/airplane/1.png", "label": "airplane", "class_split": "seen"},
        {"id": "airplane/2", "sketch": f"{rel}/airplane/2.png", "label": "airplane", "class_split": "seen"},
        {"id": "alarm clock/81", "sketch": f"{rel}/alarm clock/81.png", "label": "alarm clock",
         "class_split": "unseen"},
        {"id": "angel/161", "sketch": f"{rel}/angel/161.png", "label": "angel", "class_split": "unseen"},
    ]
    assert "4 sketches, 3 classes, 2 unseen classes, 1 skipped files" in stdout
    assert load_manifest(str(out)).table.num_rows == 4
    # Without --unseen there is no class_split column.
    code, _, err = _run(["import", "tu-berlin", str(root), "--out", str(out)], capsys)
    assert code == 0, err
    assert pq.read_schema(out).names == ["id", "sketch", "label"]
    # A class the file names but the tree lacks is an error, not a silently seen class.
    (tmp_path / "typo.txt").write_text("airplan\n")
    code, _, err = _run(["import", "tu-berlin", str(root), "--unseen", str(tmp_path / "typo.txt"),
                         "--out", str(out)], capsys)
    assert code == 1
    assert err.splitlines() == [f"embedeval: error: unseen-class file {tmp_path / 'typo.txt'}: no class folder "
                                "named 'airplan' (did you mean 'airplane'?)"]


def test_imagefolder_labels_from_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "photos"
    _png(root / "cat" / "001.png")
    _png(root / "cat" / "extra" / "002.JPG")
    _png(root / "dog" / "001.png")
    _png(root / "stray.png")                         # not in a class folder: skipped
    (root / "dog" / "notes.md").write_text("x")      # not an image: skipped
    out = tmp_path / "manifest.parquet"
    code, stdout, err = _run(["import", "imagefolder", str(root), "--out", str(out)], capsys)
    assert code == 0, err
    assert _rows(out) == [
        {"id": "cat/001", "image": "photos/cat/001.png", "label": "cat"},
        {"id": "cat/extra/002", "image": "photos/cat/extra/002.JPG", "label": "cat"},
        {"id": "dog/001", "image": "photos/dog/001.png", "label": "dog"},
    ]
    assert "3 files, 2 classes, 2 skipped files" in stdout
    code, _, err = _run(["import", "imagefolder", str(root), "--column", "sketch", "--out", str(out)], capsys)
    assert code == 0, err
    assert pq.read_schema(out).names == ["id", "sketch", "label"]
    # Two files that would get one id: an error naming both.
    _png(root / "dog" / "001.jpg")
    code, _, err = _run(["import", "imagefolder", str(root), "--out", str(out)], capsys)
    assert code == 1
    assert err.splitlines() == ["embedeval: error: two files give the id 'dog/001': dog/001.jpg and dog/001.png; "
                                "rename one"]


@pytest.mark.parametrize("argv,message", [
    (["imagefolder", "{tmp}/none", "--out", "{tmp}/m.parquet"], "no image files under {tmp}/none"),
    (["imagefolder", "{tmp}", "--out", "{tmp}/m.csv"], "output '{tmp}/m.csv' must be a .parquet file"),
    (["sketchy", "{tmp}", "--out", "{tmp}/m.parquet"], "no photo files under {tmp}/photo/tx_000000000000"),
    (["tu-berlin", "{tmp}", "--unseen", "{tmp}/missing.txt", "--out", "{tmp}/m.parquet"], "no sketch files"),
])
def test_folder_layout_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                           message: str) -> None:
    code, _, err = _run(["import", *[a.format(tmp=tmp_path) for a in argv]], capsys)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], lines


def test_sketchy_from_s3_to_s3(tmp_path: Path, s3_options) -> None:  # noqa: ANN001
    from embedeval.io.importers import import_sketchy
    from embedeval.io.storage import Storage

    _sketchy(tmp_path / "Sketchy")
    (tmp_path / "unseen.txt").write_text("airplane\n")
    bucket = Storage(f"s3://test/{tmp_path.name}", s3_options)
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            bucket.write_bytes(str(path.relative_to(tmp_path)), path.read_bytes())
    out = bucket.uri("Sketchy/manifest.parquet")
    result = import_sketchy(bucket.uri("Sketchy"), out, unseen=bucket.uri("unseen.txt"), via=bucket)
    assert result.rows == 8 and result.counts["unseen classes"] == 1
    # The same rows as from the local tree: relative paths do not depend on where the tree lives.
    import_sketchy(str(tmp_path / "Sketchy"), str(tmp_path / "Sketchy" / "m.parquet"),
                   unseen=str(tmp_path / "unseen.txt"))
    assert (bucket.read_parquet(["Sketchy/manifest.parquet"]).to_pylist()
            == pq.read_table(tmp_path / "Sketchy" / "m.parquet").to_pylist())
    manifest = load_manifest(out, bucket)
    assert manifest.table.column("image").to_pylist()[0] == bucket.uri(
        "Sketchy/photo/tx_000000000000/airplane/n02691156_10151.jpg")


@pytest.mark.parametrize("argv", [["import"], ["import", "karpathy"], ["import", "sketchy"], ["import", "tu-berlin"],
                                  ["import", "imagefolder"]])
def test_every_import_help_shows_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "embedeval import karpathy" in out
