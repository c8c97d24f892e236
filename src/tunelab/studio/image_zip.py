"""Image datasets for the studio: a .zip holding one records file (JSON/JSONL) and the images it names.

The zip is checked before anything is written: entry names must be relative and stay inside (no `..`, no
absolute or drive paths, no links), only the records file and images (PNG, JPEG, WebP, GIF, BMP) are allowed,
there are at most MAX_ENTRIES entries and the uncompressed total stays under the library's limit (a declared
size is what `zipfile` will ever produce, so a zip bomb is refused from its directory alone). The images go
to `datasets/<stem>/` and the records file becomes the library file `datasets/<stem>.jsonl` with each image
path prefixed by that folder, so paths stay relative to the records file as training expects. The records
are then parsed like training data (every image opened and checked); any problem leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tunelab.studio.paths import Settings, StudioError, safe_name, unique_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
RECORD_SUFFIXES = (".json", ".jsonl")
MAX_ENTRIES = 20_000
UNZIPPED_FACTOR = 4
"""The uncompressed total may be this many times the upload limit (images barely compress; text does)."""
OWNER_FILE = ".records-file"
"""Inside an unpacked image folder: the name of the library file whose images it holds (deleted with it)."""


def _member_name(info: zipfile.ZipInfo, zip_name: str) -> PurePosixPath | None:
    """The entry's relative path, None for a folder; StudioError for a name or kind that could escape."""
    raw = info.filename.replace("\\", "/")
    path = PurePosixPath(raw)
    if raw.startswith("/") or (path.parts and ":" in path.parts[0]) or ".." in path.parts or "\x00" in raw:
        raise StudioError(f"{zip_name}: entry {raw!r} points outside the archive; use relative names without '..'")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise StudioError(f"{zip_name}: entry {raw!r} is a symbolic link; zip the files themselves")
    if info.is_dir():
        return None
    return path


def admit_zip(settings: Settings, spooled: Path, zip_name: str) -> Path:
    """Unpack a checked image-dataset zip into the library; returns the records file's library path."""
    try:
        archive = zipfile.ZipFile(spooled)
    except zipfile.BadZipFile:
        raise StudioError(f"{zip_name}: not a zip archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise StudioError(f"{zip_name}: {len(infos)} entries, more than {MAX_ENTRIES}")
        limit = settings.max_upload_bytes * UNZIPPED_FACTOR
        if sum(i.file_size for i in infos) > limit:
            raise StudioError(f"{zip_name}: unpacks to more than {limit:,} bytes; upload a smaller archive")
        records, images = [], []
        for info in infos:
            path = _member_name(info, zip_name)
            if path is None or path.name.startswith(".") or "__MACOSX" in path.parts:
                continue
            suffix = path.suffix.lower()
            if suffix in RECORD_SUFFIXES:
                records.append((info, path))
            elif suffix in IMAGE_SUFFIXES:
                images.append((info, path))
            else:
                raise StudioError(f"{zip_name}: entry {str(path)!r} is neither a records file "
                                  f"({', '.join(RECORD_SUFFIXES)}) nor an image ({', '.join(IMAGE_SUFFIXES)})")
        if len(records) != 1:
            found = ", ".join(str(p) for _, p in records) or "none"
            raise StudioError(f"{zip_name}: needs exactly one records file (.json or .jsonl) beside the images, "
                              f"found {found}")
        rec_info, rec_path = records[0]
        stem = Path(safe_name(Path(zip_name).stem + ".jsonl", (".jsonl",))).stem
        folder = unique_path(settings.datasets, stem)
        target = unique_path(settings.datasets, folder.name + ".jsonl")
        base = rec_path.parent  # image paths in the records are relative to the records file
        try:
            folder.mkdir()
            for info, path in images:
                dst = folder.joinpath(*path.parts)
                if not dst.resolve().is_relative_to(folder.resolve()):  # belt and braces after _member_name
                    raise StudioError(f"{zip_name}: entry {str(path)!r} points outside the archive")
                dst.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(dst, "wb") as out:
                    shutil.copyfileobj(src, out)
            text = archive.read(rec_info).decode("utf-8")
            rows = _rows(text, rec_path, zip_name)
            prefix = PurePosixPath(folder.name) / base if str(base) != "." else PurePosixPath(folder.name)
            lines = [json.dumps(_rebase(r, prefix), ensure_ascii=False) for r in rows]
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            (folder / OWNER_FILE).write_text(target.name, encoding="utf-8")
            _check_records(target, zip_name, folder.name)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            target.unlink(missing_ok=True)
            raise
    return target


def image_folder_of(settings: Settings, name: str) -> Path | None:
    """The folder a zip upload unpacked the images of library file `name` into, or None (a plain file)."""
    for folder in settings.datasets.iterdir():
        owner = folder / OWNER_FILE
        if folder.is_dir() and not folder.is_symlink() and owner.is_file() and \
                owner.read_text(encoding="utf-8").strip() == name:
            return folder
    return None


def _rows(text: str, rec_path: PurePosixPath, zip_name: str) -> list[dict]:
    """The records of the zip's records file (a JSON array or JSONL)."""
    try:
        if rec_path.suffix.lower() == ".json" or text.lstrip().startswith("["):
            rows = json.loads(text)
            rows = rows if isinstance(rows, list) else [rows]
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise StudioError(f"{zip_name}/{rec_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise StudioError(f"{zip_name}/{rec_path}: needs a list of record objects")
    return rows


def _local(ref) -> bool:
    from tunelab.data.images import DATA_URL, REMOTE

    return isinstance(ref, str) and not DATA_URL.match(ref) and not REMOTE.match(ref) and not ref.startswith("/")


def _rebase(row: dict, prefix: PurePosixPath) -> dict:
    """A record whose relative image paths point into the unpacked folder (data URLs and others unchanged)."""
    row = dict(row)
    if isinstance(row.get("images"), list):
        row["images"] = [str(prefix / r) if _local(r) else r for r in row["images"]]
    for key in ("messages", "conversations"):
        for m in row.get(key) or []:
            content = m.get("content") if isinstance(m, dict) else None
            for part in content if isinstance(content, list) else []:
                url = part.get("image_url") if isinstance(part, dict) else None
                if isinstance(url, dict) and _local(url.get("url")):
                    url["url"] = str(prefix / url["url"])
    return row


def _check_records(path: Path, zip_name: str, folder: str) -> None:
    """Parse the records like training does (each image opened and checked); a StudioError names the record."""
    from tunelab.data.formats import parse_records
    from tunelab.data.io import DataError, read_records

    try:
        parse_records(read_records(path))
    except DataError as e:
        raise StudioError(str(e).replace(str(path), f"{zip_name}").replace(f"{folder}/", "")) from None
