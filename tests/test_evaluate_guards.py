"""``mtrs evaluate`` and ``benchmark`` overwrite no input, score no model on its training data."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import run_mtrs
from fixtures_train.builders import make_change_folder, make_mtrefseg
from fixtures_train.tiny_models import TINY_TEXT
from test_evaluate import write_hand_predictions

from mtrs_geo.errors import InputError
from mtrs_geo.models.evaluate.guard import check_evaluation
from mtrs_geo.models.training.config import config_from_dict, dump_config
from mtrs_geo.models.training.fingerprints import file_fingerprint
from mtrs_geo.models.training.record import (
    RECORD_FILE,
    fingerprinted,
    source_entry,
    training_record,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _digests(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tiny_checkpoint(folder: Path, trained_on: list[dict] | None = None) -> Path:
    """A saved tiny model; with ``trained_on`` (sources) the record ``mtrs train`` writes."""
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_model_config=TINY_TEXT)).save_pretrained(
        folder
    )
    if trained_on is not None:
        record = fingerprinted({"sources": [source_entry(s) for s in trained_on], "unknown": []})
        (folder / RECORD_FILE).write_text(json.dumps(record))
    return folder


def _linked_split(folder: Path, source: Path, names: list[str]) -> None:
    """An ``A/ B/ label/`` split of symbolic links to some of ``source``'s pairs."""
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True)
        for name in names:
            (folder / sub / name).symlink_to(source / sub / name)


# --out and --save-predictions: an input of the evaluation is never overwritten -----------------


def test_evaluate_refuses_an_out_that_is_an_input_by_path_symlink_or_hard_link(
    tmp_path: Path,
) -> None:
    dataset = tmp_path / "ds"
    make_mtrefseg(dataset, "val")
    write_hand_predictions(tmp_path / "preds")
    expressions = dataset / "val" / "referring_expression" / "p0.json"
    (tmp_path / "link.json").symlink_to(expressions)
    os.link(dataset / "val" / "masks" / "p0_0.png", tmp_path / "hard.json")
    os.link(dataset / "val" / "masks" / "p1_0.png", tmp_path / "table.md")
    kept = _digests(dataset, tmp_path / "preds")
    for out in (
        expressions,
        tmp_path / "link.json",
        tmp_path / "hard.json",
        tmp_path / "table.json",  # its table, table.md, is a mask
        tmp_path / "preds" / "p0_0.png",
    ):
        result = run_mtrs("evaluate", dataset, "--split", "val", "--predictions",
                          tmp_path / "preds", "--out", out, "--quiet")  # fmt: skip
        assert result.code == 2, out
        assert "would replace an input of the evaluation" in result.err
        assert len(result.err.strip().splitlines()) == 1
    assert _digests(dataset, tmp_path / "preds") == kept


def test_evaluate_refuses_a_report_name_ending_in_md_the_name_of_its_table(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    write_hand_predictions(tmp_path / "preds")
    result = run_mtrs("evaluate", tmp_path / "ds", "--split", "val", "--predictions",
                      tmp_path / "preds", "--out", tmp_path / "rep.md")  # fmt: skip
    assert result.code == 2 and "cannot end in .md" in result.err
    assert not (tmp_path / "rep.md").exists()


def test_predictions_are_never_saved_into_a_folder_holding_the_ground_truth(
    tmp_path: Path,
) -> None:
    dataset = tmp_path / "ds"
    make_mtrefseg(dataset, "val", size=(48, 48))
    kept = _digests(dataset)
    for folder in (dataset / "val" / "masks", dataset / "val", dataset):
        result = run_mtrs("evaluate", dataset, "--split", "val", "--model", "cva",
                          "--input-size", "0", "--save-predictions", folder,
                          "--out", tmp_path / "r.json", "--quiet")  # fmt: skip
        assert result.code == 2 and "an input of the evaluation" in result.err
        assert len(result.err.strip().splitlines()) == 1
    assert _digests(dataset) == kept and not (tmp_path / "r.json").exists()
    saved = run_mtrs("evaluate", dataset, "--split", "val", "--model", "cva", "--input-size",
                     "0", "--save-predictions", tmp_path / "p",
                     "--out", tmp_path / "r.json")  # fmt: skip
    assert saved.code == 0, saved.err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "p0_0.png", "p0_1.png", "p1_0.png", "p2_0.png"
    ]  # fmt: skip


