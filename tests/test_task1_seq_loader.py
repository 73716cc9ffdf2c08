import itertools

import numpy as np
import pytest
import torch
from conftest import TUD_CAMPUS

import task1_seq_loader as loader_script
from task1_seq_loader import (
    Window,
    build_loader,
    collate_windows,
    load_sequences,
    make_windows,
    split_frames,
    stream_resets,
    window_batches,
)
from utils.cli import UserError
from utils.mot import read_mot_boxes


def run(*argv):
    return loader_script.main(loader_script.get_args_parser().parse_args(list(argv)))


def test_cli_prints_batch_shape(capsys):
    results = run("--data", str(TUD_CAMPUS.parent), "--seq-len", "10", "--batch-size", "2", "--batches", "1")
    assert results["shapes"] == [(2, 10, 3, 480, 640)]
    assert "frames (2, 10, 3, 480, 640)" in capsys.readouterr().out


def test_windows_keep_frame_order_and_never_cross_sequences(two_sequences):
    sequences = load_sequences(two_sequences)
    windows = make_windows(sequences, seq_len=5, stride=1)
    assert len(windows) == (14 - 5 + 1) + (12 - 5 + 1)
    for frames, _, meta in build_loader(sequences, None, 5, 3, size=(120, 160)):
        assert frames.shape[1:] == (5, 3, 120, 160)
        for info in meta:
            assert info["frames"] == list(range(info["frames"][0], info["frames"][0] + 5))
            assert info["frames"][-1] <= {"A": 14, "B": 12}[info["sequence"]]


def test_window_frames_are_the_right_images_in_order():
    sequences = load_sequences(TUD_CAMPUS)
    dataset = build_loader(sequences, None, 4, 1, shuffle=False).dataset
    frames, _, meta = dataset[7]
    assert meta["frames"] == [8, 9, 10, 11]
    for frame_number, tensor in zip(meta["frames"], frames, strict=True):
        again, _ = dataset.load_frame(sequences[0], frame_number)
        assert torch.equal(tensor, again)
    assert not torch.equal(frames[0], frames[1])


def test_shuffling_moves_windows_not_frames():
    windows = make_windows(load_sequences(TUD_CAMPUS), seq_len=10, stride=1)
    first = [index for batch in window_batches(windows, 4, "random", seed=0, epoch=0) for index in batch]
    second = [index for batch in window_batches(windows, 4, "random", seed=0, epoch=1) for index in batch]
    assert sorted(first) == sorted(second) == list(range(len(windows))) and first != second
    assert first == [index for batch in window_batches(windows, 4, "random", seed=0, epoch=0) for index in batch]  # deterministic


def test_boxes_scaled_with_resize_and_clipped():
    sequences = load_sequences(TUD_CAMPUS)
    dataset = build_loader(sequences, None, 1, 1, size=(240, 320), shuffle=False).dataset
    _, targets, _ = dataset[0]
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")[1][:, :4]
    expected = np.clip(gt * 0.5, 0, [320, 240, 320, 240])
    np.testing.assert_allclose(targets[0]["boxes"].numpy(), expected, rtol=1e-6)
    assert targets[0]["labels"].tolist() == [1] * len(gt)


def test_stream_mode_walks_each_stream_in_order(two_sequences):
    sequences = load_sequences(two_sequences)
    batches = list(build_loader(sequences, None, 4, 2, mode="stream"))
    assert len(batches) == 3  # A: 3 windows of 4 (1-12), B: 3 windows (1-12)
    metas = [meta for _, _, meta in batches]
    for stream in range(2):
        starts = [meta[stream]["frames"][0] for meta in metas]
        assert starts == [1, 5, 9] and len({meta[stream]["sequence"] for meta in metas}) == 1
    assert stream_resets(None, metas[0]) == [0, 1]
    assert stream_resets(metas[0], metas[1]) == []
    assert stream_resets(metas[1], [metas[1][1], metas[2][0]]) == [0, 1]


