"""Issue 11, items 5 and 8: no output may overwrite an input, no two batch rows one file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cli_run import files_in, run_mtrs

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.pipeline import detect


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["same-path", "symlink", "hard-link", "relative-path"])
def test_a_mask_output_that_is_the_after_image_is_refused_and_the_input_kept(
    tmp_path: Path, pair, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_digest, after_digest = digest(pair.before), digest(pair.after)
    target = pair.after
    if how == "symlink":
        target = tmp_path / "link.tif"
        target.symlink_to(pair.after)
    elif how == "hard-link":
        target = tmp_path / "hard.tif"
        os.link(pair.after, target)
    elif how == "relative-path":
        monkeypatch.chdir(pair.after.parent.parent)
        target = Path(pair.after.parent.name) / ".." / pair.after.parent.name / pair.after.name

    result = run_mtrs("detect", pair.before, pair.after, "--mask-out", target)

    assert result.code == 2, result.err
    assert "after image" in result.err and len(result.err.strip().splitlines()) == 1
    assert (digest(pair.before), digest(pair.after)) == (before_digest, after_digest)
    assert not [name for name in files_in(pair.after.parent) if name.startswith(".")]


def test_a_vector_output_linked_to_the_before_image_is_refused(tmp_path: Path, pair) -> None:
    link = tmp_path / "changes.geojson"
    link.symlink_to(pair.before)
    kept = digest(pair.before)
    result = run_mtrs("detect", pair.before, pair.after, "-o", link)
    assert result.code == 2 and "before image" in result.err
    assert digest(pair.before) == kept


def test_an_output_that_is_a_file_a_vrt_reads_is_refused(tmp_path: Path, pair) -> None:
    vrt = tmp_path / "after.vrt"
    import rasterio
    from rasterio.shutil import copy

    with rasterio.open(pair.after) as src:
        assert src.count >= 1
    copy(pair.after, vrt, driver="VRT")
    kept = digest(pair.after)
    with pytest.raises(InputError, match="which the after image is read from"):
        detect(DetectConfig(before=pair.before, after=vrt, mask_out=pair.after))
    assert digest(pair.after) == kept


def test_the_two_outputs_may_not_be_one_file(tmp_path: Path, pair) -> None:
    mask = tmp_path / "m.tif"
    mask.write_text("old")
    vectors = tmp_path / "v.geojson"
    vectors.symlink_to(mask)
    with pytest.raises(InputError, match="would be one file"):
        DetectConfig(before=pair.before, after=pair.after, output=vectors, mask_out=mask).check()


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["before,after,query,output,mask_out", *rows]) + "\n")
    return path


def test_batch_refuses_a_row_whose_mask_is_its_input_before_any_work(tmp_path: Path, pair) -> None:
    kept = digest(pair.after)
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [
            f"{pair.before},{pair.after},q,first.geojson,",
            f"{pair.before},{pair.after},q,second.geojson,{pair.after}",
        ],
    )
    result = run_mtrs("batch", csv_path)
    assert result.code == 2, result.err
    assert "row 2" in result.err and "after image" in result.err
    assert digest(pair.after) == kept
    assert not (tmp_path / "first.geojson").exists()  # refused at start: row 1 did not run


def test_batch_with_one_output_in_two_rows_is_refused_at_start_naming_both(
    tmp_path: Path, pair
) -> None:
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [
            f"{pair.before},{pair.after},roads,a.geojson,",
            f"{pair.before},{pair.after},roofs,b.geojson,",
            f"{pair.before},{pair.after},trees,./sub/../a.geojson,",
        ],
    )
    (tmp_path / "sub").mkdir()
    result = run_mtrs("batch", csv_path)
    assert result.code == 2, result.err
    assert "rows 1 and 3 both write" in result.err and "a.geojson" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert sorted(files_in(tmp_path)) == ["data", "pairs.csv", "sub"]


def test_batch_masks_named_after_outputs_must_not_collide(tmp_path: Path, pair) -> None:
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [f"{pair.before},{pair.after},q,c.geojson,", f"{pair.before},{pair.after},q,c.gpkg,"],
    )
    masks = tmp_path / "masks"
    masks.mkdir()
    result = run_mtrs("batch", csv_path, "--mask-out-dir", masks, "--json")
    assert result.code == 2
    assert "rows 1 and 2 both write" in result.err and "c.tif" in result.err
    assert files_in(masks) == []
