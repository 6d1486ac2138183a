"""Reading the split lists of the releases, in every format the references use.

- comma rows, optionally quoted (CSV; a UTF-8 BOM is ignored): CREMA-D ``clip,EMO``,
  Kinetics-Sounds ``ytid_start,10,label``, VGGSound ``ytid,start,label,split``;
- ``&`` rows: AVE ``Category&VideoID&Quality&Start&End``;
- whitespace rows: Kinetics-Sounds ``name.mp4 label``.

Lists that ship with the project live in ``datasets/splits/<dataset>/``; every dataset's
``lists=DIR`` option points at another folder with the same file names.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from datasets.registry import DatasetError

SHIPPED = Path(__file__).resolve().parent / "splits"


def shipped_lists(dataset: str) -> Path:
    """The folder of split lists shipped with the project for `dataset`."""
    return SHIPPED / dataset


def read_rows(path: Path) -> list[list[str]]:
    """The non-empty rows of a list file, fields stripped; the separator (``&``, comma or
    whitespace) is detected from the first non-empty line."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    if "&" in lines[0]:
        return [[f.strip() for f in ln.split("&")] for ln in lines]
    if "," in lines[0]:
        return [[f.strip() for f in row] for row in csv.reader(lines) if row]
    return [ln.split() for ln in lines]


def find_list(folders: Sequence[Path | None], names: Sequence[str]) -> Path | None:
    """The first file called one of `names` in the first folder (searched recursively)
    that holds one."""
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for name in names:
            direct = Path(folder) / name
            if direct.is_file():
                return direct
        for name in names:
            found = sorted(Path(folder).rglob(name))
            if found:
                return found[0]
    return None


def require_list(folders: Sequence[Path | None], names: Sequence[str], dataset: str) -> Path:
    """Like `find_list`, or a DatasetError naming the folders searched and the fix."""
    found = find_list(folders, names)
    if found is None:
        where = ", ".join(str(f) for f in folders if f is not None)
        raise DatasetError(
            f"{dataset}: no split list named {' or '.join(names)} in {where}; "
            f"give the folder that holds it with --set lists=DIR"
        )
    return found