def test_a_negative_input_size_is_refused(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    result = run_mtrs("evaluate", tmp_path / "ds", "--model", "cva", "--input-size", "-5",
                      "--out", tmp_path / "r.json")  # fmt: skip
    assert result.code == 2 and "--input-size" in result.err


# Training data: a checkpoint is not scored on the scenes it was trained on ---------------------


def test_a_checkpoint_is_not_scored_on_its_training_folder_unless_allowed(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    make_change_folder(tmp_path / "other", size=(48, 48), seed=1)
    model = _tiny_checkpoint(
        tmp_path / "m", [{"type": "change_folder", "root": str(tmp_path / "cd")}]
    )
    refused = run_mtrs("evaluate", tmp_path / "cd", "--model", f"{model}@any", "--input-size",
                       "32", "--out", tmp_path / "r.json")  # fmt: skip
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    overlap = (
        f"3 of 3 image pairs of split '{tmp_path / 'cd'}' are from scenes {model}@any was trained "
        f"on (change_folder {(tmp_path / 'cd').resolve()}; e.g. c0, c1, c2)"
    )
    assert overlap in refused.err
    assert "(--allow-training-data scores them anyway)" in refused.err
    assert not (tmp_path / "r.json").exists()
    allowed = run_mtrs("evaluate", tmp_path / "cd", "--model", f"{model}@any", "--input-size",
                       "32", "--out", tmp_path / "r.json", "--allow-training-data")  # fmt: skip
    assert allowed.code == 0, allowed.err
    assert "Note: 3 of 3 image pairs" in allowed.err and (tmp_path / "r.json").is_file()
    report = json.loads((tmp_path / "r.json").read_text())  # the report says so too
    assert [note[:22] for note in report["notes"]] == ["3 of 3 image pairs of "]
    assert "Note: 3 of 3 image pairs" in (tmp_path / "r.md").read_text()
    elsewhere = run_mtrs("evaluate", tmp_path / "other", "--model", f"{model}@any",
                         "--input-size", "32", "--out", tmp_path / "o.json")  # fmt: skip
    assert elsewhere.code == 0, elsewhere.err
    board = run_mtrs("benchmark", tmp_path / "cd", "--model", "cva", "--model", f"{model}@any",
                     "--input-size", "32", "--out", tmp_path / "b.json")  # fmt: skip
    assert board.code == 2 and "trained on" in board.err and not (tmp_path / "b.json").exists()


def test_scenes_a_source_left_out_of_its_folder_may_be_scored(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    source = {"type": "change_folder", "root": str(tmp_path / "cd"), "names": ["c0.png"]}
    model = _tiny_checkpoint(tmp_path / "m", [source])
    with pytest.raises(InputError, match=r"1 of 3 image pairs .* e\.g\. c0\)"):
        check_evaluation(tmp_path, ["cd"], models=[str(model)])
    _linked_split(tmp_path / "held", tmp_path / "cd", ["c1.png", "c2.png"])
    assert check_evaluation(tmp_path, ["held"], models=[str(model)]) == []
    _linked_split(tmp_path / "seen", tmp_path / "cd", ["c0.png"])  # the same file, by a link
    with pytest.raises(InputError, match="1 of 1 image pairs of split 'seen'"):
        check_evaluation(tmp_path, ["seen"], models=[str(model)])


def _copied_split(folder: Path, source: Path, names: dict[str, str]) -> None:
    """An ``A/ B/ label/`` split of copies of ``source``'s pairs (``{source name: new name}``)."""
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True)
        for name, new in names.items():
            shutil.copyfile(source / sub / name, folder / sub / new)


def test_a_copy_of_the_training_data_is_recognised_wherever_it_lies_and_however_named(
    tmp_path: Path,
) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    source = {"type": "change_folder", "root": str(tmp_path / "cd"), "names": ["c0.png"]}
    model = _tiny_checkpoint(tmp_path / "m", [source])
    shutil.rmtree(tmp_path / "cd")  # the training machine's folder is gone; its copies are not
    make_change_folder(tmp_path / "copy", size=(48, 48))
    _copied_split(tmp_path / "renamed", tmp_path / "copy", {"c0.png": "tile_9.png"})
    for split in ("copy", "renamed"):
        with pytest.raises(InputError, match=r"1 of \d image pairs .* trained on \(change_folder"):
            check_evaluation(tmp_path, [split], models=[str(model)])
    _copied_split(tmp_path / "held", tmp_path / "copy", {"c1.png": "c1.png", "c2.png": "c2.png"})
    assert check_evaluation(tmp_path, ["held"], models=[str(model)]) == []


def test_a_copy_with_its_dates_swapped_is_the_same_training_data(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    model = _tiny_checkpoint(
        tmp_path / "m", [{"type": "change_folder", "root": str(tmp_path / "cd")}]
    )
    swapped = tmp_path / "swapped"
    for sub, source in (("A", "B"), ("B", "A"), ("label", "label")):
        (swapped / sub).mkdir(parents=True)
        shutil.copyfile(tmp_path / "cd" / source / "c0.png", swapped / sub / "c0.png")
    with pytest.raises(InputError, match="1 of 1 image pairs of split 'swapped'"):
        check_evaluation(tmp_path, ["swapped"], models=[str(model)])


def test_an_unreadable_record_falls_back_to_the_run_configuration(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    model = _tiny_checkpoint(tmp_path / "final", [{"type": "change_folder", "root": "cd"}])
    config = config_from_dict({"data": {"train": [{"type": "change_folder", "root": "cd"}]}},
                              base=tmp_path)  # fmt: skip
    (model / "config.yaml").write_text(dump_config(config))
    (model / RECORD_FILE).write_text('{"sources": [')  # cut short
    with pytest.raises(InputError, match="3 of 3 image pairs"):
        check_evaluation(tmp_path, ["cd"], models=[str(model)])


def test_fingerprints_read_only_regular_files_and_tell_large_files_apart_by_their_middle(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would block for ever
    assert file_fingerprint(tmp_path / "pipe.png") is None
    assert file_fingerprint(tmp_path) is None and file_fingerprint(tmp_path / "gone") is None
    border = bytes(2 << 20)  # 6 MiB files, hashed by samples: equal blank borders, other middles
    for name, middle in (("a.tif", b"\x01"), ("b.tif", b"\x02")):
        (tmp_path / name).write_bytes(border + middle * (2 << 20) + border)
    assert file_fingerprint(tmp_path / "a.tif") != file_fingerprint(tmp_path / "b.tif")
    shutil.copyfile(tmp_path / "a.tif", tmp_path / "copy.tif")
    assert file_fingerprint(tmp_path / "copy.tif") == file_fingerprint(tmp_path / "a.tif")


def test_a_change_folder_without_one_labelled_pair_is_one_line(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    for label in (tmp_path / "cd" / "label").iterdir():
        label.unlink()
    (tmp_path / "cd" / "label" / "other.png").write_bytes(
        (tmp_path / "cd" / "A" / "c0.png").read_bytes()
    )
    result = run_mtrs("evaluate", tmp_path / "cd", "--model", "cva", "--out", tmp_path / "r.json")
    assert result.code == 2, result.err
    assert result.err.strip().splitlines() == [
        f"Error: {tmp_path / 'cd'}: no image pair with its after image and label (A/ B/ label/): "
        "c0.png, c1.png, c2.png lack one"
    ]


def test_a_run_folder_of_an_older_version_is_checked_through_its_config_yaml(
    tmp_path: Path,
) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    model = _tiny_checkpoint(tmp_path / "final")  # no training_data.json
    config = config_from_dict({"data": {"train": [{"type": "change_folder", "root": "cd"}]}},
                              base=tmp_path)  # fmt: skip
    (model / "config.yaml").write_text(dump_config(config))
    with pytest.raises(InputError, match="3 of 3 image pairs"):
        check_evaluation(tmp_path, ["cd"], models=[str(model)])


def test_a_checkpoint_without_any_record_is_noted_not_refused(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    model = _tiny_checkpoint(tmp_path / "m")
    notes = check_evaluation(tmp_path, ["cd"], models=[str(model), "cva"])
    assert notes == [
        f"cannot check {model} against its training data: {model} keeps no readable record of it "
        "(training_data.json or the run's config.yaml)"
    ]


def test_a_run_started_from_a_checkpoint_inherits_what_it_was_trained_on(tmp_path: Path) -> None:
    first = _tiny_checkpoint(tmp_path / "first", [{"type": "oscd", "root": "/data/oscd",
                                                   "cities": ["paris"]}])  # fmt: skip
    bare = _tiny_checkpoint(tmp_path / "bare")
    source = {"type": "mtrefseg", "root": "/data/mt", "split": "train"}
    for start, inherited, unknown in (
        (
            first,
            [{"type": "oscd", "folder": "/data/oscd", "scenes": ["paris"], "fingerprints": []}],
            [],
        ),  # fmt: skip
        (bare, [], [str(bare.resolve())]),
    ):
        config = config_from_dict({"model": {"init_from": str(start)},
                                   "data": {"train": [source]}})  # fmt: skip
        record = training_record(config)
        assert record["sources"] == [
            {"type": "mtrefseg", "folder": "/data/mt/train", "scenes": None, "fingerprints": []},
            *inherited,
        ]
        assert record["unknown"] == unknown


@pytest.mark.skipif(not (SHARED / "levir-cd").is_dir(), reason="needs ../shared/data")
def test_the_bundled_checkpoint_is_scored_on_held_out_scenes_but_not_on_its_training_scenes(
    tmp_path: Path,
) -> None:
    levir = SHARED / "levir-cd"
    _linked_split(tmp_path / "held", levir, ["train_412_0512_0768.png", "test_77_0512_0256.png"])
    _linked_split(tmp_path / "seen", levir, ["test_102_0512_0000.png"])  # stages 1 and 3 saw it
    models = ["mtrefseg-r1", "mtrefseg-r1@any", "mtrefseg-r1-both-ways"]
    assert check_evaluation(tmp_path, ["held"], models=models) == []
    with pytest.raises(InputError, match="1 of 1 image pairs of split 'seen' .* test_102"):
        check_evaluation(tmp_path, ["seen"], models=["mtrefseg-r1-both-ways"])


@pytest.mark.skipif(not (SHARED / "levir-cd").is_dir(), reason="needs ../shared/data")
def test_the_bundled_checkpoint_knows_its_training_scenes_in_a_copy_of_the_shared_data(
    tmp_path: Path,
) -> None:
    levir, oscd = SHARED / "levir-cd", SHARED / "oscd"
    _copied_split(tmp_path / "seen", levir, {"test_102_0512_0000.png": "a.png",
                                             "test_77_0512_0256.png": "b.png"})  # fmt: skip
    with pytest.raises(InputError, match="1 of 2 image pairs of split 'seen'"):
        check_evaluation(tmp_path, ["seen"], models=["mtrefseg-r1"])
    _copied_split(tmp_path / "held", levir, {"test_77_0512_0256.png": "b.png"})
    assert check_evaluation(tmp_path, ["held"], models=["mtrefseg-r1"]) == []
    shutil.copytree(oscd / "paris", tmp_path / "cities" / "paris")
    with pytest.raises(InputError, match="1 of 1 image pairs .* e\\.g\\. paris"):
        check_evaluation(tmp_path, ["cities"], models=["mtrefseg-r1"])


@pytest.mark.skipif(not (SHARED / "levir-cd").is_dir(), reason="needs ../shared/data")
def test_a_folder_named_like_the_bundled_model_does_not_hide_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mtrefseg-r1").mkdir()  # evaluate loads the registered model, not this folder
    monkeypatch.chdir(tmp_path)
    _copied_split(tmp_path / "seen", SHARED / "levir-cd", {"test_102_0512_0000.png": "a.png"})
    with pytest.raises(InputError, match="1 of 1 image pairs of split 'seen'"):
        check_evaluation(tmp_path, ["seen"], models=["mtrefseg-r1"])