def test_stream_mode_splits_one_sequence_into_streams():
    windows = make_windows(load_sequences(TUD_CAMPUS), seq_len=10, stride=10)
    batches = window_batches(windows, 2, "stream")
    for before, after in itertools.pairwise(batches):
        for stream in range(2):
            assert windows[after[stream]].start == windows[before[stream]].start + 10


def test_validation_split_never_straddles_the_cut(two_sequences):
    sequences = load_sequences(two_sequences)
    train, val = split_frames(sequences, val_fraction=0.25)
    assert (train[0], val[0]) == (range(1, 11), range(11, 15))  # round(14 * 0.25) = 4 frames held out
    train_windows = make_windows(sequences, 3, 1, train)
    assert max(window.start + window.length - 1 for window in train_windows if window.sequence == 0) == 10
    train, val = split_frames(sequences, val_sequences=["B"])
    assert len(val[1]) == 12 and len(train[1]) == 0 and len(val[0]) == 0


def test_short_sequence_skipped_with_warning_none_left_is_an_error(two_sequences, capsys):
    sequences = load_sequences(two_sequences)
    windows = make_windows(sequences, seq_len=13, stride=1)
    assert {window.sequence for window in windows} == {0}
    assert "B has 12 frames" in capsys.readouterr().err
    with pytest.raises(UserError, match="no sequence has 20 frames"):
        build_loader(sequences, None, 20, 1)


def test_collate_handles_frames_without_boxes():
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    full = {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "labels": torch.ones(1, dtype=torch.int64)}
    frames, targets, meta = collate_windows([(torch.zeros(2, 3, 8, 8), [empty, full], {"sequence": "A"})] * 3)
    assert frames.shape == (3, 2, 3, 8, 8) and targets[2][0]["boxes"].shape == (0, 4) and len(meta) == 3


def test_missing_frame_and_malformed_gt_are_named(two_sequences):
    (two_sequences / "A" / "img1" / "000007.jpg").unlink()
    with pytest.raises(UserError, match=r"000007\.jpg is missing"):
        load_sequences(two_sequences / "A")
    (two_sequences / "B" / "gt" / "gt.txt").write_text("1,1,10,10,5,5,1,-1,-1,-1\nbroken line\n")
    with pytest.raises(UserError, match=r"gt.txt:2:"):
        load_sequences(two_sequences / "B")


def test_contact_sheet(tmp_path):
    run(
        "--data",
        str(TUD_CAMPUS),
        "--seq-len",
        "3",
        "--batch-size",
        "2",
        "--size",
        "120",
        "160",
        "--batches",
        "1",
        "--plot",
        str(tmp_path / "sheet.png"),
    )
    import cv2

    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 * 120, 3 * 160, 3)


def test_window_dataclass_frames():
    assert list(Window(0, 5, 3).frames) == [5, 6, 7]


@pytest.mark.parametrize(
    "argv",
    [["--seq-len", "0"], ["--stride", "-1"], ["--batch-size", "0"], ["--size", "0", "160"], ["--val-fraction", "1.5"], ["--seed", "-1"]],
)
def test_out_of_range_flags_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        loader_script.get_args_parser().parse_args(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(error) == 1 and error[0].startswith(f"error: argument {argv[0]}: must be")


@pytest.mark.parametrize("held_out", [["--val-sequences", "A", "B"], ["--val-fraction", "1"]])
def test_everything_held_out_for_validation_is_named(two_sequences, held_out):
    with pytest.raises(UserError, match="every frame range is empty"):
        run("--data", str(two_sequences), "--seq-len", "3", *held_out)


def test_truncated_frame_is_an_error_not_a_grey_target(two_sequences):
    frame = two_sequences / "A" / "img1" / "000003.jpg"
    frame.write_bytes(frame.read_bytes()[:20000])
    dataset = build_loader(load_sequences(two_sequences / "A"), None, 3, 1, shuffle=False).dataset
    with pytest.raises(UserError, match=r"000003\.jpg: truncated JPEG"):
        dataset[0]
