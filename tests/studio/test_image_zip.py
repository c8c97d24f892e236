"""Image datasets in the studio: a zip of records + images is unpacked into the library with every entry name
kept inside, sizes checked, and the records parsed like training data; the playground answers an image."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest

from tests.studio.conftest import upload


def png(colour=(200, 30, 30), size=(20, 16)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def records(paths):
    return "".join(json.dumps({"messages": [{"role": "user", "content": "<image>What colour?"},
                                            {"role": "assistant", "content": "red"}], "images": [p]}) + "\n"
                   for p in paths)


def make_zip(entries: dict[str, bytes | str], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link entry
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_of_records_and_images_lands_in_the_library(client, settings):
    body = make_zip({"set/data.jsonl": records(["img/a.png", "img/b.png"]), "set/img/a.png": png(),
                     "set/img/b.png": png((10, 200, 10))})
    r = upload(client, "shapes.zip", body)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "shapes.jsonl"
    rows = [json.loads(x) for x in (settings.datasets / "shapes.jsonl").read_text().splitlines()]
    assert [row["images"] for row in rows] == [["shapes/set/img/a.png"], ["shapes/set/img/b.png"]]
    assert (settings.datasets / "shapes" / "set" / "img" / "b.png").read_bytes() == png((10, 200, 10))
    assert [d["name"] for d in client.get("/api/datasets").json()] == ["shapes.jsonl"]
    info = client.get("/api/datasets/shapes.jsonl/inspect", params={"model": "tiny-llava"}).json()
    assert info["format"] == "vision" and info["images"]["images"] == 2 and info["images"]["image_tokens"][0] == 16
    again = upload(client, "shapes.zip", body)  # never overwrites: a second upload gets its own names
    assert again.json()["name"] == "shapes-2.jsonl"
    assert json.loads((settings.datasets / "shapes-2.jsonl").read_text().splitlines()[0])["images"] == \
        ["shapes-2/set/img/a.png"]


def test_deleting_a_zip_dataset_removes_its_images_and_nothing_else(client, settings):
    body = make_zip({"data.jsonl": records(["a.png"]), "a.png": png()})
    assert upload(client, "shapes.zip", body).status_code == 200
    assert upload(client, "shapes.zip", body).json()["name"] == "shapes-2.jsonl"
    plain = settings.datasets / "notes.jsonl"
    plain.write_text(records(["shapes-2/a.png"]))  # a plain file naming the other upload's images
    assert client.delete("/api/datasets/shapes.jsonl").status_code == 200
    assert not (settings.datasets / "shapes").exists() and not (settings.datasets / "shapes.jsonl").exists()
    assert (settings.datasets / "shapes-2" / "a.png").is_file()  # the second upload keeps its images
    assert client.delete("/api/datasets/notes.jsonl").status_code == 200  # a plain file owns no folder
    assert (settings.datasets / "shapes-2" / "a.png").is_file()
    assert [d["name"] for d in client.get("/api/datasets").json()] == ["shapes-2.jsonl"]


@pytest.mark.parametrize("entries, links, message", [
    ({"data.jsonl": records(["a.png"]), "../evil.png": png()}, (), "'../evil.png' points outside the archive"),
    ({"data.jsonl": records(["a.png"]), "/abs/evil.png": png()}, (), "'/abs/evil.png' points outside"),
    ({"data.jsonl": records(["a.png"]), "img\\..\\..\\evil.png": png()}, (), "points outside the archive"),
    ({"data.jsonl": records(["a.png"]), "a.png": png()}, ("link.png",), "'link.png' is a symbolic link"),
    ({"data.jsonl": records(["a.png"]), "a.png": png(), "run.sh": "rm -rf /"}, (), "'run.sh' is neither"),
    ({"a.png": png()}, (), "needs exactly one records file"),
    ({"data.jsonl": records(["missing.png"]), "a.png": png()}, (), "image 0 (missing.png): no such file"),
    ({"data.jsonl": records(["../../outside.png"]), "a.png": png()}, (), "image 0 (../../outside.png): no such"),
])
def test_bad_zips_are_refused_and_leave_nothing(client, settings, entries, links, message):
    r = upload(client, "bad.zip", make_zip(entries, links))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []
    assert not (settings.data_dir / "evil.png").exists() and not (settings.datasets.parent.parent / "evil.png").exists()


def test_a_zip_that_unpacks_past_the_limit_is_refused_from_its_directory(client, settings):
    body = make_zip({"data.jsonl": records(["a.png"]), "a.png": png(), "big.png": b"\0" * 5_000_000})  # compresses
    assert len(body) < settings.max_upload_bytes
    r = upload(client, "bomb.zip", body)
    assert r.status_code == 400 and "unpacks to more than" in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []


def test_playground_answers_an_image_with_a_vision_run(client, settings, tmp_path):
    from tunelab.api import train

    body = make_zip({"data.jsonl": records(["a.png", "a.png", "a.png"]), "a.png": png()})
    assert upload(client, "red.zip", body).status_code == 200
    run = train({"model": {"name": "tiny-llava"}, "data": {"train": str(settings.datasets / "red.jsonl"),
                 "max_length": 64, "val_size": 0}, "method": {"name": "lora", "r": 2},
                 "train": {"max_steps": 1, "batch_size": 2, "report": False},
                 "output_dir": str(settings.runs / "vis")}, progress=False)
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "What colour?"}]}]
    r = client.post("/api/chat", json={"run": "vis", "messages": msg, "max_new_tokens": 4})
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"done": True}, events
    from tunelab.infer.vision import decode_image

    expected = run.chat("What colour?", images=[decode_image(png(), "x")], max_new_tokens=4, repetition_penalty=1.0)
    assert "".join(e.get("text", "") for e in events) .strip() == expected
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]
    r = client.post("/api/chat", json={"run": "vis", "messages": remote})
    assert "remote URLs are not fetched" in r.text
